"""The speed benchmark runs end to end and prints every figure it promises
(what the figures are is for its users to read, not for a test to time)."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, env, make_project

pytestmark = pytest.mark.slow


def test_speed_benchmark_prints_stages_and_loop_ratios(tmp_path):
    proj = make_project(tmp_path, seeds=[0], epochs=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "speed.py"), "--repo", str(proj),
         "--presets", "simple_cnn,tutorial_cnn", "--images", "60", "--epochs", "2", "--seeds", "2",
         "--no-compile", "--workers", "0"],
        cwd=tmp_path, env=env({"TMPDIR": str(scratch)}), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for stage in ("download", "untar", "train", "evaluate", "report"):
        assert re.search(rf"^  {stage}\s+\d+\.\d s$", text, re.M), (stage, text)
    assert re.search(r"^  train stage: study \S+: 2 arm\(s\) x 1 seed\(s\) x 1 epoch\(s\) on cpu, 1 at a time",
                     text, re.M), text
    assert re.search(r"dvc repro without download: \d+\.\d s \(training loops [\d.]+ s summed over jobs, "
                     r"evaluation forward passes [\d.]+ s, overhead [\d.]+ s\)", text), text
    assert re.search(r"^dvc exp run -S aug=none with nothing to train: \d+\.\d s$", text, re.M), text
    assert re.search(r"^dvc exp run -S aug=none right after: [\d.]+ s \(1 run\(s\) restored, 0 epoch\(s\) "
                     r"trained\)$", text, re.M), text
    table = r"\s+\d+\s+\d+\.\d\d\s+\d+\s+\d+\.\d\d\s+\d+\.\d\dx\s+[\d.]+%\s+[\d.]+%$"
    for preset in ("simple_cnn", "tutorial_cnn"):
        assert re.search(rf"^{preset}{table}", text, re.M), text
    per_seed = re.findall(r"^\s+per seed: classic [\d.]+, [\d.]+; trainer [\d.]+, [\d.]+; trainer - classic "
                          r"[-+][\d.]+ points \((95% CI [-+][\d.]+ to [-+][\d.]+|no interval: .+), n = 2 seeds each\)$",
                          text, re.M)
    assert len(per_seed) == 2, text
    for preset in ("simple_cnn", "tutorial_cnn"):
        assert re.search(rf"^{preset}\s+trainer \d+\.\d\dx the classic loop's images/s$", text, re.M), text
    assert not list(scratch.glob("bench-*")), "the benchmark's clone was left behind"


def test_estimator_noise_prints_each_arms_seed_sd_per_window(tmp_path):
    """Two runs whose last epochs jitter in opposite directions: the last epoch's SD
    over seeds is large, the mean over the last 2 epochs' is 0."""
    from pipeline.core.contracts import history_csv, run_dir
    from pipeline.core.jobs import HistoryRow

    for seed, accs in ((0, (0.5, 0.6, 0.7, 0.6)), (1, (0.5, 0.6, 0.6, 0.7))):
        folder = run_dir(tmp_path, "aug=none", seed)
        folder.mkdir(parents=True)
        (folder / "history.csv").write_text(history_csv([
            HistoryRow(epoch=e, train_loss=1.0, train_acc=0.9, test_loss=1.0, test_acc=a, lr=1e-3, epoch_seconds=1.0,
                       images_per_second=1.0) for e, a in enumerate(accs, 1)]))
    out = subprocess.run([sys.executable, str(REPO / "bench" / "estimator_noise.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("aug=none"))
    assert row[1] == "2" and float(row[2]) == pytest.approx(7.07, abs=0.01)  # 100 * 0.1 / sqrt(2)
    assert float(row[3]) == pytest.approx(0.0, abs=0.01) and row[4] == "nan"  # 3 epochs: mean of last 3; 5: too few


def test_the_oversubscription_benchmark_prints_its_table_and_equal_weights():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "oversubscribed.py"), "--batch-size", "16",
                          "--images", "64", "--repeat", "1"], env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^\| ([12]) \| (spinning \(default\)|passive) \| (\d+) \| (\d+) \|$", out.stdout, re.M)
    assert [r[:2] for r in rows] == [("1", "spinning (default)"), ("1", "passive"), ("2", "spinning (default)"),
                                     ("2", "passive")], out.stdout
    assert all(int(r[2]) > 0 and int(r[3]) >= int(r[2]) for r in rows), out.stdout
    assert out.stdout.rstrip().endswith("final weights: the same in every process"), out.stdout
