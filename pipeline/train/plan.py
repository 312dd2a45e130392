"""The train stage's decisions, pure: a study's jobs and their fingerprints, which
of them are restored from the arm cache, resumed or trained, and when seeds on
demand stop. No torch and no files: the driver (pipeline.train.driver) carries
a plan out.

An arm x seed's fingerprint is the sha256 of its resolved training config, its
seed, the data it trains on (the prepared data's checksum and the subset's
indices), the code it runs (pipeline.core.provenance.arm_code: the job, its
model's file and its regime's file, by content), the versions of torch,
torchvision and numpy, and the device type.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from pipeline.core import stats
from pipeline.core.config import Params, SeedPlan, TrainConfig, resolve_precision
from pipeline.core.contracts import RunMetrics
from pipeline.core.jobs import HistoryRow, JobSpec
from pipeline.core.provenance import arm_code
from pipeline.core.record import fingerprint_of


@dataclass(frozen=True)
class Identity:
    """Everything besides config and seed that decides what an arm computes."""

    data_id: dict
    versions: dict
    device_type: str
    code: Callable[[str, str], str] = field(default=arm_code, compare=False)  # (model, aug) -> digest

    def of(self, cfg: TrainConfig, seed: int) -> dict:
        """What an arm x seed's fingerprint hashes (kept in its record)."""
        return {"config": cfg.model_dump(), "seed": seed, "data": self.data_id, "code": self.code(cfg.model, cfg.aug),
                "versions": self.versions, "device": self.device_type}

    def fingerprint(self, cfg: TrainConfig, seed: int) -> str:
        return fingerprint_of(self.of(cfg, seed))


def jobs_for(params: Params, seeds: Sequence[int], identity: Identity, device: str,
             bf16: bool | None) -> list[JobSpec]:
    """Every arm x seed of `seeds`, arm-major, with precision made concrete for the
    device (once, here) and its fingerprint."""
    jobs = []
    for arm in params.arms:
        cfg = arm.train.model_copy(update={"precision": resolve_precision(arm.train.precision, identity.device_type,
                                                                          bool(bf16))})
        jobs += [JobSpec(arm.name, seed, cfg, identity.fingerprint(cfg, seed), device, params.run.eval_batch_size,
                         params.run.deterministic) for seed in seeds]
    return jobs


@dataclass(frozen=True)
class Plan:
    """What an execution does with each of its jobs (`jobs`, in their order)."""

    jobs: tuple[JobSpec, ...]
    restore: tuple[JobSpec, ...]  # finished in the arm store
    recorded: tuple[JobSpec, ...]  # not in the store, but its record is committed: no weights here, nothing trains
    resume: tuple[JobSpec, ...]  # an interrupted run's state is saved: it goes on from there
    train: tuple[JobSpec, ...]  # from the first epoch

    @property
    def to_train(self) -> tuple[JobSpec, ...]:
        return self.resume + self.train


def plan(jobs: Sequence[JobSpec], done: Collection[str], saved: Collection[str], retrain: bool = False,
         recorded: Collection[str] = ()) -> Plan:
    """`done`: the fingerprints finished in the arm store; `recorded`: those whose
    record is committed; `saved`: those with a saved state. With `retrain`, every job
    trains from its first epoch."""
    def first(*have):
        return lambda j: not retrain and any(j.fp in h for h in have)

    restore = tuple(filter(first(done), jobs))
    recorded_ = tuple(j for j in jobs if j not in restore and first(recorded)(j))
    resume = tuple(j for j in jobs if j not in restore + recorded_ and first(saved)(j))
    return Plan(tuple(jobs), restore, recorded_, resume,
                tuple(j for j in jobs if j not in restore + recorded_ + resume))


# --------------------------------------------------------------------------- seeds on demand


def tested_accuracy(metrics: RunMetrics, history: Callable[[], list[HistoryRow]], last_k: int) -> float:
    """A run's accuracy as its study tests it (report.mean_of_last): the last epoch's on
    the held-out images each epoch is evaluated on (validation, else test), or the mean
    test accuracy of its last `last_k` epochs."""
    return metrics.acc if last_k == 1 else sum(r.test_acc for r in history()[-last_k:]) / last_k


def widest_interval(results: dict[tuple[str, int], float], arms: list[str], baseline: str,
                    seeds: Sequence[int], confidence: float) -> float:
    """The widest CI half-width (a fraction) of the accuracy differences to the baseline
    over these seeds (of the arm's own mean, with one arm), each run's accuracy as its
    study tests it (`tested_accuracy`); inf when undefined."""
    acc = {a: [results[(a, s)] for s in seeds] for a in arms}
    intervals = ([stats.welch(acc[a], acc[baseline], confidence).ci for a in arms if a != baseline]
                 or [stats.mean_ci(acc[baseline], confidence).ci])
    return max(iv.half_width if iv.half_width is not None else math.inf for iv in intervals)


def more_seeds(seed_plan: SeedPlan, widest: float, seeds: Sequence[int]) -> tuple[list[int], str]:
    """Seeds on demand: the seeds to add now (none once every difference is as precise
    as asked, or the maximum ran), and why. Each round adds the seeds the observed
    spread says are needed (at least one). Never looks at a p-value."""
    n, target = len(seeds), seed_plan.halfwidth / 100
    shown = "undefined" if math.isinf(widest) else f"{100 * widest:.2f} points"
    asked = f"{seed_plan.confidence * 100:g}% interval of a difference to the baseline"
    if widest <= target:
        return [], (f"{n} seeds ran: the widest {asked} is ±{shown}, within the ±{seed_plan.halfwidth:g} asked for "
                    f"(seeds: min {seed_plan.min}, max {seed_plan.max})")
    if n >= seed_plan.max:
        return [], (f"{n} seeds ran, the maximum asked for: the widest {asked} is still ±{shown}, wider than the "
                    f"±{seed_plan.halfwidth:g} asked for")
    # half-width ~ t * sd * sqrt(2 / n): the n that would reach the target, if the spread holds
    need = n + 1 if math.isinf(widest) else math.ceil(n * (widest / target) ** 2)
    new = list(range(n, min(seed_plan.max, max(need, n + 1))))
    return new, (f"with {n} seeds the widest interval is ±{shown} (asked: ±{seed_plan.halfwidth:g}); adding seeds "
                 f"{', '.join(map(str, new))}")
