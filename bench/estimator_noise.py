"""How much of the seed spread is epoch-to-epoch jitter: for a trained study's runs
(runs/<arm>/seed=<k>/history.csv, each epoch evaluated on the test set), the SD over
seeds of each run's test accuracy at its last epoch and of its mean over the last k
epochs (report.mean_of_last), per arm, and each run's epoch-to-epoch jitter over its
last 10 epochs. Descriptive: it picks no setting for a study already run.

    python bench/estimator_noise.py [runs]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.core.contracts import read_history  # noqa: E402


def main(runs: Path, ks=(1, 3, 5, 10)) -> None:
    arms = sorted(p.name for p in runs.iterdir() if p.is_dir())
    print(f"{'arm':<28}{'seeds':>6}" + "".join(f"{f'SD last {k}':>12}" for k in ks) + f"{'jitter':>9}")
    for arm in arms:
        hist = [read_history(f / "history.csv") for f in sorted((runs / arm).glob("seed=*"))
                if (f / "history.csv").exists()]
        hist = [h for h in hist if all(r.test_acc is not None for r in h)]
        if len(hist) < 2:
            continue
        acc = [np.array([r.test_acc for r in h]) * 100 for h in hist]
        sds = [np.std([a[-k:].mean() for a in acc], ddof=1) if min(map(len, acc)) >= k else np.nan for k in ks]
        jitter = np.mean([np.std(np.diff(a[-10:]), ddof=1) / np.sqrt(2) for a in acc])
        print(f"{arm:<28}{len(acc):>6}" + "".join(f"{s:>12.2f}" for s in sds) + f"{jitter:>9.2f}")
    print("points of test accuracy; jitter: the SD of one epoch's accuracy around its neighbours' "
          "(epoch-to-epoch differences / sqrt 2), mean over runs")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))
