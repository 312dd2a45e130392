"""Fault injection: the pipeline is killed at every stage and at the end of an arm,
every kind of cache file is damaged, the MLflow store is locked, removed and
unreachable, the disk fills up. Each time: no traceback, at most one clear line,
and after a plain `dvc repro` the metrics equal those of an uninterrupted run."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch

from pipeline.train.armstore import read_state
from tests.conftest import (BIN, TRACKING_ON, assert_resumed, env, publish_tracking, make_project, mlflow_runs,
                            run)

pytestmark = pytest.mark.slow


def _results(proj) -> dict:
    """What a study computes: the headline and every run's final metrics (not its timings)."""
    out = {"headline": json.loads((proj / "metrics/study.json").read_text())}
    for f in sorted(proj.glob("runs/*/seed=*/metrics.json")):
        m = json.loads(f.read_text())
        m.pop("train_seconds")
        out[f"{f.parent.parent.name}/{f.parent.name}"] = m
    return out


def _no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def reference(trained):
    """What an uninterrupted run of the default study computes."""
    return _results(trained)


DVC_RWLOCK = "Unable to read RWLock-file '.dvc/tmp/rwlock'"


def _kill_when(proj, marker: str, after_s: float = 0.3, cmd=("dvc", "repro"), until=None) -> str:
    """Start `dvc repro`, kill -9 its whole process group once `marker` is printed (and
    `until()` holds, when given).

    DVC writes its lock table (.dvc/tmp/rwlock) in place: a kill in that instant
    leaves it empty, and DVC then refuses to start. Where it does, this does what
    the README tells a user (remove the file) and starts again."""
    for attempt in range(2):
        proc = subprocess.Popen([str(BIN / cmd[0]), *cmd[1:]], cwd=proj, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                time.sleep(after_s)
                deadline = time.monotonic() + 120
                while until is not None and not until() and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        text = "".join(seen)
        if attempt == 0 and marker not in text and DVC_RWLOCK in text:
            (proj / ".dvc" / "tmp" / "rwlock").unlink()
            continue
        break
    assert marker in text, text[-3000:]
    return text


def test_kill_9_at_every_stage_and_at_the_end_of_an_arm(tmp_path, reference):
    proj = make_project(tmp_path)
    outputs = [
        _kill_when(proj, "Running stage 'untar'", 0.5),
        # mid-arm, once its state after epoch 1 is on disk (it is written in the background)
        _kill_when(proj, "epoch 1/2", 0.0, until=lambda: list(proj.glob(".arm-cache/*/state.pt"))),
        _kill_when(proj, "seed=0: test acc", 0.0),  # an arm just finished
        _kill_when(proj, "Running stage 'evaluate'", 1.5),
        _kill_when(proj, "Running stage 'report'", 1.5),
    ]
    final = run("dvc repro", proj, check=False)
    if final.returncode and DVC_RWLOCK in final.stdout + final.stderr:  # the README's one step, as above
        (proj / ".dvc" / "tmp" / "rwlock").unlink()
        final = run("dvc repro", proj)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    # the arm killed mid-way resumed (in the kill run after it, or here) after its saved epoch
    assert any("resuming after epoch 1" in text for text in outputs[2:] + [final.stdout])
    for text in outputs[2:] + [final.stdout]:
        if "resuming after epoch" in text:
            assert_resumed(text, 2)
    _no_traceback(*outputs, final.stdout, final.stderr)
    assert _results(proj) == reference
    # nothing a killed run left: no temporaries anywhere, no state of a finished arm
    assert not [p for p in proj.rglob("*.tmp") if ".dvc" not in p.parts]
    assert not list(proj.glob(".arm-cache/*/state.pt"))
    publish_tracking(proj)
    assert all(r["status"] != "RUNNING" for r in mlflow_runs(proj / "mlflow.db"))


def test_every_kind_of_damaged_cache_file_is_set_aside_and_redone(tmp_path, trained, reference):
    proj = make_project(tmp_path, cached=trained)
    run("dvc repro", proj)
    entries = sorted(proj.glob(".arm-cache/*/done"))
    assert len(entries) == 4
    os.truncate(entries[0] / "model.pt", 100)
    (entries[1] / "record.npz").write_bytes(b"{garbled")
    (entries[2] / "manifest.json").write_text("epoch,train_loss\n1,x\n")
    # an arm killed before it finished, whose saved state is malformed
    fp3 = entries[3].parent
    subprocess.run(["rm", "-rf", str(entries[3])], check=True)
    torch.save({"epoch": 2, "model": {}}, fp3 / "state.pt")
    # every cached figure: one whose inputs include timings is drawn anew under a new
    # key, so only the figures with the same inputs are read (and must be caught)
    for figure in proj.glob(".cache/figures/*.png"):
        os.truncate(figure, 10)

    out = run("dvc repro -f", proj)
    _no_traceback(out.stdout, out.stderr)
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert sum("arm cache entry" in w and "damaged" in w for w in warnings) == 3, warnings
    assert sum("cannot be resumed" in w for w in warnings) == 1, warnings
    assert any("cached figure" in w for w in warnings)
    assert _results(proj) == reference
    assert len(list(proj.glob(".arm-cache/quarantine/*"))) == 4


def test_editing_an_output_never_reaches_a_cache(tmp_path, trained, reference):
    """Outputs under runs/ are copies (copy-on-write where the filesystem can) of the
    arm cache's files, and DVC's cache holds its own copies. Editing an output is
    detected by DVC and redone from the arm cache, which the edit never reached."""
    proj = make_project(tmp_path, cached=trained)
    run("dvc repro", proj)
    ckpt = proj / "runs" / "aug=none" / "seed=0" / "model.pt"
    os.truncate(ckpt, 1000)
    with open(proj / "evaluation" / "summary.json", "a") as f:
        f.write("edited")
    out = run("dvc repro", proj)
    _no_traceback(out.stdout, out.stderr)
    assert "arm cache entry" not in out.stderr  # the cache's own copy was never touched
    assert "restored from the arm cache" in out.stdout + out.stderr and "epoch 1/" not in out.stdout + out.stderr
    assert _results(proj) == reference
    torch.load(ckpt, weights_only=True)  # whole again
    for obj in (proj / ".dvc" / "cache" / "files" / "md5").rglob("*"):  # every DVC cache object matches its name
        if obj.is_file() and not obj.name.endswith(".dir"):
            import hashlib

            assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name
    assert "up to date" in run("dvc status", proj).stdout


def test_a_locked_then_removed_tracking_store_never_costs_training(tmp_path, reference):
    proj = make_project(tmp_path)
    run("dvc repro untar", proj)
    run("python -m pipeline.tracking publish", proj)  # nothing yet; but the store must exist to be locked
    db = proj / "mlflow.db"
    proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=proj, env=env(TRACKING_ON), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    locked = threading.Event()

    def hold_the_store():
        while not list(proj.glob(".arm-cache/*/state.pt")):
            time.sleep(0.05)
        conn = sqlite3.connect(db, timeout=60)
        conn.execute("BEGIN EXCLUSIVE")  # as another process writing for a long time
        locked.set()
        time.sleep(20)
        conn.rollback()
        conn.close()
        db.unlink()  # and then the store is gone

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    out = proc.communicate(timeout=900)[0]
    holder.join()
    assert locked.is_set() and proc.returncode == 0, out
    _no_traceback(out)
    assert _results(proj) == reference
    for f in proj.glob("mlflow.db*"):  # the store is replaced whole, as a user would
        f.unlink()
    publish_tracking(proj)  # the study is published again to the new store, whole
    runs = mlflow_runs(db)
    assert len([r for r in runs if r["parent"] is not None]) == 4
    assert all(r["status"] == "FINISHED" for r in runs)
    assert all(r["epochs"] == 2 for r in runs if r["parent"] is not None)


def test_a_store_replaced_after_everything_was_sent_gets_the_runs_again(tmp_path):
    proj = make_project(tmp_path, seeds=[0], epochs=1, batch_size=32, aug="none")
    run("dvc repro train", proj)
    publish_tracking(proj)
    db = proj / "mlflow.db"
    before = mlflow_runs(db)
    assert len(before) == 2 and all(r["status"] == "FINISHED" for r in before)
    for f in proj.glob("mlflow.db*"):  # nothing is pending now: only asking the store finds the loss
        f.unlink()
    publish_tracking(proj)
    publish_tracking(proj)  # and a second publication sends nothing twice,
    run("dvc repro -f train", proj, extra_env=TRACKING_ON)  # nor does a forced rerun, which publishes as it ends
    after = mlflow_runs(db)
    assert sorted((r["name"], r["status"], r["epochs"]) for r in after) == \
        sorted((r["name"], r["status"], r["epochs"]) for r in before)
    assert not {r["id"] for r in after} & {r["id"] for r in before}  # new runs, in the new store


def test_an_unreachable_tracking_store_is_one_line_and_catches_up_later(tmp_path, reference):
    from tests.services import free_port, start_mlflow_server

    proj = make_project(tmp_path, seeds=[0], epochs=2, batch_size=32, aug="none")
    port = free_port()  # a team server that is down
    extra = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    run("dvc repro untar", proj)
    for stage in ("train", "evaluate", "report"):  # each says it once
        out = run(f"dvc repro --single-item {stage}", proj, extra_env={**extra, **TRACKING_ON})
        _no_traceback(out.stdout, out.stderr)
        lines = [line for line in out.stderr.splitlines() if "MLflow at" in line]
        assert len(lines) == 1 and "did not take" in lines[0] and "nothing is lost" in lines[0], (stage, out.stderr)
    store = tmp_path / "server.db"
    _, stop = start_mlflow_server(f"sqlite:///{store}", tmp_path / "artifacts", tmp_path / "server.log", port=port)
    try:  # the server is back
        run("python -m pipeline.tracking publish", proj, extra_env=extra)
    finally:
        stop()
    runs = mlflow_runs(store)
    assert len(runs) == 2 and all(r["status"] == "FINISHED" for r in runs)


def test_editing_the_files_you_work_on_never_changes_a_logged_record(tmp_path):
    """runs/, the arm cache and the MLflow store share no file: saving a
    fine-tuned model over runs/.../model.pt or appending to its history.csv changes
    no logged model or artifact; and a store's own copy changed after it was logged
    is caught: `publish` names the file, loading the model refuses its weights."""
    import hashlib

    proj = make_project(tmp_path, seeds=[0], epochs=1, aug="none")
    run("dvc repro train", proj)
    publish_tracking(proj)
    run_dir = proj / "runs" / "aug=none" / "seed=0"
    stores = [proj / ".arm-cache", proj / "mlartifacts"]
    inodes = {f.stat().st_ino for store in stores for f in store.rglob("*") if f.is_file()}
    assert not {f.stat().st_ino for f in run_dir.iterdir()} & inodes, "runs/ shares a file with a store"
    original = torch.load(run_dir / "model.pt", weights_only=True)
    history = (run_dir / "history.csv").read_bytes()
    for f in run_dir.iterdir():  # as root: a read-only file is no obstacle
        f.chmod(0o644)
    tuned = {**original, "model": {k: v + 1 if v.is_floating_point() else v for k, v in original["model"].items()}}
    torch.save(tuned, run_dir / "model.pt")
    with open(run_dir / "history.csv", "a") as f:
        f.write("2,0,0,0,0,0,0,0\n")
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    (tmp_path / "load.py").write_text(
        "import mlflow, mlflow.pytorch, sys, torch\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "[m] = [m for m in mlflow.search_logged_models(experiment_ids=['1'], output_format='list')\n"
        "       if m.name.endswith(' last')]\n"
        "torch.save(mlflow.pytorch.load_model(f'models:/{m.model_id}').checkpoint['model'], sys.argv[2])\n")
    run(f"python {tmp_path / 'load.py'} {uri} {tmp_path / 'logged.pt'}", proj)
    logged = torch.load(tmp_path / "logged.pt", weights_only=True)
    assert all(torch.equal(logged[k], v) for k, v in original["model"].items())
    [store_history] = [f for f in (proj / "mlartifacts").rglob("history.csv")]
    assert store_history.read_bytes() == history
    assert "warning" not in run("python -m pipeline.tracking publish", proj).stderr
    # the store's own copies, changed after they were logged
    with open(store_history, "a") as f:
        f.write("edited\n")
    for weights in (proj / "mlartifacts").rglob("model.pth"):  # the last and the best checkpoint's model
        saved = torch.load(weights, weights_only=True)
        saved["model"] = tuned["model"]
        torch.save(saved, weights)
    out = run("python -m pipeline.tracking publish", proj)
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    shown = store_history.relative_to(proj)  # paths under the repository are shown relative to it
    assert len(warnings) == 1 and f"{shown} (run aug=none seed=0" in warnings[0], out.stderr
    assert "changed after it was logged" in warnings[0]
    refused = run(f"python {tmp_path / 'load.py'} {uri} {tmp_path / 'again.pt'}", proj, check=False)
    assert refused.returncode != 0 and "were changed after it was logged" in refused.stderr
    [child] = [r for r in mlflow_runs(proj / "mlflow.db") if r["parent"] is not None]
    with sqlite3.connect(proj / "mlflow.db") as db:
        [(logged,)] = db.execute("select value from tags where run_uuid = ? and key = 'checksums'",
                                 (child["id"],)).fetchall()
    assert json.loads(logged)["history.csv"] == hashlib.sha256(history).hexdigest()


def _stage_with_a_full_disk(proj, stage: str, patch: str = "", extra_env: dict | None = None):
    """Run a stage's main() after `patch` (Python source), e.g. one that makes some write raise ENOSPC."""
    args = {"train": ["--params", "params.yaml", "--data", "data/prepared", "--runs", "runs", "--metrics",
                      "metrics/train.json", "--curves", "plots/curves.csv", "--no-progress"],
            "evaluate": ["--params", "params.yaml", "--data", "data/prepared", "--runs", "runs", "--out",
                         "evaluation", "--metrics", "metrics/evaluate.json", "--headline", "metrics/study.json"]}
    script = proj.parent / f"full_disk_{stage}.py"
    script.write_text(f"import errno, os, sys\n{patch}\nfrom pipeline.{stage}.stage import main\nmain(sys.argv[1:])\n")
    return subprocess.run([sys.executable, str(script), *args[stage]], cwd=proj, env=env(extra_env),
                          capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def small_filesystem(path, size: str):
    """A real file system of `size` at `path` (tmpfs; this machine's tests run as root)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


FULL_ON_ARRAYS = """
import numpy
def savez_compressed(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
numpy.savez_compressed = savez_compressed
"""


def test_a_full_disk_while_training_or_evaluating_is_one_line_and_keeps_what_was_there(tmp_path, reference):
    """Training: the arm store on a real 12 MiB file system, where a simple_cnn state
    (weights, Adam's moments, the best weights: 8.8 MB) fits once but not beside the
    next epoch's. Evaluating: ENOSPC from the arrays' write."""
    (tmp_path / "a").mkdir()
    proj = make_project(tmp_path / "a", seeds=[0], aug="standard", epochs=3, batch_size=64)
    run("dvc repro untar", proj)
    with small_filesystem(tmp_path / "small", "12m") as small:
        out = _stage_with_a_full_disk(proj, "train", extra_env={"CIFAR_ABLATE_ARMS": str(small)})
        assert out.returncode == 2, out.stderr
        _no_traceback(out.stdout, out.stderr)
        line = out.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: no space left on the disk holding {re.escape(str(small))}/[0-9a-f]{{64}}"
                            r"/ \([\d,.]+ MiB free\), writing [\d.]+ MiB; free some space, then run the same "
                            r"command again \(what finished is kept, and training goes on from its last saved "
                            r"epoch\)", line), line
        states = list(small.glob("*/state.pt"))
        assert len(states) == 1 and read_state(states[0], states[0].parent.name).epoch == 1  # the epoch before
        assert not [p for p in small.rglob("*") if p.name.endswith(".tmp")]  # nothing half written
    (tmp_path / "b").mkdir()
    proj = make_project(tmp_path / "b")
    run("dvc repro", proj)
    before = (proj / "evaluation" / "summary.json").read_bytes()
    out = _stage_with_a_full_disk(proj, "evaluate", FULL_ON_ARRAYS)
    assert out.returncode == 2 and "no space left on the disk holding" in out.stderr, out.stderr
    _no_traceback(out.stdout, out.stderr)
    assert (proj / "evaluation" / "summary.json").read_bytes() == before
    assert _results(proj) == reference
