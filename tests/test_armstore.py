"""The arm store: every state save lands, in order, and a failed write is never
silent; a finished entry is restored only when every checksum matches, and a
damaged entry or state is moved aside with one line."""
from __future__ import annotations

import errno
import os
import threading

import pytest
import torch

from pipeline.core.jobs import TrainState
from pipeline.train.armstore import ArmStore, StateWriter


def _state(epoch: int, device: str = "cpu") -> TrainState:
    return TrainState(epoch=epoch, model={"w": torch.full((1000,), float(epoch))}, optimizer={}, schedule=None,
                      scaler=None, rng={}, history=[{"epoch": e} for e in range(1, epoch + 1)], best_epoch=1,
                      best_acc=0.5, best_state=None, diagnostics=None, device=device)


def test_saves_land_in_order_and_the_last_one_stays(tmp_path):
    store = ArmStore(tmp_path)
    with StateWriter(store, "fp") as writer:
        for epoch in range(1, 6):
            writer.save(_state(epoch))
    state = store.load_state("fp", "cpu")
    assert state.epoch == 5 and torch.equal(state.model["w"], torch.full((1000,), 5.0))
    assert sorted(p.name for p in store.folder("fp").iterdir()) == ["state.pt"]  # no temporaries


def test_one_write_at_a_time(tmp_path, monkeypatch):
    store = ArmStore(tmp_path)
    release, running, seen = threading.Event(), [], []

    def slow_save(fp, state):
        running.append(state.epoch)
        seen.append(len(running))
        release.wait(5)
        running.remove(state.epoch)

    monkeypatch.setattr(store, "save_state", slow_save)
    with StateWriter(store, "fp") as writer:
        writer.save(_state(1))
        t = threading.Thread(target=writer.save, args=(_state(2),))
        t.start()
        t.join(0.3)
        assert t.is_alive()  # the second save waits for the first write
        release.set()
        t.join(5)
    assert seen == [1, 1]


@pytest.mark.parametrize("where", ["next save", "exit"])
def test_a_failed_write_is_raised(tmp_path, monkeypatch, where):
    store = ArmStore(tmp_path)

    def full_disk(fp, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_state", full_disk)
    with pytest.raises(OSError, match="No space left"):
        with StateWriter(store, "fp") as writer:
            writer.save(_state(1))
            if where == "next save":
                writer.save(_state(2))
                pytest.fail("the second save should have raised the first one's error")


@pytest.mark.parametrize("damage", ["truncated", "not a state", "incomplete", "other device", "a flipped byte",
                                    "another arm's"])
def test_a_bad_state_is_moved_aside_with_one_line(tmp_path, capsys, damage):
    """Never resumed: a state cut short, garbled, of the old unbound format, from
    another device, with one byte flipped, or copied over from another arm x seed."""
    store = ArmStore(tmp_path)
    store.save_state("fp", _state(2, device="cuda" if damage == "other device" else "cpu"))
    path = store.folder("fp") / "state.pt"
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "not a state":
        path.write_bytes(b"garbage")
    elif damage == "incomplete":
        torch.save({"epoch": 2, "model": {}}, path)
    elif damage == "a flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "another arm's":
        store.save_state("other", _state(3))
        os.replace(store.folder("other") / "state.pt", path)
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


def test_restore_copies_and_sweep_removes_leftovers(tmp_path):
    store = ArmStore(tmp_path)
    fp = _finished(store)
    folder, _ = store.done(fp)
    ArmStore.restore(folder, tmp_path / "runs" / "arm" / "seed=0")
    out = tmp_path / "runs" / "arm" / "seed=0"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]
    assert not os.path.samefile(out / "model.pt", folder / "model.pt")  # an edit of runs/ never reaches the cache
    # what a kill -9 leaves: a temporary of a dead process, and a state of an arm that finished
    dead = store.folder(fp) / ".done.somehost-999999999.abc.tmp"
    (store.folder(fp) / f".done.{os.uname().nodename.replace('.', '_')}-999999999.abcd.tmp").mkdir()
    store.save_state(fp, _state(1))
    store.sweep()
    assert sorted(p.name for p in store.folder(fp).iterdir()) == ["done"]
    assert not dead.exists()


# --- what an arm's fingerprint covers ------------------------------------------------------------

SIMPLE = ["pipeline/arm/job.py", "models/simple_cnn.py", "pipeline/arm/regimes/standard.py"]


STORAGE = {"pipeline/core/contracts.py", "pipeline/core/record.py", "pipeline/train/armstore.py",
           "pipeline/core/io.py", "pipeline/train/driver.py"}


def test_an_arms_code_is_what_its_job_model_and_regime_import():
    """Followed through every import (top-level or inside a function): the loop, the
    augmentation kernels, the model registry; not another model or regime, not the
    storage code (what writes, checks and reads the files), nor the modules listed as
    unable to change a result."""
    from pipeline.core.provenance import NOT_FOLLOWED, code_files

    files = set(code_files(SIMPLE))
    assert {"pipeline/arm/loop.py", "pipeline/arm/augment.py", "pipeline/arm/diagnostics.py",
            "models/__init__.py", "models/registry.py", *SIMPLE} <= files
    assert not files & {"models/resnet18.py", "pipeline/arm/regimes/strong.py", "pipeline/core/config.py",
                        "pipeline/core/jobs.py", *STORAGE}
    # each module left out is one the arm's code does import (the list names no stale module)
    everything = code_files(SIMPLE, skip={})
    for module in NOT_FOLLOWED:
        assert module.replace(".", "/") + ".py" in everything, module


def test_what_a_record_holds_is_computed_by_hashed_code_and_stored_by_code_that_is_not():
    """The numbers of a finished arm (its training, both checkpoints' evaluation, the
    first layer's filters) come from functions inside the fingerprint; the files they
    are written to and read from, from functions outside it."""
    import inspect
    from pathlib import Path

    from pipeline.arm.job import _evaluated, run_job
    from pipeline.arm.loop import evaluate, train_epochs
    from pipeline.core.contracts import Checkpoint, history_csv
    from pipeline.core.provenance import PACKAGE_ROOT as root, code_files
    from pipeline.core.record import ArmRecord
    from pipeline.train.armstore import read_state, write_state

    files = set(code_files(SIMPLE))

    def where(fn):
        return Path(inspect.getsourcefile(inspect.unwrap(fn))).resolve().relative_to(root).as_posix()

    for fn in (run_job, _evaluated, evaluate, train_epochs):
        assert where(fn) in files, f"{fn.__qualname__} is not hashed"
    for fn in (ArmRecord.save, ArmRecord.load, ArmRecord.of, Checkpoint.save, history_csv, write_state, read_state):
        assert where(fn) not in files, f"{fn.__qualname__} is storage, yet hashed"


def test_editing_an_arms_code_changes_its_fingerprint_and_other_code_does_not(tmp_path):
    import shutil

    from pipeline.core.provenance import PACKAGE_ROOT, code_files, digest

    root = tmp_path / "repo"
    for top in ("pipeline", "models"):
        shutil.copytree(PACKAGE_ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    before = digest(code_files(SIMPLE, root))
    for edited, changes in (("pipeline/arm/loop.py", True), ("models/simple_cnn.py", True),
                            ("pipeline/arm/regimes/standard.py", True), ("pipeline/arm/job.py", True),
                            ("pipeline/core/contracts.py", False), ("pipeline/core/record.py", False),
                            ("pipeline/train/armstore.py", False), ("pipeline/core/io.py", False),
                            ("pipeline/core/hardware.py", False), ("pipeline/core/errors.py", False),
                            ("models/layers.py", True), ("models/resnet18.py", False),
                            ("pipeline/arm/regimes/strong.py", False), ("pipeline/core/config.py", False),
                            ("pipeline/core/dataset.py", False), ("pipeline/report/build.py", False),
                            ("pipeline/train/stage.py", False), ("pipeline/evaluate/core.py", False)):
        f = root / edited
        text = f.read_text()
        f.write_text(text + "\nEDITED = 1\n")
        assert (digest(code_files(SIMPLE, root)) != before) is changes, edited
        f.write_text(text + "\n# a comment changes nothing\n")
        assert digest(code_files(SIMPLE, root)) == before, f"{edited}: a comment changed the fingerprint"
        f.write_text(text)


def _train(proj, env_extra=None):
    import subprocess
    import sys

    from tests.conftest import env

    return subprocess.run([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-mlflow",
                           "--no-progress"], cwd=proj, env=env({"PYTHONPATH": str(proj), **(env_extra or {})}),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_project(tmp_path, prepared):
    """This project's code and a one-epoch, one-seed default study on the synthetic data."""
    import shutil

    import yaml

    from tests.conftest import REPO

    proj = tmp_path / "proj"
    for top in ("pipeline", "models"):
        shutil.copytree(REPO / top, proj / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(prepared, proj / "prepared")
    (proj / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "epochs": 1, "batch_size": 32,
                                                      "device": "cpu"}))
    return proj


def test_a_new_model_or_regime_restores_the_cached_arms_and_a_same_size_edit_retrains(small_project):
    """Content, not size and modification time, decides: adding a model file and a
    regime leaves the default arms cached; a one-character edit of simple_cnn.py
    that keeps its size and modification time retrains them."""
    proj = small_project
    first = _train(proj)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("restored from the arm cache") == 0
    tiny = (proj / "models" / "tutorial_cnn.py").read_text().replace("def tutorial_cnn(", "def tiny_cnn(")
    (proj / "models" / "tiny_cnn.py").write_text(tiny)
    (proj / "pipeline" / "arm" / "regimes" / "mirror.py").write_text(
        (proj / "pipeline" / "arm" / "regimes" / "none.py").read_text())
    again = _train(proj)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("restored from the arm cache") == 2, again.stdout
    model = proj / "models" / "simple_cnn.py"
    text, stat = model.read_text(), model.stat()
    assert "scaled(128, width)" in text
    model.write_text(text.replace("scaled(128, width)", "scaled(129, width)"))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model.stat().st_size == stat.st_size and model.stat().st_mtime_ns == stat.st_mtime_ns
    edited = _train(proj)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert edited.stdout.count("restored from the arm cache") == 0 and "2 to train" in edited.stdout, edited.stdout


def test_a_study_found_whole_in_the_arm_cache_never_imports_torch(small_project):
    """Importing torch takes seconds; when every run is restored the train stage
    does not load it (an import of torch fails in the second run here)."""
    import yaml

    proj = small_project
    blocker = proj / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch was imported')\n"
        "sys.meta_path.insert(0, _NoTorch())\n")
    first = _train(proj)
    assert first.returncode == 0, first.stderr
    blocked = {"PYTHONPATH": f"{blocker}{os.pathsep}{proj}"}
    again = _train(proj, blocked)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("restored from the arm cache") == 2, again.stdout + again.stderr
    # the guard itself works: a run with something to train does import torch, and fails here
    (proj / "params.yaml").write_text(yaml.safe_dump({"seeds": [1], "epochs": 1, "batch_size": 32,
                                                      "device": "cpu"}))
    failed = _train(proj, blocked)
    assert failed.returncode != 0 and "torch was imported" in failed.stdout + failed.stderr


def test_the_fingerprint_covers_the_datas_identity(prepared):
    """Other prepared arrays, another subset of them, or another validation split are
    other data: the same arm x seed gets another fingerprint for each."""
    from pipeline.core.config import parse_params
    from pipeline.train.plan import Identity
    from pipeline.train.stage import load_data

    ids = []
    for data in ({}, {"train_limit": 60}, {"train_limit": 60, "subset_seed": 1}, {"test_limit": 30},
                 {"val_split": 0.2}):
        params = parse_params({"seeds": [0], "epochs": 1, "data": data})
        ids.append(load_data(prepared, params)[2])
    cfg = parse_params({"seeds": [0]}).arms[0].train
    fps = {Identity(data_id=i, versions={}, device_type="cpu").fingerprint(cfg, 0) for i in ids}
    assert len(fps) == len(ids)
    other = {**ids[0], "data_sha256": "0" * 64}  # the same subset of other arrays
    assert Identity(data_id=other, versions={}, device_type="cpu").fingerprint(cfg, 0) not in fps


def test_an_entry_of_an_earlier_version_without_a_record_trains_again(small_project):
    """An entry in the layout earlier versions wrote (history.csv, metrics.json, no
    record.npz) under a fingerprint this code computes: set aside with one line and
    trained again, never restored half."""
    proj = small_project
    first = _train(proj)
    assert first.returncode == 0, first.stderr[-3000:]
    import json

    entry = sorted((proj / ".arm-cache").glob("*/done"))[0]
    (entry / "record.npz").unlink()
    manifest = entry / "manifest.json"
    os.chmod(manifest, 0o644)
    m = json.loads(manifest.read_text())
    m["files"].pop("record.npz")
    manifest.write_text(json.dumps(m))
    again = _train(proj)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has no record.npz (an earlier version)" in again.stderr
    assert again.stdout.count("epoch 1/1") == 1 and again.stdout.count("restored from the arm cache") == 1
