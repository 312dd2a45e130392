"""Stage `train`: every arm of the study's grid, for every seed.

Reads params.yaml once (pipeline.core.config) and the prepared arrays (stage
`untar`); writes, per arm x seed, `runs/<arm>/seed=<k>/` with the last (and
best) checkpoint, the per-epoch history and the final metrics; `runs/study.json`
(what ran, for the later stages); a per-arm summary for `dvc metrics`/`dvc exp
show`; and learning curves for `dvc plots`. As it ends, it publishes the study to
MLflow (pipeline.tracking.publish): a child run per arm x seed under the study's
parent run.

plan -> run -> observers: the plan (pipeline.train.plan) says which jobs are
restored, resumed or trained; the driver (pipeline.train.driver) runs them on an
engine (in this process, or on Ray: pipeline.train.engine) and alone writes
their files; the progress lines and seeds on demand are observers
(pipeline.train.observers, pipeline.train.progress).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import signal
import statistics
import sys
import threading
from pathlib import Path

from pipeline.core import dataset
from pipeline.core.config import LARGE_RUNS, Params, fit_to_data, load_params, too_large
from pipeline.core.contracts import HISTORY_FIELDS, RunMetrics, read_history, run_dir
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, write_json
from pipeline.core.jobs import Data
from pipeline.core.provenance import Provenance, code_version, dvc_experiment, library_versions, public, repo_root
from pipeline.core.study import StudyFacts, StudyRecord, StudyRun
from pipeline.tracking.publish import publish

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


def load_data(folder: Path, params: Params) -> tuple[Data, dataset.DataManifest, dict]:
    """The study's (subset) splits, the manifest of the prepared data, and the data's
    identity in a fingerprint: the arrays' checksum and the subset's indices."""
    manifest = dataset.load_manifest(folder)
    d = params.data
    (tx, ty, ti), (hx, hy, hi) = dataset.load_training(folder, d.train_limit, d.val_split, d.subset_seed)
    if d.val_split and (not len(hi) or not len(ti)):
        raise PipelineError(f"data.val_split = {d.val_split:g} of {len(ti) + len(hi)} training images holds out "
                            f"{len(hi)} and trains on {len(ti)}; give a fraction that leaves both, or 0")
    vx, vy, vi = dataset.load_subset(folder, "test", d.test_limit, d.subset_seed)
    held = b"|" + hi.tobytes() if len(hi) else b""  # without a split, the digest of before splits existed
    subset = hashlib.sha256(ti.tobytes() + b"|" + vi.tobytes() + held).hexdigest()
    data_id = {"data_sha256": manifest.data_sha256, "subset": subset}
    val = (hx, hy) if len(hi) else (None, None)
    return Data(f"{manifest.data_sha256}:{subset}", tx, ty, vx, vy, *val), manifest, data_id


def summarize(per_run: dict[tuple[str, int], RunMetrics], arms: list[str], seeds: list[int], study: str) -> dict:
    """Per-arm mean and std over seeds: the numbers `dvc exp show` lists, named by what
    each epoch was evaluated on (test_acc, or val_acc with a validation split)."""
    out = {}
    for arm in arms:
        rows = [per_run[(arm, s)].named() for s in seeds]
        split = per_run[(arm, seeds[0])].held_out
        entry = {"n_seeds": len(rows)}
        for name in (f"{split}_acc", "train_acc", "gap", f"best_{split}_acc"):
            vals = [r[name] for r in rows]
            entry[name] = statistics.fmean(vals)
            entry[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
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


def devices(params: Params):
    """(device, what its jobs train on: pipeline.train.engine.Devices), asking torch
    only where CUDA may be present, and a cluster when the study has one."""
    from pipeline.train.engine import Devices, cluster_address, connect, local_devices

    address = cluster_address(params.run.cluster)
    if address:  # the cluster decides the device: cuda if it has GPUs (unless params say cpu)
        found = connect(address)
        if params.run.device == "cpu" and found.type == "cuda":  # the CPUs of a GPU cluster: bf16 unknown
            return "cpu", Devices("cpu", False)
        return found.type, found
    return local_devices(params.run.device)


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
    ap.add_argument("--large", action="store_true",
                    help=f"train a study of more than {LARGE_RUNS:,} runs (also: CIFAR_ABLATE_LARGE=1)")
    args = ap.parse_args(argv)

    params = load_params(args.params)  # every arm is validated before anything trains
    counts = dataset.load_manifest(args.data).splits
    params = fit_to_data(params, counts["train"].count, counts["test"].count)
    large = too_large(params, counts["train"].count)
    if large and not (args.large or os.environ.get("CIFAR_ABLATE_LARGE") == "1"):
        raise PipelineError(large)
    from pipeline.core.analysis import check_study

    strays = check_study(repo_root(), params)  # said first: this run is not what the study's plan registered
    if strays:
        print(strays, flush=True)
    # cuBLAS reads this when CUDA starts; deterministic arms need it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from pipeline.core import record
    from pipeline.train.armstore import LEGACY, ArmStore, store_path
    from pipeline.train.driver import Driver
    from pipeline.train.engine import cluster_address, make_engine
    from pipeline.train.observers import Observers, Publishing, SeedsOnDemand
    from pipeline.train.plan import Identity, jobs_for, plan
    from pipeline.train.progress import Progress

    importing = import_torch_beside() if cluster_address(params.run.cluster) else None
    device, found = devices(params)
    device_type = device.split(":")[0]
    # deterministic kernels are set by each job (pipeline.arm.job), where they run
    data, manifest, data_id = load_data(Path(args.data), params)
    root = repo_root()
    store = ArmStore(store_path(root))
    moved = store.take_over(root)
    if moved:
        print(f"took over {moved} finished arm(s) from {LEGACY}/ into the arm store {store.root}", flush=True)
    store.sweep()
    committed = record.committed(root)
    identity = Identity(data_id=data_id, versions=library_versions(), device_type=device_type)
    provenance = Provenance(
        code_version=code_version(), dvc_experiment=dvc_experiment(), data_name=manifest.name,
        data_sha256=manifest.data_sha256, archive_sha256=manifest.source.get("sha256", manifest.data_sha256),
        data_source=params.data.url, data_params={f"data.{k}": v for k, v in params.data.model_dump().items()},
        n_train=len(data.train_y), n_test=len(data.test_y), examples=data.test_x[:4].copy())
    runs = Path(args.runs)

    def study_jobs(seeds):
        return jobs_for(params, seeds, identity, device, found.bf16)

    jobs = study_jobs(params.seeds)
    print(precision_line(params, jobs, found), flush=True)
    first = plan(jobs, store.done_fps(), store.saved_fps(), args.retrain, committed)

    arm_names = [a.name for a in params.arms]
    key, facts = study_key(params.study, jobs), _facts(params, provenance)

    def study_record(done: list[StudyRun], seeds_run: list[int], reason: str) -> StudyRecord:
        return StudyRecord(study=params.study, arms=arm_names, seeds=seeds_run, seeds_reason=reason, study_key=key,
                           facts=facts, published=not args.no_mlflow, device=device,
                           precision={j.arm: j.cfg.precision for j in jobs}, runs=done)

    from pipeline.tracking.publish import enabled

    publishing = Publishing(lambda o: study_record([_study_run(o)], list(params.seeds), "as the study trains"),
                            runs) if enabled() and not args.no_mlflow else None
    # a signal ends the study with one line, the jobs cancelled, their saved states kept and
    # its MLflow parent run ended as KILLED
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _SIGNALLED.clear()
    _set_signals(_on_signal)
    engine = driver = progress = None
    seeds = SeedsOnDemand(params, study_jobs)
    try:
        if first.to_train and importing is None:
            importing = import_torch_beside()
        progress = Progress(params, device, len(data.train_y), len(data.test_y),
                            enabled=not args.no_progress and sys.stderr.isatty())
        engine = make_engine(data, list(first.to_train), params.run.parallel, params.run.cluster, device_type,
                             progress.step, sizing=jobs)
        progress.engine = engine
        _set_signals(_on_signal)  # again: Ray's start sets a SIGTERM handler of its own
        driver = Driver(store, runs, engine, Observers(progress, publishing, seeds), provenance, identity,
                        params.study, args.retrain, committed)
        driver.run(jobs)
    except BaseException as exc:
        _set_signals(_note_signal)  # a second Ctrl-C must not cut the clean-up short
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
        stopped = driver.abort(status) if driver is not None else []
        if publishing is not None:
            publishing.close(study_record([], list(params.seeds), "interrupted"), status)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        if progress is not None:
            progress.close()
        if engine is not None:
            engine.close()
        # one line, no traceback: what is kept and how to go on
        signum = _SIGNALLED[0] if _SIGNALLED else signal.SIGINT
        done, planned = (len(driver.outcomes), driver.planned) if driver is not None else (0, len(jobs))
        print(f"interrupted by {signal.Signals(signum).name}: {done} of {planned} runs finished"
              + "".join(f"; {s}" for s in stopped)
              + "; run the same command again to continue", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        if progress is not None:
            progress.close()
        if engine is not None:
            engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    no_weights = [o.spec.label for o in driver.outcomes.values() if not o.weights]
    if no_weights:
        print(f"{len(no_weights)} run(s) have no weights on this machine, only their committed records "
              f"({', '.join(no_weights[:6])}{', ...' if len(no_weights) > 6 else ''}): the evaluation and the report "
              f"are whole; MLflow gets their metrics but no logged model, and report.register_model cannot pick "
              f"them", flush=True)
    metrics = {k: o.metrics for k, o in driver.outcomes.items()}
    summary = summarize(metrics, arm_names, seeds.seeds, params.study)
    write_json(args.metrics, summary)
    write_curves(Path(args.curves), runs, arm_names, seeds.seeds)
    study = study_record([_study_run(driver.outcomes[(a, s)]) for a in arm_names for s in seeds.seeds], seeds.seeds,
                         seeds.reason)
    with atomic_path(runs / "study.json") as tmp:
        tmp.write_text(study.model_dump_json(indent=1) + "\n")
    for old in runs.iterdir():  # runs/ shows this study: an earlier study's arms go (the store keeps them)
        if old.is_dir() and old.name not in arm_names and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    if publishing is not None:
        publishing.close()
    publish(study, runs)
    for name, entry in summary["arms"].items():
        split = "val" if "val_acc" in entry else "test"
        print(f"{name}: {split} accuracy {100 * entry[f'{split}_acc']:.2f}% ± {100 * entry[f'{split}_acc_std']:.2f} "
              f"(std over {entry['n_seeds']} seeds)")


def _study_run(o) -> StudyRun:
    meta = o.record.meta
    return StudyRun(arm=o.spec.arm, seed=o.spec.seed, restored=o.restored, weights=o.weights, fingerprint=o.spec.fp,
                    wall_seconds=o.wall_seconds, trained_at=meta.trained_at, code_version=meta.code_version,
                    machine=meta.machine)


def study_key(study: str, jobs) -> str:
    """The study's parent run in MLflow: its name and its first jobs' fingerprints (seeds
    on demand add runs to the same study)."""
    return hashlib.sha256(json.dumps([study, sorted(j.fp for j in jobs)]).encode()).hexdigest()[:32]


def _facts(params: Params, p: Provenance) -> StudyFacts:
    return StudyFacts(preset=params.preset, git_commit=p.code_version, dvc_experiment=p.dvc_experiment,
                      data_name=p.data_name, data_source=public(p.data_source), data_sha256=p.data_sha256,
                      archive_sha256=p.archive_sha256, n_train=p.n_train, n_test=p.n_test,
                      data_params={k: public(str(v)) if isinstance(v, str) else v for k, v in p.data_params.items()})


def precision_line(params: Params, jobs, found) -> str:
    """What each arm trains in, said first: `auto` is resolved here, once per study."""
    from pipeline.core.hardware import cpu_name, native_bf16

    chosen = {j.arm: j.cfg.precision for j in jobs}
    given = {a.name: a.train.precision for a in params.arms}
    text = ", ".join(dict.fromkeys(chosen.values())) if len(set(chosen.values())) == 1 else \
        ", ".join(f"{a} {p}" for a, p in chosen.items())
    why = ""
    if "auto" in given.values():
        if found.type == "cuda":
            why = f" (auto: the GPU {'computes' if found.bf16 else 'lacks'} bf16 natively)"
        elif found.bf16:
            why = f" (auto: this CPU, {cpu_name()}, computes bf16 natively: {native_bf16() or 'every node'})"
        else:
            why = f" (auto: this CPU, {cpu_name()}, has no native bf16; -S precision=bf16 would emulate it)"
    return f"precision: {text}{why}"


if __name__ == "__main__":
    main()
