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

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
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
def test_a_signal_ends_the_arms_mlflow_run_as_killed(tmp_path, sig):
    from pipeline.untar import prepare

    archive = tmp_path / "a.tar.gz"
    write_official(archive, per_class=12)
    prepare(archive, tmp_path / "prepared", verify_counts=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "aug": "none", "epochs": 200,
                                                          "batch_size": 8}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO),
           "CIFAR_ABLATE_TRACKING": "off"}
    # a shell that starts a job in the background makes it ignore SIGINT, and children inherit
    # that: the stage under test gets Python's default handling, as from a terminal
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".arm-cache/*/state.pt")):
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=180) != 0  # generous: CI machines are shared
    subprocess.run([sys.executable, "-m", "pipeline.tracking", "flush"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = sorted(s for (s,) in db.execute("select status from runs"))
    assert statuses == ["KILLED", "KILLED"]  # the parent and the arm x seed run
    assert not (tmp_path / "runs").exists()
    assert list(tmp_path.glob(".arm-cache/*/state.pt"))  # the epochs it finished are kept


def test_a_zombie_is_not_alive():
    """A process killed with its parent stays a zombie until init reaps it; the
    tracking journal must see it as gone, or its runs would stay RUNNING."""
    from pipeline.core.io import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not pid_alive(child.pid)  # exited, not yet reaped
    child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())
