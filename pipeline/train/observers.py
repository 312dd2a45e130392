"""What hears of a study's progress from the driver (pipeline.train.driver): seeds
on demand here, the progress lines in pipeline.train.progress (MLflow publishes
what the study wrote once it ends: pipeline.tracking.publish). Each reacts to the steps it cares
about; none of them writes the study's outputs.
"""
from __future__ import annotations

from collections.abc import Callable

from pipeline.core.config import Params
from pipeline.core.jobs import HistoryRow, JobSpec
from pipeline.train.plan import Plan, more_seeds, tested_accuracy, widest_interval


class Observer:
    """Every step a study takes; an observer overrides those it cares about."""

    def planned(self, plan: Plan) -> None: ...

    def started(self, spec: JobSpec, where: str, resumed_epoch: int) -> None: ...

    def placed(self, spec: JobSpec, where: str) -> None:
        """A worker has the job ("" while it waits for one again)."""

    def epoch(self, spec: JobSpec, row: HistoryRow) -> None: ...

    def done(self, outcome) -> None:
        """A job trained or restored (pipeline.train.driver.Outcome)."""

    def stopped(self, spec: JobSpec, status: str) -> None:
        """A job ended unfinished: FAILED, or KILLED by a signal."""

    def more(self) -> list[JobSpec]:
        """Jobs to add once every job so far is done."""
        return []


class Observers:
    """Several observers as one: each step goes to each of them, in order."""

    def __init__(self, *observers: Observer | None):
        self.all = [o for o in observers if o is not None]

    def __getattr__(self, step: str):
        def notify(*args) -> None:
            for o in self.all:
                getattr(o, step)(*args)
        return notify

    def more(self) -> list[JobSpec]:
        return [j for o in self.all for j in o.more()]


class Publishing(Observer):
    """Each arm x seed published to MLflow as it finishes (pipeline.tracking.publish), in a
    thread of its own, so that training never waits for the store; the study's parent
    stays RUNNING until the stage publishes the study whole (or ends it KILLED or FAILED).
    A store that cannot take a run is said once, when the stage ends."""

    def __init__(self, study_of: Callable, runs):
        from concurrent.futures import ThreadPoolExecutor

        self.study_of, self.runs = study_of, runs  # study_of(outcome): a StudyRecord of that run alone
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="publish")
        self.failed: str | None = None

    def done(self, outcome) -> None:
        self.pool.submit(self._publish, self.study_of(outcome), "RUNNING")

    def _publish(self, study, status: str) -> None:
        from pipeline.tracking.publish import Publisher, Unpublished

        if self.failed is None or status != "RUNNING":  # a store that failed once is not asked per arm again
            try:
                Publisher().publish(study, self.runs, status=status)
            except Unpublished as exc:
                self.failed = str(exc)

    def close(self, study=None, status: str = "FINISHED") -> None:
        """Wait for what is being published; with `study`, end its parent with `status`."""
        if study is not None:
            self.pool.submit(self._publish, study, status)
        self.pool.shutdown(wait=True)


class SeedsOnDemand(Observer):
    """Adds seeds until every difference to the baseline is as precise as asked, or
    the maximum ran (pipeline.train.plan.more_seeds)."""

    def __init__(self, params: Params, jobs_for: Callable[[list[int]], list[JobSpec]]):
        self.params, self.jobs_for = params, jobs_for
        self.seeds = list(params.seeds)
        self.reason = "as listed in params.yaml"
        self.results: dict[tuple[str, int], float] = {}

    def done(self, outcome) -> None:
        self.results[(outcome.spec.arm, outcome.spec.seed)] = tested_accuracy(
            outcome.metrics, lambda: outcome.record.meta.history, self.params.report.mean_of_last)

    def more(self) -> list[JobSpec]:
        sp = self.params.seed_plan
        if sp is None:
            return []
        widest = widest_interval(self.results, [a.name for a in self.params.arms], self.params.baseline.name,
                                 self.seeds, sp.confidence)
        new, self.reason = more_seeds(sp, widest, self.seeds)
        if not new:
            return []
        print(f"seeds on demand: {self.reason}", flush=True)
        self.seeds += new
        return self.jobs_for(new)
