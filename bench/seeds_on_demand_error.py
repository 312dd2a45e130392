"""Benchmark: how often seeds on demand claims a difference between two equal arms.

Seeds on demand (params `seeds: {min, max, halfwidth}`) trains `min` seeds per arm,
then adds seeds until the difference's 95% interval is no wider than +-halfwidth
points, or `max` ran. Its rule looks at the interval, never at the p-value, yet
when it stops depends on the observed spread, and so does the final test: this
simulates the train stage's own rule (pipeline.train.plan.more_seeds and
widest_interval) on null arms whose seeds are normal with the SD shown, and counts
the studies whose final Welch test says p < 0.05. A fixed list of seeds gives 5%.

    python bench/seeds_on_demand_error.py            # 20,000 studies per row
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core import stats  # noqa: E402
from pipeline.core.schema import SeedPlan  # noqa: E402
from pipeline.train.plan import more_seeds, widest_interval  # noqa: E402

ROWS = ((3, 10, 1.0, 1.0), (3, 10, 1.0, 0.5), (3, 10, 1.0, 2.0), (3, 12, 0.5, 1.0))  # min, max, halfwidth, SD


def false_positive_rate(min_: int, max_: int, halfwidth: float, sd: float, studies: int, seed: int = 0) -> float:
    """The share of null studies (two equal arms, seed SD `sd` points) whose final Welch p < 0.05."""
    rng = np.random.default_rng(seed)
    plan = SeedPlan(min=min_, max=max_, halfwidth=halfwidth)
    hits = 0
    for _ in range(studies):
        draws = {arm: list(rng.normal(0.7, sd / 100, min_)) for arm in ("a", "b")}
        seeds = list(range(min_))
        while True:
            results = {(arm, s): draws[arm][s] for arm in draws for s in seeds}
            new, _ = more_seeds(plan, widest_interval(results, ["a", "b"], "a", seeds, 0.95), seeds)
            if not new:
                break
            for arm in draws:
                draws[arm] += list(rng.normal(0.7, sd / 100, len(new)))
            seeds += new
        hits += stats.significant(stats.welch(draws["b"], draws["a"]).p, 0.05)
    return hits / studies


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=20_000)
    args = ap.parse_args(argv)
    print("| seeds min-max | halfwidth (points) | seed SD (points) | false claims | MC se |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for min_, max_, halfwidth, sd in ROWS:
        rate = false_positive_rate(min_, max_, halfwidth, sd, args.studies)
        se = np.sqrt(rate * (1 - rate) / args.studies)
        print(f"| {min_}-{max_} | {halfwidth:g} | {sd:g} | {rate:.4f} | {se:.4f} |", flush=True)


if __name__ == "__main__":
    main()
