"""Stage `train`: every arm of the study's grid, for every seed.

Reads params.yaml once (pipeline.core.config) and the prepared arrays (stage
`untar`); writes, per arm x seed, `runs/<arm>/seed=<k>/` with the last (and
best) checkpoint, the per-epoch history and the final metrics; `runs/study.json`
(what ran, for the later stages); a per-arm summary for `dvc metrics`/`dvc exp
show`; and learning curves for `dvc plots`. Every run is also an MLflow child
run under one parent run per execution, through the tracking journal.

This process is the driver: it alone writes files. Jobs (pipeline.training.job)
run in it or on a Ray cluster (pipeline.train.engine); each epoch's state comes
back and is saved before anything else happens with it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import dataset
from pipeline.core.config import Arm, Params, TrainConfig, load_params
from pipeline.core.contracts import (
    CHECKPOINTS,
    HISTORY_FIELDS,
    ArmFiles,
    HistoryRow,
    RunMetrics,
    StudyRecord,
    StudyRun,
    read_history,
    read_json,
    run_dir,
    write_history,
)
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, write_json
from pipeline.core.provenance import code_digest, code_version, dvc_experiment, library_versions, repo_root
from pipeline.train.armstore import ArmStore, StateWriter, fingerprint
from pipeline.training.job import Data, Finished, JobSpec, checkpoint
from pipeline.training.subset import load_subset


_SIGNALLED: list[int] = []  # the signals that stopped the study (Ray may re-raise a plain KeyboardInterrupt)


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def _note_signal(signum, frame):
    """While a stopped study cleans up: a second signal is noted, not raised."""
    _SIGNALLED.append(signum)


def _set_signals(handler) -> None:
    """`handler` for SIGTERM, and for SIGINT unless the shell made this process ignore it."""
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)


def load_data(folder: Path, params: Params) -> tuple[Data, dict]:
    """The study's (subset) splits and the manifest of the prepared data."""
    manifest = dataset.load_manifest(folder)
    d = params.data
    tx, ty, _ = load_subset(folder, "train", d.train_limit, d.subset_seed)
    vx, vy, _ = load_subset(folder, "test", d.test_limit, d.subset_seed)
    digest = f"{manifest['data_sha256']}:{d.train_limit}:{d.test_limit}:{d.subset_seed}"
    return Data(digest, tx, ty, vx, vy), manifest


def summarize(per_run: dict[tuple[str, int], RunMetrics], arms: list[str], seeds: list[int], study: str) -> dict:
    """Per-arm mean and std over seeds: the numbers `dvc exp show` lists."""
    out = {}
    for arm in arms:
        rows = [per_run[(arm, s)] for s in seeds]
        entry = {"n_seeds": len(rows)}
        for key in ("test_acc", "train_acc", "gap", "best_test_acc"):
            vals = [getattr(r, key) for r in rows]
            entry[key] = statistics.fmean(vals)
            entry[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[arm] = entry
    return {"study": study, "arms": out}


def write_curves(path: Path, runs: Path, arms: list[str], seeds: list[int]) -> None:
    """Every arm x seed's history in one long CSV, with `arm` and `seed` columns
    (drawn by the templates of `dvc plots`)."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("run", "arm", "seed") + HISTORY_FIELDS)
        w.writeheader()
        for arm in arms:
            for seed in seeds:
                for row in read_history(run_dir(runs, arm, seed) / "history.csv"):
                    w.writerow({"run": f"{arm} seed={seed}", "arm": arm, "seed": seed, **row.model_dump()})


@dataclass
class Identity:
    """Everything besides config and seed that decides what an arm computes."""

    data_id: dict
    code: str
    versions: dict
    device_type: str

    def fingerprint(self, cfg: TrainConfig, seed: int) -> str:
        return fingerprint(cfg, seed, self.data_id, self.code, self.versions, self.device_type)


@dataclass
class Running:
    spec: JobSpec
    lock: object
    writer: StateWriter
    run_key: str | None
    started: float = field(default_factory=time.monotonic)
    lost: int = 0  # times its worker or node died
    saved_epoch: int = 0  # the last epoch whose state is on disk


MAX_LOST = 3  # a job whose workers die this often fails the study
LOCK_POLL_S = 1.0  # how often a job whose arm another process trains asks again, when nothing else runs


class Driver:
    """Runs a study's jobs through an engine and writes everything they produce."""

    def __init__(self, params: Params, store: ArmStore, runs: Path, identity: Identity, engine, journal,
                 parent: str | None, provenance: dict, retrain: bool, device: str, progress):
        self.params, self.store, self.runs, self.identity = params, store, runs, identity
        self.engine, self.journal, self.parent, self.provenance = engine, journal, parent, provenance
        self.retrain, self.device, self.progress = retrain, device, progress
        self.results: dict[tuple[str, int], RunMetrics] = {}
        self.planned = 0  # arm x seed jobs given to run(), restored ones included
        self.record: list[StudyRun] = []
        self.running: dict[str, Running] = {}
        self._told: set[str] = set()  # jobs said to wait for another process

    # --- tracking

    def _child(self, arm: Arm, seed: int, fp: str, cfg: TrainConfig, extra_tags: dict | None = None) -> str | None:
        if self.journal is None:
            return None
        tags = {"arm": arm.name, "seed": seed, **{f"axis.{k}": v for k, v in arm.axes.items()},
                "git_commit": self.provenance["code_version"], "dvc_experiment": self.provenance["dvc_experiment"],
                "data_sha256": self.provenance["data_sha256"], "fingerprint": fp, **(extra_tags or {})}
        key = self.journal.start(self.params.study, f"{arm.name} seed={seed}", tags=tags, parent=self.parent)
        self.journal.params(key, {**_flat(cfg.model_dump()), "seed": seed, "arm": arm.name,
                                  **self.provenance["data_params"]})
        for context, rows in (("train", self.provenance["n_train"]), ("test", self.provenance["n_test"])):
            # one dataset per split (MLflow keeps one input per name and digest): the archive's checksum
            self.journal.dataset(key, name=f"{self.provenance['data_name']} {context}",
                                 digest=self.provenance["archive_sha256"], source=self.provenance["data_source"],
                                 context=context, rows=rows)
        return key

    def _log_epoch(self, key: str | None, row: HistoryRow) -> None:
        if key is not None:
            self.journal.metrics(key, {k: v for k, v in row.model_dump().items() if k != "epoch"}, step=row.epoch)

    # --- jobs

    def run(self, jobs: list[JobSpec], arms: dict[str, Arm]) -> None:
        self.planned += len(jobs)
        pending = list(jobs)
        while pending or self.running:
            elsewhere = []  # jobs another process (a parallel experiment) is training: they wait
            while pending and self.engine.busy() < self.engine.slots:
                spec = pending.pop(0)
                if not self._start(spec, arms):
                    elsewhere.append(spec)
            pending = elsewhere + pending
            if self.running:  # the running jobs' states are saved while the others wait
                # with a free slot and a job waiting for its lock, ask again soon
                timeout = LOCK_POLL_S if pending and self.engine.busy() < self.engine.slots else None
                for spec, event in self.engine.events(timeout):
                    self._handle(spec, event, arms[spec.arm])
            elif pending:
                time.sleep(LOCK_POLL_S)

    def _start(self, spec: JobSpec, arms: dict[str, Arm]) -> bool:
        """Start `spec` (or restore it from the arm cache); False while another process
        holds its arm's lock."""
        arm = arms[spec.arm]
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
            if entry is not None:
                self._restore(spec, arm, *entry)
                lock.release()
                return True
            saved = self.store.load_state(spec.fp, self.identity.device_type)
            state, side = saved if saved is not None else (None, {})
            key = side.get("run_key") if self.journal is not None else None
            if state is not None:
                print(f"{spec.label}: resuming after epoch {state.epoch}", flush=True)
                self.progress.resumed(spec, state.epoch)
            if key is not None and state is not None:
                self.journal.resume(key, self.parent)
            else:
                key = self._child(arm, spec.seed, spec.fp, spec.cfg)
            spec = with_threads(spec)
            writer = StateWriter(self.store, spec.fp).__enter__()
            self.running[spec.fp] = Running(spec, lock, writer, key, saved_epoch=state.epoch if state else 0)
            self.engine.submit(spec, state)
            self.progress.started(spec, self.engine.where(spec))
        except BaseException:
            lock.release()
            raise
        return True

    def _handle(self, spec: JobSpec, event, arm: Arm) -> None:
        job = self.running[spec.fp]
        kind = type(event).__name__
        if kind == "Placed":
            self.progress.started(spec, event.where)
        elif kind == "Epoch":
            job.writer.save(event.state, {"run_key": job.run_key})  # on disk before anything else
            job.saved_epoch = event.state.epoch
            row = event.row
            self._log_epoch(job.run_key, row)
            self.progress.epoch(spec, row)
        elif kind == "Usage":  # of the machine that trained that epoch
            if job.run_key is not None:
                self.journal.metrics(job.run_key, event.metrics, step=job.saved_epoch)
        elif kind == "Finished":
            job.writer.wait()
            self._finish(job, arm, event)
        elif kind == "Lost":
            job.writer.wait()  # the last state it sent is on disk: go on from there, elsewhere
            job.lost += 1
            if job.lost > MAX_LOST:
                self._release(job)
                raise PipelineError(f"{spec.label}: its worker died {job.lost} times (last: {event.reason}); "
                                    f"its last saved epoch is kept, run the stage again to resume")
            saved = self.store.load_state(spec.fp, self.identity.device_type)
            state = saved[0] if saved is not None else None
            print(f"{spec.label}: {event.reason}; resuming after epoch {state.epoch if state else 0} on another "
                  f"worker", flush=True)
            self.engine.submit(spec, state)
            self.progress.started(spec, "")  # no longer on the dead node; placed again soon
        elif kind == "Failed":
            self._release(job)
            if self.journal is not None and job.run_key is not None:
                self.journal.end(job.run_key, "FAILED")
            raise _job_error(spec, event.error)

    def _release(self, job: Running) -> None:
        try:
            job.writer.__exit__(None, None, None)
        finally:
            job.lock.release()
            self.running.pop(job.spec.fp, None)

    def _finish(self, job: Running, arm: Arm, done: Finished) -> None:
        import torch

        spec, cfg = job.spec, job.spec.cfg
        metrics = RunMetrics.from_history(done.history)
        manifest = {"trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "device": self.identity.device_type, "code_version": self.provenance["code_version"],
                    "tracking_key": job.run_key}
        example = torch.from_numpy(self.provenance["example"])
        with self.store.finish(spec.fp, manifest) as tmp:
            torch.save(checkpoint(done.model, spec, cfg.epochs, self.provenance, example), tmp / "model.pt")
            if cfg.keep_best and done.best_state is not None:
                torch.save(checkpoint(done.best_state, spec, done.best_epoch, self.provenance, example),
                           tmp / "best.pt")
            write_history(tmp / "history.csv", done.history)
            (tmp / "diagnostics.json").write_text(json.dumps(done.diagnostics) + "\n")
            (tmp / "metrics.json").write_text(metrics.model_dump_json(indent=2) + "\n")
        self.store.drop_state(spec.fp)
        folder = self.store.folder(spec.fp) / "done"
        ArmStore.restore(folder, run_dir(self.runs, spec.arm, spec.seed))
        self._release(job)
        if job.run_key is not None:
            key = job.run_key
            self.journal.metrics(key, {f"final_{k}": v for k, v in metrics.model_dump().items()})
            for name in ("history.csv", "metrics.json", "diagnostics.json"):
                self.journal.artifact(key, folder / name)
            for which, file in CHECKPOINTS.items():
                if (folder / file).exists():
                    self.journal.model(key, folder / file, f"{which}_model")
            self.journal.end(key)
        self.results[(spec.arm, spec.seed)] = metrics
        self.record.append(StudyRun(arm=spec.arm, seed=spec.seed, restored=False, fingerprint=spec.fp,
                                    wall_seconds=time.monotonic() - job.started,
                                    trained_at=manifest["trained_at"], code_version=manifest["code_version"],
                                    tracking_key=job.run_key, model_key=job.run_key))
        self.progress.finished(spec, metrics)

    def _restore(self, spec: JobSpec, arm: Arm, folder: Path, files: ArmFiles) -> None:
        """A finished arm x seed with this fingerprint exists: link it in, do not train it again."""
        dest = run_dir(self.runs, spec.arm, spec.seed)
        metrics = read_json(folder / "metrics.json", RunMetrics, "the arm cache entry is damaged")
        history = read_history(folder / "history.csv")
        ArmStore.restore(folder, dest)
        key = None
        if self.journal is not None:
            key = self._child(arm, spec.seed, spec.fp, spec.cfg, {"restored": "true", "trained_at": files.trained_at})
            for row in history:
                self.journal.metrics(key, {k: v for k, v in row.model_dump().items() if k != "epoch"}, step=row.epoch)
            self.journal.metrics(key, {f"final_{k}": v for k, v in metrics.model_dump().items()})
            for name in ("history.csv", "metrics.json", "diagnostics.json"):
                self.journal.artifact(key, folder / name)
            self.journal.end(key)
        self.results[(spec.arm, spec.seed)] = metrics
        self.record.append(StudyRun(arm=spec.arm, seed=spec.seed, restored=True, fingerprint=spec.fp,
                                    trained_at=files.trained_at, code_version=files.code_version, tracking_key=key,
                                    model_key=files.tracking_key))
        self.progress.restored(spec, metrics, files)

    def abort(self, status: str) -> list[str]:
        """Ctrl-C, a signal or an error: stop the jobs, keep their saved states.
        Returns, per job it stopped, where it will resume."""
        self.engine.cancel()
        stopped = []
        for job in list(self.running.values()):
            try:  # each job on its own: one that fails to close does not keep the others open
                if self.journal is not None and job.run_key is not None:
                    self.journal.end(job.run_key, status)
                self._release(job)
                stopped.append(f"{job.spec.label} resumes after epoch {job.saved_epoch}")
            except Exception as exc:  # noqa: BLE001  reported in the line the user reads
                stopped.append(f"{job.spec.label} could not be closed cleanly ({exc})")
        return stopped


def widest_interval(results: dict[tuple[str, int], RunMetrics], arms: list[str], baseline: str,
                    seeds: list[int], confidence: float) -> float:
    """The widest CI half-width (a fraction) of the test-accuracy differences to the
    baseline over these seeds (of the arm's own mean, with one arm); inf when undefined."""
    from pipeline.core import stats

    acc = {a: [results[(a, s)].test_acc for s in seeds] for a in arms}
    intervals = ([stats.welch(acc[a], acc[baseline], confidence).ci for a in arms if a != baseline]
                 or [stats.mean_ci(acc[baseline], confidence).ci])
    return max(iv.half_width if iv.half_width is not None else math.inf for iv in intervals)


def more_seeds(params: Params, driver: Driver, progress, jobs_for, arms: dict, seeds: list[int]):
    """Seeds on demand: add seeds until every difference is as precise as asked, or
    the maximum ran. Each round adds the seeds the observed spread says are needed
    (at least one). Never looks at a p-value. Returns (seeds, why they stopped)."""
    plan = params.seed_plan
    target = plan.halfwidth / 100
    names = [a.name for a in params.arms]
    while True:
        widest = widest_interval(driver.results, names, params.baseline.name, seeds, plan.confidence)
        shown = "undefined" if math.isinf(widest) else f"{100 * widest:.2f} points"
        if widest <= target:
            return seeds, (f"{len(seeds)} seeds ran: the widest {plan.confidence * 100:g}% interval of a difference "
                           f"to the baseline is ±{shown}, within the ±{plan.halfwidth:g} asked for (seeds: "
                           f"min {plan.min}, max {plan.max})")
        if len(seeds) >= plan.max:
            return seeds, (f"{len(seeds)} seeds ran, the maximum asked for: the widest {plan.confidence * 100:g}% "
                           f"interval of a difference to the baseline is still ±{shown}, wider than the "
                           f"±{plan.halfwidth:g} asked for")
        # half-width ~ t * sd * sqrt(2 / n): the n that would reach the target, if the spread holds
        need = len(seeds) + 1 if math.isinf(widest) else math.ceil(len(seeds) * (widest / target) ** 2)
        new = list(range(len(seeds), min(plan.max, max(need, len(seeds) + 1))))
        print(f"seeds on demand: with {len(seeds)} seeds the widest interval is ±{shown} (asked: "
              f"±{plan.halfwidth:g}); adding seeds {', '.join(map(str, new))}", flush=True)
        new_jobs = jobs_for(new)
        progress.add(new_jobs, driver.store, driver.retrain)
        driver.run(new_jobs, arms)
        seeds = seeds + new


def import_torch_beside() -> threading.Thread | None:
    """Start importing torch in a thread. The driver needs it (thread count, saving
    checkpoints) once the first job is under way; on the Ray engine the seconds that
    import takes then pass while Ray starts or is joined and a worker warms up,
    instead of after. Not a daemon: the process waits for it to end, as an import cut
    short at exit can crash the interpreter."""
    if "torch" in sys.modules:
        return None
    t = threading.Thread(target=importlib.import_module, args=("torch",), name="import-torch", daemon=False)
    t.start()
    return t


def with_threads(spec: JobSpec) -> JobSpec:
    """A job about to train, with this process's CPU thread count: every job of a
    study, here or on a Ray worker, then uses the same count, which keeps CPU
    results bitwise equal. torch is imported here, when something trains, not
    before."""
    if spec.threads is not None:
        return spec
    import torch

    return dataclasses.replace(spec, threads=torch.get_num_threads())


# Where one of these exists an NVIDIA driver may be present (Linux, WSL); elsewhere
# torch cannot start CUDA, so `device: auto` is the CPU without importing torch.
_NVIDIA_SIGNS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def device_without_torch(setting: str) -> str | None:
    """The device for `setting` when it can be known without importing torch: "cpu"
    when asked for, or for "auto" on a Linux machine with no NVIDIA driver; else None
    (ask torch)."""
    if setting == "cpu":
        return "cpu"
    if setting == "auto" and sys.platform.startswith("linux") and not any(map(os.path.exists, _NVIDIA_SIGNS)):
        return "cpu"
    return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _job_error(spec: JobSpec, exc: BaseException) -> BaseException:
    if isinstance(exc, PipelineError):  # raised on a Ray worker: its one line, without Ray's traceback
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, PipelineError) else exc
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "OutOfMemoryError" in type(exc).__name__:
        return PipelineError(f"{spec.label}: batch_size {spec.cfg.batch_size} does not fit in the memory of "
                             f"{spec.device}; set a smaller batch_size (or fewer parallel jobs)")
    return exc


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared", help="output of the untar stage")
    ap.add_argument("--runs", default="runs", help="per arm x seed outputs")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--curves", default="plots/curves.csv")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--retrain", action="store_true",
                    help="train every arm even when the arm cache holds a finished one")
    args = ap.parse_args(argv)

    params = load_params(args.params)  # every arm is validated before anything trains
    # cuBLAS reads this when CUDA starts; deterministic arms need it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from pipeline.train.engine import cluster_address, connect
    from pipeline.train.progress import Progress
    from pipeline.training import resolve_precision

    address = cluster_address(params.run.cluster)
    bf16 = None
    importing = None
    if address:  # the cluster decides the device: cuda if it has GPUs (unless params say cpu)
        importing = import_torch_beside()
        devices = connect(address)
        bf16 = devices.bf16
        device = "cpu" if params.run.device == "cpu" else devices.type
    else:
        device = device_without_torch(params.run.device)
        if device is None:
            from pipeline.training.loop import resolve_device

            device = str(resolve_device(params.run.device))
    device_type = device.split(":")[0]
    # deterministic kernels are set by each job (pipeline.training.job), where they run
    data, manifest = load_data(Path(args.data), params)
    root = repo_root()
    store = ArmStore(root)
    store.sweep()
    identity = Identity(
        data_id={"data_sha256": manifest["data_sha256"], "train_limit": params.data.train_limit,
                 "test_limit": params.data.test_limit, "subset_seed": params.data.subset_seed},
        code=code_digest(), versions=library_versions(), device_type=device_type)
    provenance = {
        "code_version": code_version(), "dvc_experiment": dvc_experiment(),
        "data_sha256": manifest["data_sha256"], "data_name": manifest.get("name", "CIFAR-10"),
        "data_source": params.data.url, "n_train": len(data.train_y), "n_test": len(data.test_y),
        "archive_sha256": manifest.get("source", {}).get("sha256") or manifest["data_sha256"],
        "data_params": {f"data.{k}": v for k, v in params.data.model_dump().items()},
        "example": data.test_x[:4].copy(),  # a few test images (uint8), the logged models' input example
    }
    runs = Path(args.runs)
    arms = {a.name: a for a in params.arms}
    # what each arm computes on this device (precision: auto made concrete), and its fingerprint
    resolved = {a.name: a.train.model_copy(update={"precision": resolve_precision(a.train.precision, device_type,
                                                                                  bf16)})
                for a in params.arms}

    def jobs_for(seeds) -> list[JobSpec]:
        # threads: filled in by the driver when a job is about to train (torch takes seconds to
        # import, and a study whose every run is in the arm cache never loads it)
        return [JobSpec(arm.name, seed, resolved[arm.name], identity.fingerprint(resolved[arm.name], seed),
                        device, params.run.eval_batch_size, params.run.deterministic, None)
                for arm in params.arms for seed in seeds]

    jobs = jobs_for(params.seeds)

    # a signal ends the study with one line, the jobs cancelled, their saved states kept and
    # the MLflow runs ended as KILLED
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _SIGNALLED.clear()
    _set_signals(_on_signal)
    from pipeline.train.engine import make_engine

    progress = Progress(enabled=not args.no_progress and sys.stderr.isatty())
    journal = parent = engine = driver = None
    seeds, reason = list(params.seeds), "as listed in params.yaml"
    try:
        if not args.no_mlflow:
            from pipeline.tracking.journal import Journal

            journal = Journal(root)
            journal.reap()
            parent = journal.start(params.study, f"{params.study} {provenance['dvc_experiment']}", tags={
                "git_commit": provenance["code_version"], "dvc_experiment": provenance["dvc_experiment"],
                "data_sha256": provenance["data_sha256"], "preset": params.preset,
                "arms": ", ".join(a.name for a in params.arms), "seeds": list(params.seeds)},
                description=f"Ablation study {params.study} (preset {params.preset}): arms "
                            f"{', '.join(a.name for a in params.arms)}; seeds {list(params.seeds)}; "
                            f"data {provenance['data_name']} ({provenance['n_train']:,} train / "
                            f"{provenance['n_test']:,} test images).")
            journal.params(parent, {"preset": params.preset, "seeds": list(params.seeds),
                                    **provenance["data_params"]})
            journal.flush_in_background()

        todo = [j for j in jobs if args.retrain or not (store.folder(j.fp) / "done").is_dir()]
        if todo and importing is None:
            importing = import_torch_beside()
        engine = make_engine(data, todo, params.run.parallel, params.run.cluster, device_type, progress.step,
                             sizing=jobs)
        _set_signals(_on_signal)  # again: Ray's start sets a SIGTERM handler of its own
        driver = Driver(params, store, runs, identity, engine, journal, parent, provenance, args.retrain,
                        device, progress)
        progress.plan(params, jobs, device, engine, store, identity, retrain=args.retrain, data=data)
        driver.run(jobs, arms)
        if params.seed_plan is not None:
            seeds, reason = more_seeds(params, driver, progress, jobs_for, arms, seeds)
    except BaseException as exc:
        _set_signals(_note_signal)  # a second Ctrl-C must not cut the clean-up short
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        stopped = []
        try:
            if driver is not None:
                stopped = driver.abort(status)
        finally:
            if parent is not None:
                journal.end(parent, status)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        progress.close()
        if engine is not None:
            engine.close()
        # one line, no traceback: what is kept and how to go on
        signum = _SIGNALLED[0] if _SIGNALLED else signal.SIGINT
        done, planned = (len(driver.results), driver.planned) if driver is not None else (0, len(jobs))
        print(f"interrupted by {signal.Signals(signum).name}: {done} of {planned} runs finished"
              + "".join(f"; {s}" for s in stopped)
              + "; run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        progress.close()
        if engine is not None:
            engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    arm_names = [a.name for a in params.arms]
    write_json(args.metrics, summarize(driver.results, arm_names, seeds, params.study))
    write_curves(Path(args.curves), runs, arm_names, seeds)
    order = {(a, s): i for i, (a, s) in enumerate((a, s) for a in arm_names for s in seeds)}
    record = StudyRecord(study=params.study, arms=arm_names, seeds=seeds, seeds_reason=reason,
                         runs=sorted(driver.record, key=lambda r: order[(r.arm, r.seed)]),
                         tracking_key=parent, device=device)
    with atomic_path(runs / "study.json") as tmp:
        tmp.write_text(record.model_dump_json(indent=1) + "\n")
    if journal is not None:
        journal.artifact(parent, args.metrics)
        journal.tags(parent, {"seeds": seeds, "seeds_reason": reason})
        journal.end(parent)
        line = journal.status_line()
        if line:
            print(f"warning: {line}", file=sys.stderr)
    for name, entry in summarize(driver.results, arm_names, seeds, params.study)["arms"].items():
        print(f"{name}: test acc {entry['test_acc']:.4f} ± {entry['test_acc_std']:.4f} "
              f"(std, n={entry['n_seeds']} seeds)")


if __name__ == "__main__":
    main()
