"""Stage `train`: every arm of the study's grid, for every seed.

Reads params.yaml once (pipeline.config), the prepared arrays (stage `untar`),
and writes, per arm x seed, `runs/<arm>/seed=<k>/` with the last (and best)
checkpoint, the per-epoch history and the final metrics; a per-arm summary for
`dvc metrics`/`dvc exp show`; and learning curves for `dvc plots`. Every run is
also an MLflow child run under one parent run per pipeline execution.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import models
from pipeline import data as datamod
from pipeline.armstore import ArmStore, StateWriter, code_digest, fingerprint
from pipeline.config import Arm, Params, TrainConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_path, write_json
from pipeline.provenance import code_version, dvc_experiment, repo_root
from pipeline.trainer import Result, Tensors, fit, resolve_device, seed_everything

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                  "epoch_seconds", "images_per_second")


def run_dir(runs: Path, arm: Arm, seed: int) -> Path:
    return runs / arm.name / f"seed={seed}"


def load_tensors(folder: Path, params: Params, device: torch.device) -> tuple[Tensors, Tensors]:
    """The (optionally subset) splits, resident on `device` as uint8."""
    out = []
    for split, limit in (("train", params.data.train_limit), ("test", params.data.test_limit)):
        x, y = datamod.load_split(folder, split)
        idx = datamod.stratified_subset(y, limit, params.data.subset_seed)
        out.append(Tensors(torch.from_numpy(np.ascontiguousarray(x[idx])).to(device),
                           torch.from_numpy(np.ascontiguousarray(y[idx])).long().to(device)))
    return out[0], out[1]


def checkpoint(state: dict, cfg: TrainConfig, arm: Arm, seed: int, epoch: int, provenance: dict) -> dict:
    """A checkpoint that loads with `torch.load(weights_only=True)` and says what made it."""
    return {
        "model": {k: v.detach().cpu() for k, v in state.items()},
        "model_name": cfg.model,
        "config": dataclasses.asdict(cfg),
        "arm": arm.name,
        "seed": seed,
        "epoch": epoch,
        **provenance,
    }


def final_metrics(result: Result) -> dict:
    last = result.history[-1]
    best = max(result.history, key=lambda r: r["test_acc"])
    return {
        "train_acc": last["train_acc"],  # running, over the augmented batches of the last epoch
        "train_loss": last["train_loss"],
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "gap": last["train_acc"] - last["test_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "train_seconds": result.seconds,
    }


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(history)


def summarize(per_run: dict[tuple[str, int], dict], params: Params) -> dict:
    """Per-arm mean and std over seeds: the numbers `dvc exp show` lists."""
    out = {}
    for arm in params.arms:
        rows = [per_run[(arm.name, s)] for s in params.seeds]
        entry = {"n_seeds": len(rows)}
        for key in ("test_acc", "train_acc", "gap", "best_test_acc"):
            vals = [r[key] for r in rows]
            entry[key] = statistics.fmean(vals)
            entry[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[arm.name] = entry
    return {"study": params.study, "arms": out}


def _run_tags(arm: Arm, seed: int, provenance: dict, fp: str) -> dict:
    return {"arm": arm.name, "seed": seed, **{f"axis.{k}": v for k, v in arm.axes.items()},
            "git_commit": provenance["code_version"], "dvc_experiment": provenance["dvc_experiment"],
            "data_sha256": provenance["data_sha256"], "fingerprint": fp}


def _log_files(tracker, run_id: str, folder: Path, checkpoints: bool) -> None:
    for name in ("model.pt", "best.pt", "history.csv", "metrics.json", "diagnostics.json"):
        if (folder / name).exists() and (checkpoints or not name.endswith(".pt")):
            tracker.log_artifact(run_id, folder / name, "checkpoints" if name.endswith(".pt") else None)


def restore_one(arm: Arm, seed: int, done: Path, out: Path, *, tracker, parent, provenance, fp) -> tuple[dict, str | None]:
    """A finished arm x seed with this fingerprint exists: copy it, do not train it again."""
    ArmStore.restore(done, out)
    metrics = json.loads((done / "metrics.json").read_text())
    run_id = None
    if tracker is not None:
        origin = json.loads((done / "run.json").read_text()).get("mlflow_run_id")
        run_id = tracker.start(f"{arm.name} seed={seed}", parent=parent,
                               tags={**_run_tags(arm, seed, provenance, fp), "restored_from": origin})
        tracker.log_params(run_id, {**dataclasses.asdict(arm.train), "seed": seed, "arm": arm.name,
                                    **provenance["data_params"]})
        with open(done / "history.csv") as f:
            for row in csv.DictReader(f):
                tracker.log_metrics(run_id, {k: float(v) for k, v in row.items() if k != "epoch"},
                                    step=int(row["epoch"]))
        tracker.log_metrics(run_id, {f"final_{k}": v for k, v in metrics.items()})
        _log_files(tracker, run_id, done, checkpoints=False)  # the checkpoints stay with the origin run
        tracker.end(run_id)
    return metrics, run_id


def train_one(arm: Arm, seed: int, train: Tensors, test: Tensors, out: Path, *, store: ArmStore, fp: str,
              tracker, parent: str | None, provenance: dict, progress: bool) -> tuple[dict, str | None]:
    """Train one arm x seed (resuming its saved state if a killed run left one) into the
    store, then copy it to `out`: (final metrics, MLflow run id)."""
    cfg = arm.train
    device = train.x.device
    state = store.load_state(fp)
    if state is not None and state.get("device") != device.type:
        print(f"{arm.name} seed={seed}: the saved state was trained on {state.get('device')}, not "
              f"{device.type}; training from the start", file=sys.stderr, flush=True)
        state = None
    run_id = state.get("mlflow_run_id") if state is not None else None
    if tracker is not None:
        if run_id is not None and tracker.resume(run_id):
            print(f"{arm.name} seed={seed}: resuming after epoch {state['epoch']}", flush=True)
        else:
            run_id = tracker.start(f"{arm.name} seed={seed}", parent=parent,
                                   tags=_run_tags(arm, seed, provenance, fp))
            tracker.log_params(run_id, {**dataclasses.asdict(cfg), "seed": seed, "arm": arm.name,
                                        **provenance["data_params"]})
    elif state is not None:
        print(f"{arm.name} seed={seed}: resuming after epoch {state['epoch']}", flush=True)
    seed_everything(seed, cfg.deterministic)
    model = models.create_model(cfg.model).to(device)

    def on_epoch(epoch: int, row: dict, _model) -> None:
        print(f"{arm.name} seed={seed} epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
              f"acc {row['train_acc']:.4f}, test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}, "
              f"{row['images_per_second']:.0f} img/s", flush=True)
        if tracker is not None:
            tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)

    try:
        with StateWriter(store, fp) as writer:  # the last write lands before the state is dropped
            result = fit(model, train, test, cfg, seed, progress=progress, on_epoch=on_epoch,
                         on_state=lambda st: writer.save({**st, "mlflow_run_id": run_id,
                                                          "device": device.type}),
                         resume=state, desc=f"{arm.name} seed={seed}")
        metrics = final_metrics(result)
        with store.finish(fp) as tmp:
            tmp.mkdir()
            torch.save(checkpoint(model.state_dict(), cfg, arm, seed, cfg.epochs, provenance),
                       tmp / "model.pt")
            if cfg.keep_best and result.best_state is not None:
                torch.save(checkpoint(result.best_state, cfg, arm, seed, result.best_epoch, provenance),
                           tmp / "best.pt")
            write_history(tmp / "history.csv", result.history)
            (tmp / "diagnostics.json").write_text(json.dumps(result.diagnostics) + "\n")
            (tmp / "run.json").write_text(json.dumps({"mlflow_run_id": run_id, "fingerprint": fp}) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            if tracker is not None:
                tracker.log_metrics(run_id, {f"final_{k}": v for k, v in metrics.items()})
                _log_files(tracker, run_id, tmp, checkpoints=True)
        store.drop_state(fp)
        ArmStore.restore(store.done(fp), out)
    except BaseException as exc:
        if tracker is not None:
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
            tracker.end(run_id, "KILLED" if killed else "FAILED")
        raise
    if tracker is not None:
        tracker.end(run_id)
    return metrics, run_id


def write_curves(path: Path, params: Params, runs: Path) -> None:
    """Every arm x seed's history in one long CSV, a `run` column naming the curve
    (drawn one colour per run by the `curves_by_run` template of `dvc plots`)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("run", "arm", "seed") + HISTORY_FIELDS)
        w.writeheader()
        for arm, seed in params.runs():
            with open(run_dir(runs, arm, seed) / "history.csv") as h:
                for row in csv.DictReader(h):
                    w.writerow({"run": f"{arm.name} seed={seed}", "arm": arm.name, "seed": seed, **row})


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Context:
    """What every arm x seed job of one train stage shares (one per worker process)."""

    train: Tensors
    test: Tensors
    store: ArmStore
    provenance: dict
    tracker: object | None
    parent: str | None
    progress: bool
    retrain: bool


@dataclass(frozen=True)
class Job:
    arm: Arm
    seed: int
    out: Path
    fp: str


def run_job(job: Job, ctx: Context) -> tuple[str, int, dict, str | None]:
    common = dict(tracker=ctx.tracker, parent=ctx.parent, provenance=ctx.provenance, fp=job.fp)
    with ctx.store.lock(job.fp):  # a parallel experiment training the same arm finishes it first
        done = ctx.store.done(job.fp)
        if done is not None and not ctx.retrain:
            m, run_id = restore_one(job.arm, job.seed, done, job.out, **common)
            print(f"{job.arm.name} seed={job.seed}: restored from the arm cache ({job.fp[:12]})", flush=True)
        else:
            m, run_id = train_one(job.arm, job.seed, ctx.train, ctx.test, job.out, store=ctx.store,
                                  progress=ctx.progress, **common)
    print(f"{job.arm.name} seed={job.seed}: test acc {m['test_acc']:.4f}, train acc {m['train_acc']:.4f}, "
          f"gap {m['gap']:+.4f} ({m['train_seconds']:.1f} s)", flush=True)
    return job.arm.name, job.seed, m, run_id


def workers_for(parallel: int | str, n_jobs: int, device: torch.device) -> int:
    """How many arm x seed jobs train at once. auto: one on the CPU (it has no idle
    capacity to share); on a GPU, enough to fill it with small models: one per
    6 GiB of GPU memory and per two CPU cores, at most 8."""
    if parallel != "auto":
        return max(1, min(int(parallel), n_jobs))
    if device.type != "cuda":
        return 1
    mem_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    return max(1, min(n_jobs, 8, int(mem_gib // 6), (os.cpu_count() or 2) // 2))


_CTX: Context | None = None  # the worker process's context, set once by _init_worker


def _init_worker(params_path: str, data: str, device: str, provenance: dict, parent: str | None,
                 mlflow: bool, retrain: bool, threads: int) -> None:
    global _CTX
    signal.signal(signal.SIGTERM, _sigterm)
    dev = torch.device(device)
    if dev.type == "cuda":
        # the workers share the cores for their host-side work. Not on the CPU: there
        # the thread count changes the numerics, and parallel must not change results.
        torch.set_num_threads(threads)
    params = load_params(params_path)
    train, test = load_tensors(Path(data), params, dev)
    tracker = None
    if mlflow:
        from pipeline.tracking import Tracker

        tracker = Tracker(params.study)
    _CTX = Context(train, test, ArmStore(repo_root()), provenance, tracker, parent, False, retrain)


def _run_in_worker(job: Job):
    return run_job(job, _CTX)


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    manifest = datamod.load_manifest(args.data)
    device = resolve_device(params.arms[0].train.device)
    provenance = {
        "code_version": code_version(),
        "dvc_experiment": dvc_experiment(),
        "data_sha256": manifest["data_sha256"],
        "data_params": {f"data.{k}": v for k, v in dataclasses.asdict(params.data).items()},
    }
    code = code_digest(Path(__file__).resolve().parents[1])  # the code that runs, wherever the cwd is
    data_id = {"data_sha256": manifest["data_sha256"], "train_limit": params.data.train_limit,
               "test_limit": params.data.test_limit, "subset_seed": params.data.subset_seed}
    runs = Path(args.runs)
    jobs = [Job(arm, seed, run_dir(runs, arm, seed), fingerprint(arm.train, seed, data_id, code))
            for arm, seed in params.runs()]
    workers = workers_for(params.parallel, len(jobs), device)
    print(f"study {params.study}: {len(params.arms)} arm(s) x {len(params.seeds)} seed(s) on {device}, "
          f"{workers} at a time", flush=True)

    signal.signal(signal.SIGTERM, _sigterm)
    tracker = parent = None
    if not args.no_mlflow:
        from pipeline.tracking import Tracker

        tracker = Tracker(params.study)  # creates the store once, before any parallel writer
        parent = tracker.start(f"{params.study} {provenance['dvc_experiment']}", tags={
            "git_commit": provenance["code_version"], "dvc_experiment": provenance["dvc_experiment"],
            "data_sha256": provenance["data_sha256"], "preset": params.preset,
            "arms": ", ".join(a.name for a in params.arms), "seeds": list(params.seeds)})
        tracker.log_params(parent, {"preset": params.preset, "seeds": list(params.seeds),
                                    **provenance["data_params"]})

    per_run, run_ids = {}, {}
    try:
        if workers == 1:
            train, test = load_tensors(Path(args.data), params, device)
            print(f"{len(train)} train / {len(test)} test images", flush=True)
            ctx = Context(train, test, ArmStore(repo_root()), provenance, tracker, parent,
                          not args.no_progress and sys.stderr.isatty(), args.retrain)
            results = (run_job(job, ctx) for job in jobs)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                initargs=(args.params, args.data, str(device), provenance, parent,
                          not args.no_mlflow, args.retrain, max(1, torch.get_num_threads() // workers)))
            results = pool.map(_run_in_worker, jobs)
        for name, seed, m, run_id in results:
            per_run[(name, seed)] = m
            run_ids[f"{name}/seed={seed}"] = run_id
        if workers > 1:
            pool.shutdown()
    except BaseException as exc:
        if tracker is not None:
            tracker.end(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise

    summary = summarize(per_run, params)
    write_json(args.metrics, summary)
    write_curves(Path(args.curves), params, runs)
    if tracker is not None:
        write_json(runs / "mlflow.json", {"tracking_uri": tracker.uri, "experiment_id": tracker.experiment_id,
                                          "parent_run_id": parent, "runs": run_ids})
        tracker.log_artifact(parent, args.metrics)
        tracker.end(parent)
    for name, entry in summary["arms"].items():
        print(f"{name}: test acc {entry['test_acc']:.4f} ± {entry['test_acc_std']:.4f} (std, n={entry['n_seeds']} seeds)")


if __name__ == "__main__":
    main()
