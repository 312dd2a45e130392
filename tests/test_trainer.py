"""The one training loop: it learns, it is reproducible, every option runs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from pipeline.config import parse_params
from pipeline.trainer import Tensors, build_optimizer, build_schedule, fit, resolve_device, seed_everything
from tests.synthetic import images


def _data(n_train=20, n_test=10):
    xs, ys = images(n_train, seed=0)
    xt, yt = images(n_test, seed=1)
    return Tensors(torch.from_numpy(xs), torch.from_numpy(ys)), Tensors(torch.from_numpy(xt), torch.from_numpy(yt))


def _cfg(**kw):
    base = {"preset": "simple_cnn", "aug": "standard", "epochs": 2, "batch_size": 32, "seeds": [0]}
    return parse_params({**base, **kw}).arms[0].train


def _train(cfg, seed=0, data=None):
    train, test = data or _data()
    seed_everything(seed, cfg.deterministic)
    model = models.create_model(cfg.model)
    return model, fit(model, train, test, cfg, seed, progress=False)


def test_it_learns_and_records_every_epoch():
    cfg = _cfg(epochs=4, aug="none")
    _, res = _train(cfg, data=_data(40, 20))
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    for row in res.history:
        assert set(row) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                            "epoch_seconds", "images_per_second"}
        assert 0 <= row["test_acc"] <= 1 and row["images_per_second"] > 0
    assert res.history[-1]["test_acc"] > 0.5  # chance is 0.1
    assert res.last.preds.shape == (200,) and res.last.probs.shape == (200, 10)
    assert torch.allclose(res.last.probs.sum(1), torch.ones(200), atol=1e-4)


def test_same_seed_gives_bitwise_identical_weights_and_metrics():
    cfg = _cfg()
    m1, r1 = _train(cfg, seed=3)
    m2, r2 = _train(cfg, seed=3)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in h]
    assert strip(r1.history) == strip(r2.history)


def test_another_seed_gives_other_weights():
    cfg = _cfg(epochs=1)
    m1, _ = _train(cfg, seed=0)
    m2, _ = _train(cfg, seed=1)
    assert not torch.equal(next(iter(m1.state_dict().values())), next(iter(m2.state_dict().values())))


@pytest.mark.parametrize("overrides", [
    {"optimizer": "sgd", "nesterov": True, "weight_decay": 5e-4},
    {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine"},
    {"optimizer": "sgd", "schedule": "onecycle", "max_lr": 0.05, "grad_clip": 1.0},
    {"precision": "bf16"},
    {"model": "dilated_net", "aug": "ssr_cutout", "norm": "cifar10_legacy"},
    {"aug": "strong", "keep_best": False},
    {"deterministic": True, "model": "resnet18", "batch_size": 8},
])
def test_options_train(overrides):
    cfg = _cfg(epochs=1, **overrides)
    model, res = _train(cfg, data=_data(8, 4))
    assert len(res.history) == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (res.best_state is None) == (not cfg.keep_best)


def test_onecycle_peaks_at_max_lr_over_all_steps():
    cfg = _cfg(optimizer="sgd", schedule="onecycle", max_lr=0.05, epochs=3)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_schedule(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(30):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.05, rel=0.05)
    assert lrs[-1] < 0.001


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        from pipeline.errors import PipelineError

        with pytest.raises(PipelineError, match="CUDA is not available"):
            resolve_device("cuda")


def test_diagnostics_are_recorded_per_layer_per_epoch():
    cfg = _cfg(epochs=2)
    model, res = _train(cfg, data=_data(8, 4))
    d = res.diagnostics
    assert len(d["layers"]) == 4  # simple_cnn: two convs, two linears
    assert len(d["gradients"]) == len(d["update_ratio"]) == 2 * len(d["layers"])
    assert all(g["max_abs"] >= g["mean_abs"] > 0 for g in d["gradients"])
    assert all(r["ratio"] > 0 for r in d["update_ratio"])  # every layer moved
    hist = [w for w in d["weights"] if w["epoch"] == 2]
    assert len(hist) == len(d["layers"])
    n_weights = {n: p.numel() for n, p in model.named_parameters()}
    for w in hist:  # "conv2 (4)" is the weight "4.weight"
        assert sum(w["counts"]) == n_weights[w["layer"].split("(")[1].rstrip(")") + ".weight"]


def test_resume_from_any_epoch_state_is_bitwise_equal_to_an_uninterrupted_run():
    cfg = _cfg(epochs=3, optimizer="sgd", schedule="onecycle", max_lr=0.05)
    data = _data(8, 4)
    full_model, full = _train(cfg, seed=5, data=data)
    states = []
    seed_everything(5, False)
    model = models.create_model(cfg.model)
    fit(model, *data, cfg, 5, progress=False, on_state=lambda s: states.append(s))
    assert [s["epoch"] for s in states] == [1, 2, 3]
    # survives a round trip through torch.save / weights_only load, like the state file does
    import io

    buf = io.BytesIO()
    torch.save(states[0], buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    seed_everything(123, False)  # a fresh process would start from another RNG state
    resumed_model = models.create_model(cfg.model)
    resumed = fit(resumed_model, *data, cfg, 5, progress=False, resume=saved)
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in h]
    assert strip(resumed.history) == strip(full.history)
    assert resumed.diagnostics == full.diagnostics
