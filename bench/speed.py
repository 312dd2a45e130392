"""Benchmark: how fast every recipe trains, and what the pipeline adds, in one run.

1. `dvc repro` of the study in params.yaml (plus any -S overrides), stage by
   stage, in a fresh clone: the end-to-end time and the pipeline's own overhead
   (DVC, MLflow, evaluation, report) beside the time spent in training loops.
2. Every reference recipe trained by the classic loop (torchvision Dataset +
   PIL transforms + DataLoader, as the recipes' notebooks did) and by the
   project's trainer, on the data the first part prepared: images/s, seconds
   per epoch and their ratio (and mean test accuracy over --seeds).

Small, on a CPU:
    python bench/speed.py -S data.url=path/to/cifar10.tar.gz -S data.sha256=SHA256 \\
        -S data.train_limit=2000 -S epochs=2 --images 2000 --epochs 2 --no-compile
On a GPU, the default study as committed and full-size loops:
    python bench/speed.py -S data.url=... -S data.sha256=... --images 50000 --epochs 3
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_loops  # noqa: E402
import pipeline_stages  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param of the dvc repro run, as with `dvc exp run -S`")
    ap.add_argument("--repo", type=Path, default=pipeline_stages.REPO,
                    help="the repository whose committed state dvc repro runs (default: this one)")
    ap.add_argument("--data", help="untar output for the loop comparison (default: the one dvc repro made)")
    ap.add_argument("--exp", default="aug=none", help="the one-arm experiment timed after the repro")
    compare_loops.add_arguments(ap)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    try:
        print("== dvc repro, by stage ==", flush=True)
        clone = tmp / "repo"
        stages = pipeline_stages.time_stages(args.set, clone, args.repo)
        exp_seconds = pipeline_stages.time_experiment(clone, args.exp)
        print("\n== classic loop vs trainer ==", flush=True)
        rows = compare_loops.compare(args, args.data or clone / "data" / "prepared")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n== summary ==")
    print(f"dvc repro without download: {stages['total'] - stages['download']:.1f} s "
          f"(training loops {stages['training_loops']:.1f} s summed over jobs, evaluation forward passes "
          f"{stages['forward']:.1f} s, overhead {stages['overhead']:.1f} s)")
    print(f"dvc exp run -S {args.exp} with nothing to train: {exp_seconds:.1f} s")
    for r in rows:
        print(f"{r['preset']:<14}trainer {r['speedup']:.2f}x the classic loop's images/s")


if __name__ == "__main__":
    main()
