"""The CUDA path, on a GPU (each test skips itself, with the reason, where there is none).

`make gpu-check` runs these first, then the default study and the resnet18 recipe
end to end (bench/gpu_check.py).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

import models
from pipeline.core.config import parse_params
from pipeline.arm.loop import Tensors, seed_everything, set_determinism
from tests.conftest import REPO, env
from tests.synthetic import images
from tests.training import fit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _data(n_train=100, n_test=20):
    xs, ys = images(n_train, seed=0)
    xt, yt = images(n_test, seed=1)
    return (Tensors.from_numpy(xs, ys, torch.device("cuda")), Tensors.from_numpy(xt, yt, torch.device("cuda")))


def _cfg(**kw):
    return parse_params({"preset": "simple_cnn", "aug": "strong", "epochs": 2, "batch_size": 128, "seeds": [0],
                         **kw}).arms[0].train


def test_no_host_synchronisation_in_the_steps_of_an_epoch(monkeypatch):
    """Every step after the first runs under torch.cuda.set_sync_debug_mode('error'):
    a step that waited for the GPU (a .item(), a tensor copied from the host)
    would raise. The end of the epoch reads its sums once, outside."""
    synchronize = torch.cuda.synchronize

    def end_of_steps(*a, **k):  # the loop calls this once, after its last step
        torch.cuda.set_sync_debug_mode("default")
        return synchronize(*a, **k)

    monkeypatch.setattr(torch.cuda, "synchronize", end_of_steps)
    cfg = _cfg(epochs=1, grad_clip=1.0, schedule="onecycle", max_lr=0.01, aug="strong")
    train, test = _data(300)  # 3,000 images: 24 steps of 128, the last one partial
    seed_everything(0)
    model = models.create_model("simple_cnn").cuda()
    res = fit(model, train, test, cfg, 0, on_step=lambda n: torch.cuda.set_sync_debug_mode("error"))
    assert len(res.history) == 1 and math.isfinite(res.history[0].train_loss)


def test_resume_is_bitwise_equal_with_deterministic_kernels():
    set_determinism(True)
    try:
        cfg = _cfg(epochs=3, optimizer="sgd", schedule="onecycle", max_lr=0.05)
        data = _data()
        seed_everything(5)
        full_model = models.create_model(cfg.model, **cfg.knobs).cuda()
        full = fit(full_model, *data, cfg, 5)
        states = []
        seed_everything(5)
        fit(models.create_model(cfg.model, **cfg.knobs).cuda(), *data, cfg, 5, on_state=states.append)
        seed_everything(123)
        resumed_model = models.create_model(cfg.model, **cfg.knobs).cuda()
        resumed = fit(resumed_model, *data, cfg, 5, resume=states[0])
    finally:
        set_determinism(False)
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda h: [r.model_dump(exclude={"epoch_seconds", "images_per_second"}) for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_cuda_graphs_train_with_the_partial_last_batch_like_eager():
    """compile_mode reduce-overhead (CUDA graphs): a full and a partial batch per
    epoch, and the accuracy of eager mode within seed noise (3 seeds each)."""
    train, test = _data(300, 100)
    accs = {}
    for mode in ("eager", "graphs"):
        accs[mode] = []
        for seed in range(3):
            kw = {"compile": True, "compile_mode": "reduce-overhead"} if mode == "graphs" else {}
            cfg = _cfg(epochs=4, aug="none", batch_size=128, **kw)
            torch._dynamo.reset()
            seed_everything(seed)
            model = models.create_model(cfg.model, **cfg.knobs).cuda()
            accs[mode].append(fit(model, train, test, cfg, seed).history[-1].test_acc)
    from pipeline.core.stats import welch

    w = welch(accs["graphs"], accs["eager"])
    assert min(accs["graphs"]) > 0.5, accs  # it learned (chance is 0.1)
    assert w.ci.low is None or w.ci.low <= 0 <= w.ci.high or abs(w.diff) < 0.02, (accs, w)


def test_precision_auto_uses_what_the_gpu_has():
    from pipeline.core.config import resolve_precision
    from pipeline.train.engine import local_devices

    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    device, found = local_devices("auto")
    assert device == "cuda" and resolve_precision("auto", found.type, found.bf16) == expected
    cfg = _cfg(epochs=1, precision="auto", aug="none")
    seed_everything(0)
    res = fit(models.create_model("simple_cnn").cuda(), *_data(50, 10), cfg, 0)
    assert math.isfinite(res.history[0].train_loss)


def _study(tmp_path, prepared, **params) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": [0, 1, 2], "epochs": 2, **params}))
    return subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(prepared), "--no-mlflow",
                           "--no-progress"], cwd=tmp_path, env=env({"PYTHONPATH": str(REPO)}), capture_output=True,
                          text=True, timeout=900)


def test_several_jobs_share_one_gpu(tmp_path, prepared):
    out = _study(tmp_path, prepared, deterministic=True)
    assert out.returncode == 0, out.stderr[-3000:]
    slots = int(out.stdout.split(" at a time")[0].rsplit(", ", 1)[1])
    assert slots >= 2 and "(Ray on this machine)" in out.stdout, out.stdout
    runs = sorted(tmp_path.glob("runs/*/seed=*/metrics.json"))
    assert len(runs) == 6 and all(json.loads(r.read_text())["acc"] > 0.1 for r in runs)


def test_a_batch_too_large_for_the_gpu_is_one_line(tmp_path):
    """ResNet-18 four times as wide, 20,000 images in one batch: its activations alone
    need hundreds of GB."""
    from tests.conftest import write_prepared

    big = write_prepared(tmp_path / "big", train_per_class=2000, test_per_class=10)
    out = _study(tmp_path, big, preset="resnet18", knobs={"width": 4.0}, batch_size=20_000, compile=False,
                 seeds=[0], epochs=1)
    assert out.returncode == 2, out.stdout[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: resnet18 seed=0: batch_size 20000 does not fit"), line
    assert "Traceback" not in out.stderr
