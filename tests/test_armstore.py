"""The arm store's background state writer: every save lands, in order, and a
failed write is never silent."""
from __future__ import annotations

import errno
import threading

import pytest
import torch

from pipeline.armstore import ArmStore, StateWriter


def test_saves_land_in_order_and_the_last_one_stays(tmp_path):
    store = ArmStore(tmp_path)
    with StateWriter(store, "fp") as writer:
        for epoch in range(1, 6):
            writer.save({"epoch": epoch, "w": torch.full((1000,), float(epoch))})
    state = store.load_state("fp")
    assert state["epoch"] == 5 and torch.equal(state["w"], torch.full((1000,), 5.0))
    assert sorted(p.name for p in store.folder("fp").iterdir()) == ["state.pt"]  # no temporaries


def test_one_write_at_a_time(tmp_path, monkeypatch):
    store = ArmStore(tmp_path)
    release, running, seen = threading.Event(), [], []

    def slow_save(fp, state):
        running.append(state["epoch"])
        seen.append(len(running))
        release.wait(5)
        running.remove(state["epoch"])

    monkeypatch.setattr(store, "save_state", slow_save)
    with StateWriter(store, "fp") as writer:
        writer.save({"epoch": 1})
        t = threading.Thread(target=writer.save, args=({"epoch": 2},))
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
            writer.save({"epoch": 1})
            if where == "next save":
                writer.save({"epoch": 2})
                pytest.fail("the second save should have raised the first one's error")


def test_a_state_saved_on_another_device_is_not_resumed(tmp_path, capsys):
    """CUDA and CPU runs differ numerically (and their generators' states do not
    fit each other): a state from the other device means starting over."""
    from pipeline.config import parse_params
    from pipeline.trainer import Tensors
    from pipeline.train import train_one
    from tests.synthetic import images

    params = parse_params({"seeds": [0], "aug": "none", "epochs": 2, "batch_size": 32})
    arm = params.arms[0]
    store = ArmStore(tmp_path)
    store.save_state("fp", {"device": "cuda", "epoch": 1, "mlflow_run_id": None})
    xs, ys = images(4, seed=0)
    data = Tensors(torch.from_numpy(xs), torch.from_numpy(ys))
    metrics, _ = train_one(arm, 0, data, data, tmp_path / "out", store=store, fp="fp", tracker=None,
                           parent=None, provenance={"code_version": "x"}, progress=False)
    assert "trained on cuda, not cpu; training from the start" in capsys.readouterr().err
    history = (tmp_path / "out" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    assert store.load_state("fp") is None  # dropped once the arm finished
