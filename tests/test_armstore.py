"""The arm store: every state save lands, in order, and a failed write is never
silent; a finished entry is restored only when every checksum matches, and a
damaged entry or state is moved aside with one line."""
from __future__ import annotations

import errno
import os
import threading

import pytest
import torch

from pipeline.core.contracts import TrainState
from pipeline.train.armstore import ArmStore, StateWriter


def _state(epoch: int, device: str = "cpu") -> TrainState:
    return TrainState(epoch=epoch, model={"w": torch.full((1000,), float(epoch))}, optimizer={}, schedule=None,
                      scaler=None, rng={}, history=[{"epoch": e} for e in range(1, epoch + 1)], best_epoch=1,
                      best_acc=0.5, best_state=None, diagnostics=None, device=device)


def test_saves_land_in_order_and_the_last_one_stays(tmp_path):
    store = ArmStore(tmp_path)
    with StateWriter(store, "fp") as writer:
        for epoch in range(1, 6):
            writer.save(_state(epoch), {"run_key": "k"})
    state, side = store.load_state("fp", "cpu")
    assert state.epoch == 5 and torch.equal(state.model["w"], torch.full((1000,), 5.0))
    assert side == {"run_key": "k"}
    assert sorted(p.name for p in store.folder("fp").iterdir()) == ["run.json", "state.pt"]  # no temporaries


def test_one_write_at_a_time(tmp_path, monkeypatch):
    store = ArmStore(tmp_path)
    release, running, seen = threading.Event(), [], []

    def slow_save(fp, state, side):
        running.append(state.epoch)
        seen.append(len(running))
        release.wait(5)
        running.remove(state.epoch)

    monkeypatch.setattr(store, "save_state", slow_save)
    with StateWriter(store, "fp") as writer:
        writer.save(_state(1), {})
        t = threading.Thread(target=writer.save, args=(_state(2), {}))
        t.start()
        t.join(0.3)
        assert t.is_alive()  # the second save waits for the first write
        release.set()
        t.join(5)
    assert seen == [1, 1]


@pytest.mark.parametrize("where", ["next save", "exit"])
def test_a_failed_write_is_raised(tmp_path, monkeypatch, where):
    store = ArmStore(tmp_path)

    def full_disk(fp, state, side):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_state", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with StateWriter(store, "fp") as writer:
            writer.save(_state(1), {})
            if where == "next save":
                writer.save(_state(2), {})
                pytest.fail("the second save should have raised the first one's error")


@pytest.mark.parametrize("damage", ["truncated", "not a state", "incomplete", "other device"])
def test_a_bad_state_is_moved_aside_with_one_line(tmp_path, capsys, damage):
    store = ArmStore(tmp_path)
    store.save_state("fp", _state(2, device="cuda" if damage == "other device" else "cpu"), {})
    path = store.folder("fp") / "state.pt"
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "not a state":
        path.write_bytes(b"garbage")
    elif damage == "incomplete":
        torch.save({"epoch": 2, "model": {}}, path)
    assert store.load_state("fp", "cpu") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "that arm x seed trains again" in err
    assert not path.exists() and len(list((store.root / "quarantine").iterdir())) == 1


def _finished(store: ArmStore, fp: str = "a" * 64):
    manifest = {"trained_at": "2026-01-01T00:00:00+00:00", "device": "cpu", "code_version": "x"}
    with store.finish(fp, manifest) as tmp:
        (tmp / "model.pt").write_bytes(b"weights" * 1000)
        (tmp / "metrics.json").write_text("{}")
    return fp


def test_a_finished_entry_is_checked_and_read_only(tmp_path):
    store = ArmStore(tmp_path)
    fp = _finished(store)
    folder, files = store.done(fp)
    assert set(files.files) == {"model.pt", "metrics.json"} and files.fingerprint == fp
    assert not os.access(folder / "model.pt", os.W_OK) or os.geteuid() == 0
    assert oct((folder / "model.pt").stat().st_mode & 0o777) == "0o444"


@pytest.mark.parametrize("damage", ["truncate", "edit", "remove", "extra", "manifest"])
def test_a_damaged_entry_is_never_restored(tmp_path, capsys, damage):
    store = ArmStore(tmp_path)
    fp = _finished(store)
    d = store.folder(fp) / "done"
    if damage == "truncate":
        os.truncate(d / "model.pt", 10)
    elif damage == "edit":
        os.chmod(d / "model.pt", 0o644)
        (d / "model.pt").write_bytes(b"Weights" * 1000)
    elif damage == "remove":
        os.remove(d / "metrics.json")
    elif damage == "extra":
        (d / "stray.txt").write_text("?")
    else:
        os.chmod(d / "manifest.json", 0o644)
        (d / "manifest.json").write_text("{garbled")
    assert store.done(fp) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "trains again" in err
    assert not d.exists()


def test_restore_links_and_sweep_removes_leftovers(tmp_path):
    store = ArmStore(tmp_path)
    fp = _finished(store)
    folder, _ = store.done(fp)
    ArmStore.restore(folder, tmp_path / "runs" / "arm" / "seed=0")
    out = tmp_path / "runs" / "arm" / "seed=0"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]
    assert (out / "model.pt").stat().st_ino == (folder / "model.pt").stat().st_ino  # stored once
    # what a kill -9 leaves: a temporary of a dead process, and a state of an arm that finished
    dead = store.folder(fp) / ".done.somehost-999999999.abc.tmp"
    (store.folder(fp) / f".done.{os.uname().nodename.replace('.', '_')}-999999999.abcd.tmp").mkdir()
    store.save_state(fp, _state(1), {})
    store.sweep()
    assert sorted(p.name for p in store.folder(fp).iterdir()) == ["done"]
    assert not dead.exists()


# --- what an arm's fingerprint covers ------------------------------------------------------------

def _modules(root):
    """Every project module under pipeline/ and models/: dotted name -> file."""
    return {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
            for top in ("pipeline", "models") for f in (root / top).rglob("*.py") if "__pycache__" not in f.parts}


def _in_arm_code(path, root) -> bool:
    from pipeline.core.provenance import ARM_CODE

    rel = path.relative_to(root).as_posix()
    return any(rel == p or rel.startswith(p + "/") for p in ARM_CODE)


def test_the_arm_code_imports_nothing_unhashed():
    """Every project module that the arm's code imports (at the top or inside a
    function) is itself hashed into the fingerprint, or is listed, with a reason,
    as one that cannot change what an arm computes."""
    import ast

    from pipeline.core.provenance import ARM_CODE_OUTSIDE, PACKAGE_ROOT as root

    modules = _modules(root)
    outside = set()
    for name, f in modules.items():
        if not _in_arm_code(f, root):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for target in targets:
                hit = next((m for m in (target, target.rsplit(".", 1)[0]) if m in modules), None)
                if hit and not _in_arm_code(modules[hit], root):
                    outside.add((name, hit))
    unlisted = {(a, b) for a, b in outside if b not in ARM_CODE_OUTSIDE}
    assert not unlisted, f"arm code imports unhashed modules (add them to ARM_CODE): {sorted(unlisted)}"
    assert {b for _, b in outside} == set(ARM_CODE_OUTSIDE), "ARM_CODE_OUTSIDE lists modules nothing imports"


def test_the_driver_writes_an_arms_files_with_hashed_code():
    """The files of a finished arm (the checkpoint, history.csv, metrics.json) are
    written by functions whose code is part of the fingerprint."""
    import inspect
    from pathlib import Path

    from pipeline.core.contracts import RunMetrics, write_history
    from pipeline.core.provenance import PACKAGE_ROOT as root
    from pipeline.train import stage

    for fn in (stage.checkpoint, stage.write_history, stage.RunMetrics.from_history, write_history,
               RunMetrics.model_dump_json):
        source = inspect.getsourcefile(fn)
        if "site-packages" in source:  # pydantic's own serialisation
            continue
        assert _in_arm_code(Path(source).resolve(), root), f"{fn.__qualname__} is defined outside ARM_CODE"


def test_editing_arm_code_changes_the_fingerprint_and_other_code_does_not(tmp_path):
    import shutil

    from pipeline.core.provenance import PACKAGE_ROOT, code_digest

    root = tmp_path / "repo"
    for top in ("pipeline", "models"):
        shutil.copytree(PACKAGE_ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest(root=root)
    for edited, changes in (("pipeline/core/dataset.py", True), ("pipeline/training/loop.py", True),
                            ("models/simple_cnn.py", True), ("pipeline/core/contracts.py", True),
                            ("pipeline/report/build.py", False), ("pipeline/train/stage.py", False),
                            ("pipeline/evaluate/core.py", False)):
        f = root / edited
        text = f.read_text()
        f.write_text(text + "\nEDITED = 1\n")
        assert (code_digest(root=root) != before) is changes, edited
        f.write_text(text + "\n# a comment changes nothing\n")
        assert code_digest(root=root) == before, f"{edited}: a comment changed the fingerprint"
        f.write_text(text)


def test_a_study_found_whole_in_the_arm_cache_never_imports_torch(tmp_path, prepared):
    """Importing torch takes seconds; when every run is restored the train stage
    does not load it (an import of torch fails in the second run here)."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO, env

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "epochs": 1, "batch_size": 32,
                                                          "device": "cpu"}))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch was imported')\n"
        "sys.meta_path.insert(0, _NoTorch())\n")
    cmd = [sys.executable, "-m", "pipeline.train", "--data", str(prepared), "--no-mlflow", "--no-progress"]
    first = subprocess.run(cmd, cwd=tmp_path, env=env({"PYTHONPATH": str(REPO)}), capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(cmd, cwd=tmp_path, env=env({"PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("restored from the arm cache") == 2, again.stdout + again.stderr
    # the guard itself works: a run with something to train does import torch, and fails here
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [1], "epochs": 1, "batch_size": 32,
                                                          "device": "cpu"}))
    blocked = subprocess.run(cmd, cwd=tmp_path, env=env({"PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}),
                             capture_output=True, text=True, timeout=600)
    assert blocked.returncode != 0 and "torch was imported" in blocked.stdout + blocked.stderr
