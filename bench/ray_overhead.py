"""Benchmark: what running the arms on Ray costs, against running them in this process.

The same jobs (arm x seed, real training on a subset) go through the three
ways the train stage can run them:

  local       LocalEngine: one at a time in this process (the default on a CPU)
  ray x1      RayEngine on this machine, one job at a time
  ray x2      RayEngine on this machine, two jobs at a time
  head x1     RayEngine sent to a Ray head started once on this machine
              (`ray start --head`, as with RAY_ADDRESS): a study joins it
              instead of starting Ray (--head; its start is not counted)

and it prints the wall time of each, Ray's overhead per study (start, putting
the data into the object store, each worker's first job, which starts its
process and imports torch, and shutdown) and per job once the workers are
warm (ray x1 minus local, divided by the jobs: task start, the data reaching
the worker, the events coming back), and the bytes that cross between driver
and worker per job.

With --study, it also times what a user sees: the whole train stage command
(`python -m pipeline.train`, a fresh process, imports included) on a small
study, run in this process (the default on a CPU) and sent to a Ray head
started once on this machine, alternated --repeat times; the difference of the
medians is Ray's cost per study as the user pays it.

    python bench/ray_overhead.py                       # synthetic images
    python bench/ray_overhead.py --data data/prepared  # the prepared CIFAR-10
    python bench/ray_overhead.py --data data/prepared --study --repeat 5
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_STUDY_S, TARGET_JOB_S = 5.0, 0.5


def load(folder: str | None, n_train: int, n_test: int):
    from pipeline.core.jobs import Data

    if folder:
        from pipeline.core import dataset
        from pipeline.core.dataset import load_subset

        manifest = dataset.load_manifest(folder)
        tx, ty, _ = load_subset(folder, "train", n_train, 0)
        vx, vy, _ = load_subset(folder, "test", n_test, 0)
        return Data(f"{manifest.data_sha256}:{n_train}:{n_test}", tx, ty, vx, vy), manifest.name
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # noqa: E731  (NCHW, as prepared)
    labels = lambda n: np.arange(n, dtype=np.int64) % 10  # noqa: E731
    return Data(f"synthetic:{n_train}:{n_test}", images(n_train), labels(n_train), images(n_test),
                labels(n_test)), "synthetic images"


def jobs(n: int, epochs: int):
    import torch

    from pipeline.core.config import parse_params
    from pipeline.train.plan import Identity, jobs_for

    params = parse_params({"aug": ["none", "standard"], "seeds": list(range((n + 1) // 2)), "epochs": epochs})
    todo = jobs_for(params, params.seeds, Identity({"bench": True}, {}, "cpu"), "cpu", bf16=False)[:n]
    return [dataclasses.replace(j, threads=torch.get_num_threads()) for j in todo]


def drain(engine, todo, at_once: int) -> dict[str, int]:
    """Run every job, `at_once` at a time; the pickled bytes each job sent back."""
    from pipeline.core.jobs import Failed

    waiting, back = list(todo), {j.fp: 0 for j in todo}
    while waiting or engine.busy():
        while waiting and engine.busy() < at_once:
            engine.submit(waiting.pop(0), None)
        for spec, event in engine.events():
            if isinstance(event, Failed):
                raise event.error
            back[spec.fp] += len(pickle.dumps(event, protocol=5))
    return back


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a prepared data folder (data/prepared); synthetic images without it")
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--head", action="store_true",
                    help="also time a study sent to a Ray head started once on this machine")
    ap.add_argument("--study", action="store_true",
                    help="time the whole train stage command instead: in process against a Ray head (needs --data)")
    ap.add_argument("--repeat", type=int, default=5, help="--study: runs of each variant, alternated")
    args = ap.parse_args(argv)
    if args.study:
        if not args.data:
            ap.error("--study needs --data (a prepared data folder)")
        return whole_study(args)

    import torch

    from pipeline.train.engine import LocalEngine, RayEngine

    data, name = load(args.data, args.train_images, args.test_images)
    todo = jobs(args.jobs, args.epochs)
    print(f"{platform.node()}: {os.cpu_count()} CPU(s), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{name}, {len(data.train_y)} train / {len(data.test_y)} test images, {args.epochs} epoch(s), "
          f"{len(todo)} jobs (simple_cnn)", flush=True)

    # a warm-up job in this process (imports, first-call costs), so `local` is the fair baseline
    drain(LocalEngine(data), todo[:1], 1)
    t0 = time.perf_counter()
    local_back = drain(LocalEngine(data), todo, 1)
    local = time.perf_counter() - t0

    rows, per_job_back, stop = {}, 0, None
    variants = [("ray x1", None, 1), ("ray x2", None, 2)]
    if args.head:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.services import ray_client_env, start_ray_head

        address, token, stop = start_ray_head(os.cpu_count() or 1)
        os.environ.update(ray_client_env(token))
        variants.append(("head x1", address, 1))
    for label, address, at_once in variants:
        t0 = time.perf_counter()
        engine = RayEngine(data, address, todo, at_once, "cpu")
        t1 = time.perf_counter()
        # the first job on each worker also starts its process and imports torch: a once-per-study cost
        drain(engine, todo[:at_once], at_once)
        tw = time.perf_counter()
        back = drain(engine, todo, at_once)
        t2 = time.perf_counter()
        engine.close()
        t3 = time.perf_counter()
        rows[label] = {"start": engine.start_seconds, "put": engine.put_seconds, "setup": t1 - t0,
                         "warm": tw - t1, "jobs": t2 - tw, "shutdown": t3 - t2, "wall": t3 - t0}
        per_job_back = max(back.values())
    if stop is not None:
        stop()

    print(f"\n{'':<10}{'wall s':>9}{'jobs s':>9}{'start s':>9}{'put s':>8}{'warm s':>8}{'stop s':>8}")
    print(f"{'local':<10}{local:>9.2f}{local:>9.2f}{'':>9}{'':>8}{'':>8}{'':>8}")
    for k, r in rows.items():
        print(f"{k:<10}{r['wall']:>9.2f}{r['jobs']:>9.2f}{r['start']:>9.2f}{r['put']:>8.2f}"
              f"{r['warm']:>8.2f}{r['shutdown']:>8.2f}")
    print("(warm: the first job per worker, which starts the worker process and imports torch; jobs: "
          "every job again on the warm workers)")

    one = rows["ray x1"]

    def per_study(r: dict) -> tuple[float, float]:
        warm_extra = r["warm"] - local / len(todo)
        return r["setup"] + warm_extra + r["shutdown"], warm_extra

    study, warm_extra = per_study(one)
    per_job = (one["jobs"] - local) / len(todo)
    up = len(pickle.dumps(todo[0], protocol=5)) + len(pickle.dumps(None))
    print(f"\nRay overhead per study (start + put + worker warm-up + shutdown): {study:.2f} s "
          f"(target <= {TARGET_STUDY_S:g} s; of it ray.init {one['start']:.2f} s, warm-up {warm_extra:.2f} s)")
    if "head x1" in rows:
        head, head_warm = per_study(rows["head x1"])
        print(f"  with a head started once on this machine: {head:.2f} s per study (joining it "
              f"{rows['head x1']['start']:.2f} s, warm-up {head_warm:.2f} s, leaving {rows['head x1']['shutdown']:.2f} s)")
    print(f"Ray overhead per job on a warm worker ((ray x1 - local) / jobs): {per_job:+.3f} s "
          f"(target <= {TARGET_JOB_S:g} s)")
    print(f"2 jobs at once vs 1: {rows['ray x2']['jobs']:.2f} s vs {one['jobs']:.2f} s of jobs "
          f"({one['jobs'] / rows['ray x2']['jobs']:.2f}x) on {os.cpu_count()} CPU(s)")
    print(f"bytes per job: data {data.nbytes / 1e6:.1f} MB once per node (object store); to the worker "
          f"{up / 1e3:.1f} kB (spec, resume state); back {per_job_back / 1e6:.2f} MB (per-epoch states, "
          f"final weights, history; local run: {max(local_back.values()) / 1e6:.2f} MB)")


def whole_study(args) -> None:
    """The train stage command, timed end to end: in this process against a Ray head."""
    import statistics
    import subprocess
    import tempfile

    import yaml

    from tests.services import ray_client_env, start_ray_head

    repo = Path(__file__).resolve().parents[1]
    data = Path(args.data).resolve()
    n_seeds = max(1, args.jobs)
    base = {"seeds": list(range(n_seeds)), "aug": "none", "epochs": args.epochs,
            "data": {"train_limit": args.train_images, "test_limit": args.test_images}}
    address, token, stop = start_ray_head(os.cpu_count() or 1)
    variants = {"in process": ({**base, "parallel": 1}, {}),
                "Ray head": ({**base, "parallel": 1, "cluster": address}, ray_client_env(token))}
    print(f"{platform.node()}: {os.cpu_count()} CPU(s); the train stage command on {args.train_images} train / "
          f"{args.test_images} test images of {data}, {n_seeds} job(s) of {args.epochs} epoch(s) (simple_cnn, "
          f"one at a time), {args.repeat} runs of each variant alternated; Ray head at {address}", flush=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for i in range(args.repeat):
            for label, (params, extra) in variants.items():
                with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:  # nothing cached
                    (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
                    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
                    env.update(extra, PYTHONPATH=str(repo))
                    cmd = [sys.executable, "-m", "pipeline.train", "--params", "params.yaml", "--data", str(data),
                           "--runs", "runs", "--metrics", "train.json", "--curves", "curves.csv", "--no-mlflow",
                           "--no-progress"]
                    t0 = time.perf_counter()
                    out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
                    took = time.perf_counter() - t0
                    if out.returncode:
                        raise SystemExit(f"{label} failed:\n{out.stderr[-2000:]}")
                    if label == "Ray head" and address not in out.stdout + out.stderr:
                        raise SystemExit(f"{label}: the study did not go to the head:\n{(out.stdout + out.stderr)[-2000:]}")
                    times[label].append(took)
                    print(f"  run {i + 1} {label}: {took:.2f} s", flush=True)
    finally:
        stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'':<12}{'median s':>10}{'min s':>8}{'max s':>8}")
    for k, v in times.items():
        print(f"{k:<12}{med[k]:>10.2f}{min(v):>8.2f}{max(v):>8.2f}")
    diffs = [b - a for a, b in zip(times["in process"], times["Ray head"])]
    print(f"\nRay head minus in process, per study: median {med['Ray head'] - med['in process']:+.2f} s "
          f"(pairwise {min(diffs):+.2f} to {max(diffs):+.2f} s; target <= {TARGET_STUDY_S:g} s)")


if __name__ == "__main__":
    main()
