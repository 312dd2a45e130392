"""The whole pipeline through DVC, as its users run it, on a small generated archive.

`dvc repro` trains 2 arms x 2 seeds into MLflow; `dvc exp run -S aug=none`
works as typed and restores that arm from the arm cache; a SIGKILLed training
resumes and ends bitwise equal to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.io import sha256_file
from tests.archives import write_official

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return env


def run(cmd: str, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, shell=True, cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def make_project(tmp: Path, **params) -> Path:
    """A git + DVC repository holding this project's code and a small official-format archive."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy2(REPO / name, proj / name)
    for name in ("pipeline", "models"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    archive = write_official_archive(tmp)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p.update({"seeds": [0, 1], "epochs": 2, "batch_size": 32})
    p["data"].update({"url": str(archive), "sha256": sha256_file(archive), "md5": None, "verify_counts": False})
    p.update(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run("git init -q && dvc init -q && dvc config core.analytics false", proj)
    shutil.copytree(REPO / ".dvc" / "plots", proj / ".dvc" / "plots")  # the plot templates
    run("git add -A && git commit -qm init", proj)
    return proj


def write_official_archive(tmp: Path) -> Path:
    archive = tmp / "cifar-10-python.tar.gz"
    write_official(archive, per_class=12)
    return archive


def mlflow_runs(proj: Path) -> list[dict]:
    with sqlite3.connect(proj / "mlflow.db") as db:
        rows = db.execute(
            "select r.run_uuid, r.status, (select value from tags t where t.run_uuid = r.run_uuid "
            "and t.key = 'mlflow.parentRunId') from runs r").fetchall()
        steps = dict(db.execute("select run_uuid, count(distinct step) from metrics "
                                "where key = 'test_acc' group by run_uuid").fetchall())
    return [{"id": r, "status": s, "parent": p, "epochs": steps.get(r, 0)} for r, s, p in rows]


def test_repro_then_single_arm_experiment(tmp_path):
    proj = make_project(tmp_path)
    out = run("dvc repro", proj)
    assert "study simple_cnn: 2 arm(s) x 2 seed(s)" in out.stdout

    # per arm x seed outputs, checkpoints that load safely and carry their config
    for arm in ("aug=none", "aug=standard"):
        for seed in (0, 1):
            d = proj / "runs" / arm / f"seed={seed}"
            ckpt = torch.load(d / "model.pt", weights_only=True)
            assert ckpt["config"]["aug"] == arm.split("=")[1] and ckpt["seed"] == seed
            assert ckpt["data_sha256"] and ckpt["code_version"] != "unknown"
            assert (d / "best.pt").exists() and (d / "history.csv").read_text().count("\n") == 3

    # MLflow: one parent, four finished children with two epochs of metrics each
    runs = mlflow_runs(proj)
    parents = [r for r in runs if r["parent"] is None]
    children = [r for r in runs if r["parent"] is not None]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    assert len(children) == 4
    assert all(c["status"] == "FINISHED" and c["epochs"] == 2 and c["parent"] == parents[0]["id"]
               for c in children)

    # metrics DVC lists, and the stages are up to date
    train_metrics = json.loads((proj / "metrics/train.json").read_text())
    assert set(train_metrics["arms"]) == {"aug=none", "aug=standard"}
    assert "up to date" in run("dvc status", proj).stdout
    shown = run("dvc metrics show --json", proj).stdout
    assert "aug=standard" in shown and "test_acc" in shown
    plots = json.loads(run("dvc plots show --json", proj).stdout)
    assert not plots.get("errors"), plots.get("errors")
    curve = plots["data"]["test accuracy"][0]["content"]["data"]["values"]
    assert {p["run"] for p in curve} == {f"aug={a} seed={s}" for a in ("none", "standard") for s in (0, 1)}

    # one arm, exactly as users type it: restored from the arm cache, not retrained
    t0 = time.monotonic()
    out = run("dvc exp run -S aug=none", proj)
    assert out.stdout.count("restored from the arm cache") == 2
    assert " epoch " not in out.stdout  # nothing trained
    assert "1 arm(s) x 2 seed(s)" in out.stdout
    exps = json.loads(run("dvc exp show --json", proj).stdout)
    text = json.dumps(exps)
    assert '"aug": "none"' in text and "aug=none" in text
    exp_metrics = json.loads((proj / "metrics/train.json").read_text())
    assert list(exp_metrics["arms"]) == ["aug=none"]
    assert exp_metrics["arms"]["aug=none"]["test_acc"] == train_metrics["arms"]["aug=none"]["test_acc"]
    print(f"dvc exp run -S aug=none from the arm cache: {time.monotonic() - t0:.1f} s")

    # the same arm and seed trained again from scratch gives identical metrics (CPU)
    run("python -m pipeline.train --retrain --no-mlflow --no-progress --runs /tmp/retrain-check "
        f"--metrics {tmp_path}/m.json --curves {tmp_path}/curves.csv", proj)
    again = json.loads((Path("/tmp/retrain-check") / "aug=none/seed=0/metrics.json").read_text())
    first = json.loads((proj / "runs/aug=none/seed=0/metrics.json").read_text())
    shutil.rmtree("/tmp/retrain-check", ignore_errors=True)
    assert {k: v for k, v in again.items() if k != "train_seconds"} == \
           {k: v for k, v in first.items() if k != "train_seconds"}


def test_sigkill_during_training_resumes_bitwise(tmp_path):
    proj = make_project(tmp_path, seeds=[0], aug="standard", epochs=6)
    run("dvc repro untar", proj)
    store = proj / ".arm-cache"
    # no shell in between: this test reaps dvc itself, so its PID is free when dvc looks again
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=proj, env=_env(proj),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(store.glob("*/state.pt")):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training never saved an epoch"
            time.sleep(0.05)
        state = torch.load(next(store.glob("*/state.pt")), weights_only=True)
        assert state["epoch"] < 6
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not list(store.glob("*/done"))

    out = run("dvc repro train", proj)
    assert "resuming after epoch" in out.stdout
    resumed = torch.load(proj / "runs/aug=standard/seed=0/model.pt", weights_only=True)
    resumed_metrics = json.loads((proj / "runs/aug=standard/seed=0/metrics.json").read_text())

    # MLflow: the killed run was continued, nothing is left RUNNING
    runs = mlflow_runs(proj)
    assert all(r["status"] != "RUNNING" for r in runs)
    children = [r for r in runs if r["parent"] is not None]
    assert [c["status"] for c in children] == ["FINISHED"] and children[0]["epochs"] == 6

    # an uninterrupted run of the same arm
    run("python -m pipeline.train --retrain --no-mlflow --no-progress --runs fresh "
        "--metrics fresh.json --curves fresh-curves.csv", proj)
    fresh = torch.load(proj / "fresh/aug=standard/seed=0/model.pt", weights_only=True)
    fresh_metrics = json.loads((proj / "fresh/aug=standard/seed=0/metrics.json").read_text())
    for k, v in fresh["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    drop = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}
    assert drop(fresh_metrics) == drop(resumed_metrics)


def test_parallel_workers_give_the_sequential_results(tmp_path, monkeypatch):
    from pipeline import train
    from pipeline.untar import prepare

    archive = write_official_archive(tmp_path)
    prepare(archive, tmp_path / "prepared", verify_counts=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    results = {}
    for parallel in (1, 2):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(
            {"seeds": [0, 1], "epochs": 1, "batch_size": 32, "parallel": parallel}))
        train.main(["--data", "prepared", "--runs", f"runs{parallel}", "--metrics", f"m{parallel}.json",
                    "--curves", f"curves{parallel}.csv", "--no-progress", "--retrain"])
        results[parallel] = {
            d.parent.name + d.name: json.loads((d / "metrics.json").read_text())
            for d in (tmp_path / f"runs{parallel}").glob("*/seed=*")}
    drop = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}
    assert len(results[2]) == 4
    assert {k: drop(v) for k, v in results[1].items()} == {k: drop(v) for k, v in results[2].items()}
    runs = mlflow_runs(tmp_path)
    assert sum(r["parent"] is not None and r["status"] == "FINISHED" for r in runs) == 8


def test_queued_experiments_in_parallel_share_one_mlflow_store(tmp_path):
    proj = make_project(tmp_path, seeds=[0], epochs=1)
    run("dvc repro untar && git add -A && git commit -qm data", proj)
    for overrides in ("-S aug=none", "-S aug=standard", "-S aug=none -S lr=0.01", "-S aug=standard -S lr=0.01"):
        run(f"dvc exp run --queue {overrides}", proj)
    run("dvc queue start -j 2", proj)
    deadline = time.monotonic() + 600
    while True:
        status = run("dvc queue status", proj).stdout
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    run("dvc queue stop", proj, check=False)
    assert status.count("Success") == 4, status
    runs = mlflow_runs(proj)  # the store at the repository root, not in the experiments' copies
    children = [r for r in runs if r["parent"] is not None]
    parents = [r for r in runs if r["parent"] is None]
    assert len(parents) == 4 and len(children) == 4
    assert all(r["status"] == "FINISHED" for r in runs)
    assert not list((proj / ".dvc/tmp/exps").rglob("mlflow.db"))


REAL_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
REAL_SHA256 = "2ca76c958b9e50d95e55a63e11fddfedcef00332cb5172550a6380cb2c0eaab4"


@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason="the real CIFAR-10 JPEG mirror is not beside the repository")
def test_dvc_repro_untar_on_the_real_archive(tmp_path):
    proj = make_project(tmp_path)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["data"].update({"url": str(REAL_ARCHIVE), "sha256": REAL_SHA256, "verify_counts": True})
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    t0 = time.monotonic()
    run("dvc repro untar", proj)
    seconds = time.monotonic() - t0
    manifest = json.loads((proj / "data/prepared/manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 50_000 and manifest["splits"]["test"]["count"] == 10_000
    assert set(manifest["splits"]["train"]["per_class"].values()) == {5000}
    assert set(manifest["splits"]["test"]["per_class"].values()) == {1000}
    assert manifest["source"]["sha256"] == REAL_SHA256
    assert seconds < 60, f"dvc repro untar took {seconds:.1f} s"
