"""The whole pipeline through DVC, as its users run it, on a small generated archive.

`dvc repro` trains 2 arms x 2 seeds into MLflow; `dvc exp run -S aug=none`
works as typed and restores that arm from the arm cache; a SIGKILLed training
resumes and ends bitwise equal to an uninterrupted run; queued experiments share
one MLflow store.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
import yaml

from pipeline.core.io import sha256_file
from pipeline.train.armstore import read_state
from tests.archives import write_official
from tests.conftest import (BIN, REAL_ARCHIVE, REAL_SHA256, REPO, TRACKING_ON, assert_resumed, assert_trained_fresh,
                            env, make_project, mlflow_runs, publish_tracking, run, run_queue)

pytestmark = pytest.mark.slow


def test_repro_then_single_arm_experiment(tmp_path):
    proj = make_project(tmp_path)
    out = run("dvc repro", proj)
    # the train stage's first line: the precision `auto` chose for this CPU, and why
    from pipeline.core.hardware import native_bf16

    first = out.stdout.split("> python -m pipeline.train")[1].splitlines()[1]
    chosen = "bf16" if native_bf16() else "fp32"
    assert first.startswith(f"precision: {chosen} (auto: this CPU, "), first
    assert "study simple_cnn: 2 arm(s) x 2 seed(s) x 2 epoch(s) on cpu" in out.stdout
    assert "4 to train, 0 in the arm cache" in out.stdout  # the plan, then the time it takes, measured
    assert re.search(r"^about \d+ s of training \([\d,]+ img/s measured on (its first steps|the first epoch) of "
                     r"aug=none seed=0\)$", out.stdout, re.M), out.stdout

    # per arm x seed outputs, checkpoints that load safely and carry their config
    for arm in ("aug=none", "aug=standard"):
        for seed in (0, 1):
            d = proj / "runs" / arm / f"seed={seed}"
            ckpt = torch.load(d / "model.pt", weights_only=True)
            assert ckpt["config"]["aug"] == arm.split("=")[1] and ckpt["seed"] == seed
            assert ckpt["data_sha256"] and ckpt["code_version"] != "unknown"
            assert (d / "best.pt").exists() and (d / "history.csv").read_text().count("\n") == 3

    # MLflow: one parent, four finished children with two epochs of metrics each
    publish_tracking(proj)
    runs = mlflow_runs(proj / "mlflow.db")
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
    shown = json.loads(run("dvc metrics show --json", proj).stdout)
    headline = next(iter(shown.values()))["data"]["metrics/study.json"]["data"]  # the answer, named by arm, in %
    assert set(headline) >= {"aug=none/test_acc", "aug=standard/test_acc", "aug=standard/delta", "n_seeds"}
    assert headline["aug=standard/delta"] == round(headline["aug=standard/test_acc"] - headline["aug=none/test_acc"],
                                                   2) or abs(headline["aug=standard/delta"] - (
        headline["aug=standard/test_acc"] - headline["aug=none/test_acc"])) < 0.011
    plots = json.loads(run("dvc plots show --json", proj).stdout)
    assert not plots.get("errors"), plots.get("errors")

    # the run ends with its answer; the report sits in a folder that says what differs from the preset
    study = "simple_cnn,epochs=2,batch_size=32,seeds=0+1"
    answer = out.stdout.split("> python -m pipeline.report")[1].splitlines()
    assert answer[1].startswith("aug=none: test accuracy ") and " vs " not in answer[1], answer
    assert answer[2].startswith("aug=standard vs aug=none: ") and " points (95% CI " in answer[2], answer
    assert answer[3] == f"report: reports/{study}/report.html", answer
    full = (proj / "reports" / study / "report.md").read_bytes()
    run("git add -A && git commit -qm results", proj)  # the study, as the experiments' baseline

    # one arm, exactly as users type it: restored from the arm cache, not retrained
    t0 = time.monotonic()
    out = run("dvc exp run -S aug=none", proj)
    assert out.stdout.count("restored from the arm cache") == 2
    assert " epoch " not in out.stdout  # nothing trained
    assert "1 arm(s) x 2 seed(s)" in out.stdout
    exps = json.loads(run("dvc exp show --json", proj).stdout)
    text = json.dumps(exps)
    assert '"aug": "none"' in text
    exp_metrics = json.loads((proj / "metrics/train.json").read_text())
    assert list(exp_metrics["arms"]) == ["aug=none"]
    assert exp_metrics["arms"]["aug=none"]["test_acc"] == train_metrics["arms"]["aug=none"]["test_acc"]
    print(f"dvc exp run -S aug=none from the arm cache: {time.monotonic() - t0:.1f} s")
    assert (proj / "reports" / study / "report.md").read_bytes() == full  # the one-arm run wrote beside it
    assert (proj / "reports" / "simple_cnn,aug=none,epochs=2,batch_size=32,seeds=0+1" / "report.md").exists()
    # `make results`: every experiment's answer, a block per study, in 100 columns
    table = run("python -m pipeline.results", proj).stdout
    assert max(map(len, table.splitlines())) <= 100, table
    assert re.search(r"^  aug=standard +\d+\.\d$", table, re.M) and re.search(r"^  aug=none +\d+\.\d$", table, re.M)
    assert re.search(r"^  aug=standard +[+-]\d+\.\d +[<\d.e-]+ +(helped|hurt|no significant difference)$", table,
                     re.M), table

    # the same arm and seed trained again from scratch gives identical metrics (CPU)
    fresh = run(f"python -m pipeline.train --retrain --no-mlflow --no-progress --runs {tmp_path}/retrain "
                f"--metrics {tmp_path}/m.json --curves {tmp_path}/curves.csv", proj)
    assert_trained_fresh(fresh.stdout, runs=2, epochs=2)  # params.yaml's one arm x 2 seeds, trained again
    again = json.loads((tmp_path / "retrain/aug=none/seed=0/metrics.json").read_text())
    first = json.loads((proj / "runs/aug=none/seed=0/metrics.json").read_text())
    assert {k: v for k, v in again.items() if k != "train_seconds"} == \
           {k: v for k, v in first.items() if k != "train_seconds"}


def test_sigkill_during_training_resumes_bitwise(tmp_path):
    proj = make_project(tmp_path, seeds=[0], aug="standard", epochs=6)
    run("dvc repro untar", proj)
    store = proj / ".arm-cache"
    # no shell in between: this test reaps dvc itself, so its PID is free when dvc looks again
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=proj, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(store.glob("*/state.pt")):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "training never saved an epoch"
            time.sleep(0.05)
        path = next(store.glob("*/state.pt"))
        assert read_state(path, path.parent.name).epoch < 6
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not list(store.glob("*/done"))

    out = run("dvc repro train", proj)
    assert list(assert_resumed(out.stdout, 6)) == ["aug=standard seed=0"]  # the remaining epochs, not all six
    resumed = torch.load(proj / "runs/aug=standard/seed=0/model.pt", weights_only=True)
    resumed_metrics = json.loads((proj / "runs/aug=standard/seed=0/metrics.json").read_text())

    # MLflow: the study once, its arm x seed once, with every epoch; nothing left RUNNING
    publish_tracking(proj)
    runs = mlflow_runs(proj / "mlflow.db")
    parents = [r for r in runs if r["parent"] is None]
    children = [r for r in runs if r["parent"] is not None]
    assert [p["status"] for p in parents] == ["FINISHED"]
    assert [c["status"] for c in children] == ["FINISHED"] and children[0]["epochs"] == 6
    assert children[0]["parent"] == parents[0]["id"]
    assert resumed_metrics["train_seconds"] > 0.01 * 6  # every epoch, not only those after the resume

    # an uninterrupted run of the same arm
    fresh_out = run("python -m pipeline.train --retrain --no-mlflow --no-progress --runs fresh "
                    "--metrics fresh.json --curves fresh-curves.csv", proj)
    assert_trained_fresh(fresh_out.stdout, runs=1, epochs=6)
    fresh = torch.load(proj / "fresh/aug=standard/seed=0/model.pt", weights_only=True)
    fresh_metrics = json.loads((proj / "fresh/aug=standard/seed=0/metrics.json").read_text())
    for k, v in fresh["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    drop = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert drop(fresh_metrics) == drop(resumed_metrics)


def test_queued_experiments_in_parallel_share_one_mlflow_store(tmp_path):
    proj = make_project(tmp_path, seeds=[0], epochs=1)
    run("dvc repro untar && git add -A && git commit -qm data", proj)
    for overrides in ("-S aug=none", "-S aug=standard", "-S aug=none -S lr=0.01", "-S aug=standard -S lr=0.01"):
        run(f"dvc exp run --queue {overrides}", proj)
    status = run_queue(proj, 2, extra_env=TRACKING_ON)  # each experiment's stages publish as they end
    assert status.count("Success") == 4, status
    runs = mlflow_runs(proj / "mlflow.db")  # the store at the repository root, not in the experiments' copies
    children = [r for r in runs if r["parent"] is not None]
    parents = [r for r in runs if r["parent"] is None]
    assert len(parents) == 4 and len(children) == 4
    assert all(r["status"] == "FINISHED" for r in runs)
    assert not list((proj / ".dvc/tmp/exps").rglob("mlflow.db"))


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
    assert manifest["name"] == "CIFAR-10 (JPEG mirror)"
    assert seconds < 60, f"dvc repro untar took {seconds:.1f} s"


def test_a_knob_axis_is_set_with_dvc_exactly_as_the_readme_types_it(tmp_path):
    """`dvc exp run -S 'knobs.batchnorm=[true,false]'` needs the key in params.yaml
    (DVC refuses to add one): every knob of every model is declared there, null."""
    import models

    declared = yaml.safe_load((REPO / "params.yaml").read_text())["knobs"]
    assert declared == {k: None for k in models.known_knobs()}
    proj = make_project(tmp_path, seeds=[0], epochs=1, aug="none")
    run("dvc exp run -S 'knobs.batchnorm=[true,false]'", proj)
    record = json.loads((proj / "runs" / "study.json").read_text())
    assert record["arms"] == ["aug=none,batchnorm=true", "aug=none,batchnorm=false"], record["arms"]


def test_a_quick_run_in_a_fresh_clone_leaves_the_committed_reports_and_names_each_change_by_its_arm(tmp_path):
    """The README's quick run, in a fresh clone of this repository (offline: a small archive
    of our own): its report goes beside the committed studies', whose files stay as git has
    them; and `dvc exp diff` between experiments of different shapes reports each change
    under the name of the arm it belongs to."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_official(archive, per_class=12)
    clone = tmp_path / "clone"
    run(f"git clone -q {REPO} {clone}", tmp_path)
    quick = (f"-S data.url={archive} -S data.sha256={sha256_file(archive)} -S data.md5=null "
             "-S data.verify_counts=false -S data.train_limit=100 -S data.test_limit=60 -S epochs=1 -S seeds=[0,1]")
    run(f"dvc exp run -n first {quick}", clone)
    assert (clone / "reports" / "simple_cnn,train_limit=100,test_limit=60,epochs=1,seeds=0+1" / "report.md").exists()
    untracked = run("git status --porcelain --untracked-files=all", clone).stdout.splitlines()
    assert [x for x in untracked if x.startswith("??")] == [], untracked  # a quick run's report: ignored by git
    run(f"dvc exp run -n other {quick} -S 'aug=[standard,strong]'", clone)
    diff = json.loads(run("dvc exp diff first other --json", clone).stdout)["metrics"]["metrics/study.json"]
    arms = {"first": {"aug=none", "aug=standard"}, "other": {"aug=standard", "aug=strong"}}
    # an arm of one experiment only is reported as appearing or disappearing, never as a change of another
    assert diff["aug=none/test_acc"]["new"] is None and diff["aug=strong/test_acc"]["old"] is None, diff
    for key, v in diff.items():
        arm = key.rsplit("/", 1)[0]
        assert arm in arms["first"] | arms["other"], key
        assert (v.get("old") is None or arm in arms["first"]) and (v.get("new") is None or arm in arms["other"]), key


@pytest.mark.skipif(not REAL_ARCHIVE.exists(), reason="the real CIFAR-10 JPEG mirror is not beside the repository")
def test_the_readmes_quick_run_pasted_into_a_fresh_clone_makes_a_report(tmp_path):
    """The README's offline block, as written (the archive's path filled in), in a fresh
    clone: a report, and nothing untracked left behind. The README fits in 10 kB."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 10_000
    block = readme.split("Offline, with a local copy", 1)[1].split("\n\n", 2)[1]
    commands = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    commands = [c.split("#")[0].strip() for c in commands if c and not c.startswith("source ")]
    clone = tmp_path / "clone"
    run(f"git clone -q {REPO} {clone}", tmp_path)
    for command in commands:
        out = run(command.replace("path/to/cifar10-jpg.tar.gz", str(REAL_ARCHIVE)), clone, timeout=1800)
    assert "simple_cnn,train_limit=2000,test_limit=1000,epochs=2" in out.stdout
    assert (clone / "reports" / "simple_cnn,train_limit=2000,test_limit=1000,epochs=2" / "report.html").exists()
    untracked = run("git status --porcelain --untracked-files=all", clone).stdout.splitlines()
    assert [x for x in untracked if x.startswith("??")] == [], untracked
