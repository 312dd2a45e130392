"""Benchmark: `dvc repro` end to end, split by stage.

Runs every stage of dvc.yaml one after the other in a fresh clone of this
repository (so nothing is cached, the arm cache included) and prints the wall
time of each, beside the time the train stage spent in its training loops, so
the pipeline's own overhead (DVC, MLflow, evaluation, report) is visible.

    python bench/pipeline_stages.py -S data.url=path/to/cifar10.tar.gz -S data.sha256=SHA256 \\
        -S data.train_limit=2000 -S epochs=2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "untar", "train", "evaluate", "report")


def set_key(params: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    for key in path:
        params = params.setdefault(key, {})
    params[last] = yaml.safe_load(value)


def time_stages(sets: list[str], clone: Path, repo: Path = REPO) -> dict[str, float]:
    """`dvc repro` stage by stage in a fresh clone of `repo` at `clone`, with
    `sets` (KEY=VALUE) applied to its params.yaml; prints and returns the timings."""
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for item in sets:
        key, _, value = item.partition("=")
        set_key(params, key, value)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)

    times, plan = {}, "?"
    for stage in STAGES:
        t0 = time.perf_counter()
        out = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=clone, env=env,
                             capture_output=True, text=True)
        times[stage] = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"stage {stage} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        plan = next((ln for ln in out.stdout.splitlines() if ln.startswith("study ")), plan)
    loops = sum(json.loads(p.read_text())["train_seconds"] for p in clone.glob("runs/*/seed=*/metrics.json"))
    total = sum(times.values())
    print(f"dvc repro in a fresh clone, {', '.join(sets) or 'params.yaml as committed'}")
    print(f"  train stage: {plan}")
    for stage in STAGES:
        print(f"  {stage:<9}{times[stage]:8.1f} s")
    print(f"  {'total':<9}{total:8.1f} s ({total - times['download']:.1f} s without download)")
    print(f"  training loops {loops:.1f} s summed over arm x seed jobs (several run at once with "
          f"parallel > 1); train stage {times['train']:.1f} s wall", flush=True)
    return {**times, "total": total, "training_loops": loops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, as with `dvc exp run -S`")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--repo", type=Path, default=REPO, help="the repository to clone (default: this one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        time_stages(args.set, tmp / "repo", args.repo)
    finally:
        if args.keep:
            print(f"clone kept at {tmp / 'repo'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
