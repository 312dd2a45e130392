"""Benchmark: `dvc repro` end to end, split by stage, and the pipeline's own overhead.

In a fresh clone of this repository (so nothing is cached, the arm cache
included): every stage of dvc.yaml one after the other, timed; beside them the
time spent in training loops and in evaluation forward passes, so what the
pipeline itself costs (start-up, DVC, tracking, statistics, report) is visible.
Then `dvc exp run -S aug=none` (or --exp), which has nothing to train: all of
it is overhead. With --profile, the imports each stage pays are listed. Last,
the disk each store takes once the tracking journal is sent (a file hard-linked
into several stores is counted once, where it is listed first), and how many
distinct files hold the checkpoints.

    python bench/pipeline_stages.py -S data.url=path/to/cifar10.tar.gz -S data.sha256=SHA256 \\
        -S data.train_limit=2000 -S epochs=2
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


def _env() -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "benchmark")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "benchmark@example.invalid")
    return env


def time_stages(sets: list[str], clone: Path, repo: Path = REPO) -> dict[str, float]:
    """`dvc repro` stage by stage in a fresh clone of `repo` at `clone`, with
    `sets` (KEY=VALUE) applied to its params.yaml; prints and returns the timings."""
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for item in sets:
        key, _, value = item.partition("=")
        set_key(params, key, value)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "benchmark params", "--allow-empty"], cwd=clone, check=True, env=_env(),
                   capture_output=True)

    times, plan, forward = {}, "?", 0.0
    for stage in STAGES:
        t0 = time.perf_counter()
        out = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=clone, env=_env(),
                             capture_output=True, text=True)
        times[stage] = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"stage {stage} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        plan = next((ln for ln in out.stdout.splitlines() if ln.startswith("study ")), plan)
        m = re.search(r"^evaluated \d+ of \d+ checkpoints \(([\d,]+) images, ([\d.]+) s\)", out.stdout, re.M)
        if m:
            forward = float(m.group(2))
    # every job's wall time, start to finish: its training steps and its per-epoch test evaluations
    loops = sum(r["wall_seconds"] for r in json.loads((clone / "runs" / "study.json").read_text())["runs"])
    total = sum(times.values())
    without = total - times["download"]
    # jobs trained at once overlap: their loops then count once, as the train stage's wall time
    loops_wall = min(loops, times["train"])
    print(f"dvc repro in a fresh clone, {', '.join(sets) or 'params.yaml as committed'}")
    print(f"  train stage: {plan}")
    for stage in STAGES:
        print(f"  {stage:<9}{times[stage]:8.1f} s")
    print(f"  {'total':<9}{total:8.1f} s ({without:.1f} s without download)")
    print(f"  training loops (each job start to finish) {loops:.1f} s summed over arm x seed jobs (several run "
          f"at once with parallel > 1); train stage {times['train']:.1f} s wall")
    print(f"  evaluation forward passes {forward:.1f} s")
    print(f"  overhead (without download, training loops and forward passes): "
          f"{without - loops_wall - forward:.1f} s", flush=True)
    return {**times, "total": total, "training_loops": loops, "forward": forward,
            "overhead": without - loops_wall - forward}


def time_experiment(clone: Path, override: str) -> float:
    """`dvc exp run -S <override>` right after the repro: restored arms, cached evaluations."""
    t0 = time.perf_counter()
    out = subprocess.run(["dvc", "exp", "run", "-S", override], cwd=clone, env=_env(), capture_output=True,
                         text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"dvc exp run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    restored = out.stdout.count("restored from the arm cache")
    trained = len(re.findall(r" epoch \d+/\d+:", out.stdout))
    print(f"dvc exp run -S {override} right after: {seconds:.1f} s ({restored} run(s) restored, "
          f"{trained} epoch(s) trained)", flush=True)
    return seconds


STORES = ("runs", ".arm-cache", ".dvc/cache", "mlartifacts", "mlflow.db", ".cache", "evaluation", "reports")


def disk_use(clone: Path) -> dict[str, int]:
    """Kilobytes per store after the journal is sent to MLflow (`du` counts a hard-linked
    file once, in the first store that lists it), and the checkpoints' distinct files."""
    subprocess.run([sys.executable, "-m", "pipeline.tracking", "flush"], cwd=clone, env=_env(), check=True,
                   capture_output=True)
    present = [s for s in STORES if (clone / s).exists()]
    out = subprocess.run(["du", "-sk", *present], cwd=clone, capture_output=True, text=True, check=True).stdout
    kb = {name: int(size) for size, name in (ln.split("\t", 1) for ln in out.splitlines())}
    files = [p for p in clone.rglob("*") if p.is_file() and p.suffix in (".pt", ".pth")
             and "data" not in p.relative_to(clone).parts[:1]]
    inodes = {(p.stat().st_dev, p.stat().st_ino) for p in files}
    print("disk use after the journal is sent (kB; a hard-linked file counts once): "
          + ", ".join(f"{k} {v:,}" for k, v in kb.items()) + f"; total {sum(kb.values()):,}")
    print(f"  checkpoint files (*.pt, *.pth): {len(files)} names, {len(inodes)} distinct files", flush=True)
    return kb


def profile_imports(clone: Path) -> None:
    """What each stage's process spends on imports (python -X importtime), largest first."""
    for stage in ("train", "evaluate", "report"):
        cmd = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"][stage]["cmd"].split()
        out = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], cwd=clone, env=_env(),
                             capture_output=True, text=True)
        rows = [ln.split("|") for ln in out.stderr.splitlines() if ln.startswith("import time:") and "|" in ln]
        top = sorted(((int(r[1]), r[2].rstrip()) for r in rows if r[1].strip().isdigit()), reverse=True)
        roots = [(us, name) for us, name in top if not name.startswith("   ")][:5]
        print(f"  {stage}: " + ", ".join(f"{name.strip()} {us / 1e6:.2f} s" for us, name in roots))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, as with `dvc exp run -S`")
    ap.add_argument("--exp", default="aug=none", help="the one-arm experiment timed after the repro")
    ap.add_argument("--profile", action="store_true", help="list the imports each stage pays")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    ap.add_argument("--repo", type=Path, default=REPO, help="the repository to clone (default: this one)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        time_stages(args.set, tmp / "repo", args.repo)
        time_experiment(tmp / "repo", args.exp)
        disk_use(tmp / "repo")
        if args.profile:
            print("imports per stage:")
            profile_imports(tmp / "repo")
    finally:
        if args.keep:
            print(f"clone kept at {tmp / 'repo'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
