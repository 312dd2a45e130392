"""Benchmark: how often the per-class test claims a difference that is not there,
and how often it finds one that is.

Simulated studies of two arms, 10 classes, 1000 test images per class: each
seed moves each class's accuracy by N(0, sd) (sd from 1/spread to spread points
over the classes), then the images are drawn (binomial). On null arms it prints
the family-wise error (the chance that a study marks even one class, Holm over
the classes; it should stay at or below 5%); with one class 10 points (3 seeds)
or 7 points (6 seeds) better, the chance that this class is marked.

    python bench/per_class_error.py            # 10,000 null studies per setting
    python bench/per_class_error.py --n 2000
"""
from __future__ import annotations

import argparse
import gc

import numpy as np

from pipeline.core.stats import per_class_over_seeds, per_class_power, significant

BASE = np.linspace(0.55, 0.85, 10)  # a class accuracy per class, as CIFAR-10's spread


def study(rng, effect, seeds: int, spread: float, sd_seed: float = 0.01, images: int = 1000):
    sd = sd_seed * np.linspace(1 / spread, spread, len(BASE))

    def arm(shift):
        p = np.clip(BASE + shift + rng.normal(0, 1, (seeds, len(BASE))) * sd, 0, 1)
        return rng.binomial(images, p) / images

    return arm(effect), arm(np.zeros(len(BASE)))


def marked(a, b) -> list[bool]:
    return [significant(c.p_adjusted, 0.05) for c in per_class_over_seeds(a, b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="null studies per setting")
    ap.add_argument("--power-n", type=int, default=1000, help="studies with an effect per setting")
    args = ap.parse_args()
    marked(np.random.rand(3, 10), np.random.rand(3, 10))  # import scipy and statsmodels before freezing
    gc.freeze()  # statsmodels' Holm collects garbage on every call: cheap on a frozen heap
    print(f"{'seed SD (points)':>17} {'seeds':>5} {'family-wise error':>18} {'MC se':>6} {'effect':>7} {'power':>6}")
    for spread in (1, 2, 3):
        for seeds, size in ((3, 0.10), (6, 0.07)):
            rng = np.random.default_rng(100 + seeds + 10 * spread)
            fwe = sum(any(marked(*study(rng, np.zeros(10), seeds, spread))) for _ in range(args.n)) / args.n
            effect = np.zeros(10)
            effect[3] = size
            power = sum(marked(*study(rng, effect, seeds, spread))[3] for _ in range(args.power_n)) / args.power_n
            print(f"{1 / spread:>8.2f} to {spread:<5.2f} {seeds:>5} {fwe:>18.4f} {np.sqrt(0.05 * 0.95 / args.n):>6.4f} "
                  f"{f'+{size * 100:.0f} pts':>7} {power:>6.3f}")
    print("\npower for a +7-point class effect at realistic per-class seed SDs (equal over the classes), "
          f"{args.power_n} studies each:")
    print(f"{'seed SD (points)':>17} {'seeds':>5} {'power':>6}")
    for sd in (1, 2, 3):
        for seeds in (6, 12):
            power = per_class_power(sd / 100, seeds, 0.07, studies=args.power_n, cached=False)
            print(f"{sd:>17} {seeds:>5} {power:>6.3f}")


if __name__ == "__main__":
    main()
