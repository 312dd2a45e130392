"""Nothing lost, nothing half-written: signals, full disks, read-only folders."""
from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import cli
from pipeline.core.io import atomic_path, write_json
from tests.archives import write_official
from tests.conftest import descendants, wait_for_saved_epochs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on the disk holding"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_full_disk_or_read_only_folder_is_one_line_and_keeps_the_old_output(tmp_path, capsys, code, words):
    out = tmp_path / "metrics.json"
    write_json(out, {"old": 1})

    @cli
    def stage(argv=None):
        with atomic_path(out) as tmp:
            tmp.write_text('{"new": ')
            raise OSError(code, os.strerror(code), str(tmp))

    with pytest.raises(SystemExit) as e:
        stage([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert json.loads(out.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left


def test_an_output_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "prepared"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text("2")
            raise RuntimeError("killed half-way")
    assert (out / "a").read_text() == "1"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("parallel", [1, 2], ids=["in-process", "ray"])
def test_a_signal_stops_the_study_in_one_line_and_keeps_what_it_saved(tmp_path, sig, parallel):
    """Ctrl-C or SIGTERM on the driver: the jobs (Ray's included) are cancelled, their
    each job's last epoch stays resumable, the study's MLflow parent run ends KILLED, and the user reads
    one line that says so; rerunning resumes after that epoch."""
    from pipeline.core.io import pid_alive
    from pipeline.untar import prepare

    archive = tmp_path / "a.tar.gz"
    write_official(archive, per_class=12)
    prepare(archive, tmp_path / "prepared", verify_counts=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "aug": "none", "epochs": 200,
                                                          "batch_size": 8, "parallel": parallel}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO),
           "CIFAR_ABLATE_TRACKING": "on"}
    env.pop("RAY_ADDRESS", None)
    # a shell that starts a job in the background makes it ignore SIGINT, and children inherit
    # that: the stage under test gets Python's default handling, as from a terminal
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_saved_epochs(tmp_path, proc, parallel, timeout=180)
        workers = descendants(proc.pid)
        assert len(workers) >= (3 if parallel > 1 else 0)  # Ray's processes, for the Ray engine
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)  # generous: CI machines are shared
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + sig
    assert "Traceback" not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(sig).name}: 0 of 2 runs finished; "), err
    assert last.count("resumes after epoch") == parallel and last.endswith("run the same command again to continue")
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in workers):  # Ray's workers and raylet go with the driver
        assert time.monotonic() < deadline, [p for p in workers if pid_alive(p)]
        time.sleep(0.2)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # no arm finished: the study's parent alone, ended
        statuses = [s for (s,) in db.execute("select status from runs")]
    assert statuses == ["KILLED"]
    assert not (tmp_path / "runs").exists()
    assert len(list(tmp_path.glob(".arm-cache/*/state.pt"))) == parallel  # the epochs it finished are kept
    # the saved epochs are where a rerun goes on from (a short rerun: the same arms, fewer epochs
    # would change their fingerprint, so only check the first line it prints per job)
    again = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-progress"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = again.stdout.readline()
        while "resuming after epoch" not in first and first:
            first = again.stdout.readline()
        label, _, epoch = first.strip().partition(": resuming after epoch ")
        assert label in ("aug=none seed=0", "aug=none seed=1") and epoch.isdigit(), first
        assert f"; {label} resumes after epoch {epoch};" in last, (first, last)
        line = again.stdout.readline()  # and it trains on from there, not from epoch 1
        while line and not line.startswith(f"{label} epoch "):
            line = again.stdout.readline()
        assert line.startswith(f"{label} epoch {int(epoch) + 1}/200:"), line
    finally:
        again.terminate()
        again.communicate(timeout=180)


def test_a_zombie_is_not_alive():
    """A process killed with its parent stays a zombie until init reaps it; an arm's
    lock must see it as gone, or the arm would wait for it forever."""
    from pipeline.core.io import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pid_alive(child.pid)  # exited, not yet reaped
    child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())


@pytest.mark.slow
def test_an_arm_another_process_trains_does_not_hold_up_the_others(tmp_path):
    """A parallel experiment holds one arm x seed's lock: this study trains its other
    jobs meanwhile (and keeps saving their epochs), says once that it waits, and
    trains or restores that one when the lock is free."""
    from filelock import FileLock

    from pipeline.untar import prepare

    archive = tmp_path / "a.tar.gz"
    write_official(archive, per_class=6)
    prepare(archive, tmp_path / "prepared", verify_counts=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1], "aug": "none", "epochs": 1,
                                                          "batch_size": 8}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-progress", "--no-mlflow"]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    fp = {r["seed"]: r["fingerprint"] for r in json.loads((tmp_path / "runs/study.json").read_text())["runs"]}
    cache = tmp_path / ".arm-cache"
    for f in fp.values():
        subprocess.run(["rm", "-rf", str(cache / f)], check=True)
    held = FileLock(str(cache / f"{fp[0]}.lock"))
    held.acquire()
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (cache / fp[1] / "done").is_dir():  # seed 1 trains while seed 0 waits
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the study waited for seed 0 before training seed 1"
            time.sleep(0.1)
        time.sleep(2)
        assert proc.poll() is None and not (cache / fp[0] / "done").exists()  # still waiting for seed 0
        held.release()
        out = proc.communicate(timeout=300)[0]
    finally:
        held.release()
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert out.count("aug=none seed=0: another process is training it; waiting") == 1, out
    assert (cache / fp[0] / "done").is_dir()
