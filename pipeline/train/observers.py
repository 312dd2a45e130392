"""What hears of a study's progress from the driver (pipeline.train.driver): the
MLflow runs (through the tracking journal) and seeds on demand here, the
progress lines in pipeline.train.progress. Each reacts to the steps it cares
about; none of them writes the study's outputs.
"""
from __future__ import annotations

from collections.abc import Callable

from pipeline.core.config import Arm, Params
from pipeline.core.contracts import CHECKPOINTS, run_dir
from pipeline.core.jobs import HistoryRow, JobSpec
from pipeline.core.provenance import Provenance
from pipeline.train.plan import Plan, more_seeds, tested_accuracy, widest_interval


class Observer:
    """Every step a study takes; an observer overrides those it cares about."""

    def planned(self, plan: Plan) -> None: ...

    def started(self, spec: JobSpec, where: str, resumed_epoch: int) -> None: ...

    def placed(self, spec: JobSpec, where: str) -> None:
        """A worker has the job ("" while it waits for one again)."""

    def epoch(self, spec: JobSpec, row: HistoryRow) -> None: ...

    def usage(self, spec: JobSpec, epoch: int, metrics: dict[str, float]) -> None: ...

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


class Tracking(Observer):
    """Each job as an MLflow child run of the study's parent run, written to the
    tracking journal (pipeline.tracking): tags and params when it starts, metrics
    per epoch, files and models when done. A job killed and resumed goes on in the
    same run; a restored one gets a run of its own, pointing to the run that
    trained it (which holds its models)."""

    def __init__(self, journal, parent: str, study: str, arms: dict[str, Arm], provenance: Provenance, runs):
        self.journal, self.parent, self.study, self.arms, self.p = journal, parent, study, arms, provenance
        self.runs = runs
        self.keys: dict[tuple[str, int], tuple[str, str | None]] = {}  # (arm, seed) -> (run key, model key)
        self._open: dict[str, str] = {}  # fingerprint -> run key of a job training now

    def _child(self, spec: JobSpec, extra_tags: dict | None = None) -> str:
        arm, p = self.arms[spec.arm], self.p
        tags = {"arm": arm.name, "seed": spec.seed, **{f"axis.{k}": v for k, v in arm.axes.items()},
                "git_commit": p.code_version, "dvc_experiment": p.dvc_experiment, "data_sha256": p.data_sha256,
                "fingerprint": spec.fp, **(extra_tags or {})}
        key = self.journal.start(self.study, spec.label, tags=tags, parent=self.parent)
        self.journal.params(key, {**_flat(spec.cfg.model_dump()), "seed": spec.seed, "arm": arm.name,
                                  **p.data_params})
        for context, rows in (("train", p.n_train), ("test", p.n_test)):
            # one dataset per split (MLflow keeps one input per name and digest): the archive's checksum
            self.journal.dataset(key, name=f"{p.data_name} {context}", digest=p.archive_sha256,
                                 source=p.data_source, context=context, rows=rows)
        return key

    def started(self, spec: JobSpec, where: str, resumed_epoch: int) -> None:
        last = self.journal.arm_run(spec.fp)
        if resumed_epoch and last is not None and last["open"]:
            key = last["key"]
            self.journal.resume(key, self.parent)
        else:
            key = self._child(spec)
            self.journal.set_arm_run(spec.fp, key, open=True)
        self._open[spec.fp] = key

    def epoch(self, spec: JobSpec, row: HistoryRow) -> None:
        self._metrics(self._open[spec.fp], row)

    def _metrics(self, key: str, row: HistoryRow) -> None:
        self.journal.metrics(key, {k: v for k, v in row.model_dump().items() if k != "epoch" and v is not None},
                             step=row.epoch)

    def usage(self, spec: JobSpec, epoch: int, metrics: dict[str, float]) -> None:
        self.journal.metrics(self._open[spec.fp], metrics, step=epoch)

    def done(self, o) -> None:
        spec = o.spec
        if o.restored:
            key = self._child(spec, {"restored": "true", "trained_at": o.record.meta.trained_at,
                                     **({} if o.weights else {"weights": "not on this machine"})})
            for row in o.record.meta.history:
                self._metrics(key, row)
            last = self.journal.arm_run(spec.fp)
            model_key = last["key"] if last is not None and not last["open"] else None
        else:
            key = model_key = self._open.pop(spec.fp)
            for which, file in CHECKPOINTS.items():
                if (o.folder / file).exists():
                    self.journal.model(key, o.folder / file, which)
            self.journal.set_arm_run(spec.fp, key, open=False)
        self.journal.metrics(key, {f"final_{k}": v for k, v in o.metrics.named().items()})
        for name in ("history.csv", "record.npz"):
            self.journal.artifact(key, run_dir(self.runs, spec.arm, spec.seed) / name)
        self.journal.end(key)
        self.keys[(spec.arm, spec.seed)] = (key, model_key)

    def stopped(self, spec: JobSpec, status: str) -> None:
        key = self._open.pop(spec.fp, None)
        if key is not None:
            self.journal.end(key, status)


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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

