"""The driver: carries a study's plan out and alone writes what its jobs produce.

It restores the jobs finished in the arm cache, sends the others to an engine
(pipeline.train.engine), saves each epoch's state the moment it arrives, and
writes a finished job into the arm cache and runs/. Everything else (the
progress lines, MLflow, seeds on demand) is an observer (pipeline.train.observers)
that hears of each step as it happens.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.contracts import Checkpoint, RunMetrics, history_csv, run_dir
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, clone_file
from pipeline.core.jobs import Epoch, Failed, Finished, JobSpec, Lost, Placed
from pipeline.core.provenance import Provenance
from pipeline.core.record import FILE as RECORD, ArmRecord
from pipeline.train.armstore import ArmStore, StateWriter
from pipeline.train.plan import Identity, plan

MAX_LOST = 3  # a job whose workers die this often fails the study
LOCK_POLL_S = 1.0  # how often a job whose arm another process trains asks again, when nothing else runs


@dataclass(frozen=True)
class Outcome:
    """A job done in this execution: trained, restored from the arm store, or (no
    weights on this machine) from its committed record."""

    spec: JobSpec
    record: ArmRecord
    folder: Path | None  # its arm store entry; None when only its record is here
    restored: bool
    wall_seconds: float = 0.0

    @property
    def metrics(self) -> RunMetrics:
        return RunMetrics.from_history(self.record.meta.history)

    @property
    def weights(self) -> bool:
        return self.folder is not None


@dataclass
class _Running:
    spec: JobSpec
    lock: object
    writer: StateWriter
    started: float = field(default_factory=time.monotonic)
    lost: int = 0  # times its worker or node died
    saved_epoch: int = 0  # the last epoch whose state is on disk


class Driver:
    def __init__(self, store: ArmStore, runs: Path, engine, observers, provenance: Provenance,
                 identity: Identity, study: str, retrain: bool = False, committed: dict[str, Path] | None = None):
        self.store, self.runs, self.engine, self.observers = store, runs, engine, observers
        self.provenance, self.identity, self.study, self.retrain = provenance, identity, study, retrain
        self.device_type = identity.device_type
        self.committed = committed or {}  # fingerprint -> its committed record (reports/*/records/)
        self.outcomes: dict[tuple[str, int], Outcome] = {}
        self.planned = 0  # jobs given to run()
        self.running: dict[str, _Running] = {}
        self._told: set[str] = set()  # jobs said to wait for another process

    def run(self, jobs: list[JobSpec]) -> None:
        """Every job of `jobs`; then those the observers add (seeds on demand), until none."""
        while jobs:
            self.planned += len(jobs)
            self.observers.planned(plan(jobs, self.store.done_fps(), self.store.saved_fps(), self.retrain,
                                        self.committed))
            self._run(list(jobs))
            jobs = self.observers.more()

    def _run(self, pending: list[JobSpec]) -> None:
        while pending or self.running:
            elsewhere = []  # jobs another process (a parallel experiment) is training: they wait
            while pending and self.engine.busy() < self.engine.slots:
                spec = pending.pop(0)
                if not self._start(spec):
                    elsewhere.append(spec)
            pending = elsewhere + pending
            if self.running:  # the running jobs' states are saved while the others wait
                # with a free slot and a job waiting for its lock, ask again soon
                timeout = LOCK_POLL_S if pending and self.engine.busy() < self.engine.slots else None
                for spec, event in self.engine.events(timeout):
                    self._handle(self.running[spec.fp], event)
            elif pending:
                time.sleep(LOCK_POLL_S)

    def _start(self, spec: JobSpec) -> bool:
        """Start `spec`, or restore it from the arm cache; False while another process
        holds its arm's lock."""
        from filelock import Timeout

        lock = self.store.lock(spec.fp)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # a parallel experiment is training the same arm: it finishes it first
            if spec.fp not in self._told:
                self._told.add(spec.fp)
                print(f"{spec.label}: another process is training it; waiting", flush=True)
            return False
        try:
            entry = None if self.retrain else self.store.done(spec.fp)
            if entry is not None and not (entry[0] / RECORD).exists():  # an earlier version's entry, no record
                self.store.quarantine(entry[0], f"arm cache entry {spec.fp[:12]} has no {RECORD} (an earlier version)")
                entry = None
            if entry is not None:
                self._restore(spec, entry[0])
                lock.release()
                return True
            if not self.retrain and spec.fp in self.committed:
                self._from_record(spec, self.committed[spec.fp])
                lock.release()
                return True
            state = self.store.load_state(spec.fp, self.device_type)
            if state is not None:
                print(f"{spec.label}: resuming after epoch {state.epoch}", flush=True)
            spec = with_threads(spec)
            self.running[spec.fp] = _Running(spec, lock, StateWriter(self.store, spec.fp),
                                             saved_epoch=state.epoch if state else 0)
            self.engine.submit(spec, state)
            self.observers.started(spec, self.engine.where(spec), state.epoch if state else 0)
        except BaseException:
            lock.release()
            raise
        return True

    def _handle(self, job: _Running, event) -> None:
        spec = job.spec
        match event:
            case Placed(where):
                self.observers.placed(spec, where)
            case Epoch(row, state):
                job.writer.save(state)  # on disk before anything else
                job.saved_epoch = state.epoch
                self.observers.epoch(spec, row)
            case Finished():
                job.writer.wait()
                self._finish(job, event)
            case Lost(reason):
                job.writer.wait()  # the last state it sent is on disk: go on from there, elsewhere
                job.lost += 1
                if job.lost > MAX_LOST:
                    self._release(job)
                    raise PipelineError(f"{spec.label}: its worker died {job.lost} times (last: {reason}); "
                                        f"its last saved epoch is kept, run the stage again to resume")
                state = self.store.load_state(spec.fp, self.device_type)
                print(f"{spec.label}: {reason}; resuming after epoch {state.epoch if state else 0} on another "
                      f"worker", flush=True)
                self.engine.submit(spec, state)
                self.observers.placed(spec, "")  # no longer on the dead node; placed again soon
            case Failed(error):
                self._release(job)
                self.observers.stopped(spec, "FAILED")
                raise _job_error(spec, error)

    def _release(self, job: _Running) -> None:
        try:
            job.writer.__exit__(None, None, None)
        finally:
            job.lock.release()
            self.running.pop(job.spec.fp, None)

    def _finish(self, job: _Running, done: Finished) -> None:
        spec, p = job.spec, self.provenance
        trained_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record = ArmRecord.of(done, fingerprint=spec.fp, identity=self.identity.of(spec.cfg, spec.seed), arm=spec.arm,
                              seed=spec.seed, cfg=spec.cfg, trained_at=trained_at, code_version=p.code_version,
                              machine=done.machine)
        manifest = {"trained_at": trained_at, "device": self.device_type, "code_version": p.code_version,
                    "arm": spec.arm, "seed": spec.seed}
        with self.store.finish(spec.fp, manifest) as tmp:
            for file, weights, epoch in (("model.pt", done.model, spec.cfg.epochs),
                                         ("best.pt", done.best_state, done.best_epoch)):
                if weights is not None and (file == "model.pt" or spec.cfg.keep_best):
                    checkpoint(weights, spec, epoch, p).save(tmp / file)
            record.save(tmp / RECORD)
        self.store.drop_state(spec.fp)
        folder, _ = self.store.done(spec.fp)
        self._release(job)
        self._restore(spec, folder, restored=False, wall_seconds=time.monotonic() - job.started)

    def _restore(self, spec: JobSpec, folder: Path, restored: bool = True, wall_seconds: float = 0.0) -> None:
        """A finished arm x seed with this fingerprint is in the store: copy it into runs/."""
        record = ArmRecord.load(folder / RECORD, spec.fp)
        ArmStore.restore(folder, run_dir(self.runs, spec.arm, spec.seed), views(record))
        self.store.used(spec.fp, self.study)
        self._done(Outcome(spec, record, folder, restored, wall_seconds))

    def _from_record(self, spec: JobSpec, path: Path) -> None:
        """No weights here, but the record is committed: it is all the evaluation and the report need."""
        record = ArmRecord.load(path, spec.fp)
        with atomic_path(run_dir(self.runs, spec.arm, spec.seed)) as tmp:
            tmp.mkdir()
            clone_file(path, tmp / RECORD)
            for name, text in views(record).items():
                (tmp / name).write_text(text)
        self._done(Outcome(spec, record, None, restored=True))

    def _done(self, outcome: Outcome) -> None:
        self.outcomes[(outcome.spec.arm, outcome.spec.seed)] = outcome
        self.observers.done(outcome)

    def abort(self, status: str) -> list[str]:
        """Ctrl-C, a signal or an error: stop the jobs, keep their saved states.
        Returns, per job it stopped, where it will resume."""
        self.engine.cancel()
        stopped = []
        for job in list(self.running.values()):
            try:  # each job on its own: one that fails to close does not keep the others open
                self.observers.stopped(job.spec, status)
                self._release(job)
                stopped.append(f"{job.spec.label} resumes after epoch {job.saved_epoch}")
            except Exception as exc:  # noqa: BLE001  reported in the line the user reads
                stopped.append(f"{job.spec.label} could not be closed cleanly ({exc})")
        return stopped


def views(record: ArmRecord) -> dict[str, str]:
    """What runs/<arm>/seed=<k>/ shows of a record besides it, for reading and plotting."""
    return {"history.csv": history_csv(record.meta.history),
            "metrics.json": RunMetrics.from_history(record.meta.history).model_dump_json(indent=2) + "\n"}


def checkpoint(weights: dict, spec: JobSpec, epoch: int, p: Provenance) -> Checkpoint:
    """A checkpoint that loads with `torch.load(weights_only=True)` and says what made it."""
    return Checkpoint(model=weights, model_name=spec.cfg.model, config=spec.cfg.model_dump(), arm=spec.arm,
                      seed=spec.seed, epoch=epoch, example=p.example(), code_version=p.code_version,
                      dvc_experiment=p.dvc_experiment, data_sha256=p.data_sha256)


def with_threads(spec: JobSpec) -> JobSpec:
    """A job about to train, with this process's CPU thread count: every job of a
    study, here or on a Ray worker, then uses the same count, which keeps CPU
    results bitwise equal. torch is imported here, when something trains, not
    before."""
    import dataclasses

    import torch

    return spec if spec.threads is not None else dataclasses.replace(spec, threads=torch.get_num_threads())


def _job_error(spec: JobSpec, exc: BaseException) -> BaseException:
    if isinstance(exc, PipelineError):  # raised on a Ray worker: its one line, without Ray's traceback
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, PipelineError) else exc
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "OutOfMemoryError" in type(exc).__name__:
        return PipelineError(f"{spec.label}: batch_size {spec.cfg.batch_size} does not fit in the memory of "
                             f"{spec.device}; set a smaller batch_size (or fewer parallel jobs)")
    return exc
