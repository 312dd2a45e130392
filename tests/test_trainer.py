"""The one training loop: it learns, it is reproducible, every option runs."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import numpy as np
import torch

import models
from pipeline.core.config import parse_params
from pipeline.core.contracts import RunMetrics
from pipeline.arm.loop import Tensors, build_optimizer, build_schedule, resolve_device, seed_everything, set_determinism
from tests.synthetic import images
from tests.training import fit


def _data(n_train=20, n_test=10):
    xs, ys = images(n_train, seed=0)
    xt, yt = images(n_test, seed=1)
    return Tensors(torch.from_numpy(xs), torch.from_numpy(ys)), Tensors(torch.from_numpy(xt), torch.from_numpy(yt))


def _cfg(**kw):
    base = {"preset": "simple_cnn", "aug": "standard", "epochs": 2, "batch_size": 32, "seeds": [0]}
    return parse_params({**base, **kw}).arms[0].train


def _train(cfg, seed=0, data=None):
    train, test = data or _data()
    seed_everything(seed)
    model = models.create_model(cfg.model, **cfg.knobs)
    return model, fit(model, train, test, cfg, seed)


def test_it_learns_and_records_every_epoch():
    cfg = _cfg(epochs=4, aug="none")
    _, res = _train(cfg, data=_data(40, 20))
    assert [r.epoch for r in res.history] == [1, 2, 3, 4]
    for row in res.history:
        assert 0 <= row.test_acc <= 1 and row.images_per_second > 0
    assert res.history[-1].test_acc > 0.5  # chance is 0.1


def test_a_job_ends_with_both_checkpoints_evaluated_as_its_weights_say():
    """The record's numbers: the job evaluates its last and best checkpoints on every
    test image and, clean, on the images it trained on; they agree with the history's
    test accuracy and with evaluating the returned weights anew."""
    from pipeline.arm.augment import Augmenter
    from pipeline.arm.job import run_job
    from pipeline.arm.loop import evaluate
    from pipeline.core.jobs import Data, Finished, JobSpec

    (tr, te) = _data(40, 20)
    data = Data("d", tr.x.numpy(), tr.y.numpy(), te.x.numpy(), te.y.numpy())
    cfg = _cfg(epochs=3, aug="standard", precision="fp32")
    done = [e for e in run_job(JobSpec("a", 0, cfg, "fp", "cpu", 64), data, None) if isinstance(e, Finished)][0]
    last, best = done.evaluated["last"], done.evaluated["best"]
    assert last.epoch == 3 and best.epoch == done.best_epoch
    y = te.y.numpy()
    assert (last.test_pred == y).mean() == pytest.approx(done.history[-1].test_acc)
    assert (best.test_pred == y).mean() == pytest.approx(max(r.test_acc for r in done.history))
    assert last.test_pred.dtype == np.uint8 and last.test_confidence.shape == (len(y),)
    for ev, weights in ((last, done.model), (best, done.best_state)):
        model = models.create_model(cfg.model, **cfg.knobs)
        model.load_state_dict(weights)
        model = model.to(memory_format=torch.channels_last)
        aug = Augmenter("none", cfg.norm, "cpu")
        again, clean = evaluate(model, te, aug, "fp32", 64), evaluate(model, tr, aug, "fp32", 64)
        assert np.array_equal(again.preds.numpy(), ev.test_pred) and again.loss == pytest.approx(ev.test_loss)
        assert clean.acc == pytest.approx(ev.train_acc) and clean.loss == pytest.approx(ev.train_loss)
    assert done.filters.shape == (32, 3, 3, 3)


def test_same_seed_gives_bitwise_identical_weights_and_metrics():
    cfg = _cfg()
    m1, r1 = _train(cfg, seed=3)
    m2, r2 = _train(cfg, seed=3)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert _strip(r1.history) == _strip(r2.history)


def test_with_validation_images_the_best_checkpoint_is_chosen_on_them():
    """The held-out images are evaluated every epoch, the test set never (the evaluate
    stage looks at it once); the best checkpoint is the epoch of their peak. Without
    them, the test set's peak. (The held-out labels here are all wrong, so their peak
    is where the test set's is not.)"""
    train, test = _data(40, 20)
    xv, yv = images(10, seed=7)
    val = Tensors(torch.from_numpy(xv), (torch.from_numpy(yv) + 1) % 10)
    cfg = _cfg(epochs=4, aug="none")
    seed_everything(0)
    model = models.create_model(cfg.model, **cfg.knobs)
    res = fit(model, train, test, cfg, 0, val=val)
    accs = [r.val_acc for r in res.history]
    assert all(a is not None for a in accs) and all(r.val_loss > 0 for r in res.history)
    assert all(r.test_acc is None and r.test_loss is None for r in res.history)
    assert res.best_epoch == 1 + accs.index(max(accs))
    metrics = RunMetrics.from_history(res.history)
    assert (metrics.held_out, metrics.best_epoch, metrics.best_acc) == ("val", res.best_epoch, max(accs))
    _, plain = _train(cfg, data=(train, test))
    tests = [r.test_acc for r in plain.history]
    assert all(r.val_acc is None for r in plain.history)
    assert plain.best_epoch == 1 + tests.index(max(tests)) != res.best_epoch
    assert RunMetrics.from_history(plain.history).held_out == "test"


def _strip(history):
    return [r.model_dump(exclude={"epoch_seconds", "images_per_second"}) for r in history]


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
    {"model": "resnet18", "batch_size": 8, "knobs": {"residual": False, "width": 0.25}},
    {"model": "dilated_net", "knobs": {"dilation": 3, "separable": False, "batchnorm": False}},
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


def test_deterministic_kernels_are_a_process_setting():
    try:
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        model, res = _train(_cfg(epochs=1, model="resnet18", batch_size=8), data=_data(8, 4))
        assert len(res.history) == 1
    finally:
        set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_evaluation_batches_fit_the_device_and_never_change_the_result():
    from pipeline.arm.augment import Augmenter
    from pipeline.arm.loop import eval_batch_size, evaluate

    assert eval_batch_size("auto", torch.device("cpu")) == 256
    assert eval_batch_size("auto", torch.device("cuda")) == 1024
    assert eval_batch_size(100, torch.device("cuda")) == 100
    train, test = _data(4, 30)
    seed_everything(0)
    model = models.create_model("simple_cnn")
    aug = Augmenter("none", "cifar10", "cpu")
    a = evaluate(model, test, aug, "fp32", 7)
    b = evaluate(model, test, aug, "fp32", 256)
    assert torch.equal(a.preds, b.preds) and abs(a.loss - b.loss) < 1e-5
    assert torch.allclose(a.probs, b.probs, atol=1e-5)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        from pipeline.core.errors import PipelineError

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
    seed_everything(5)
    model = models.create_model(cfg.model, **cfg.knobs)
    fit(model, *data, cfg, 5, on_state=lambda s: states.append(s))
    assert [s.epoch for s in states] == [1, 2, 3]
    # survives a round trip through the state file (torch.save, a weights_only load)
    import tempfile
    from pathlib import Path

    from pipeline.train.armstore import read_state, write_state

    with tempfile.TemporaryDirectory() as d:
        write_state(Path(d) / "state.pt", "fp", states[0])
        saved = read_state(Path(d) / "state.pt", "fp")
    seed_everything(123)  # a fresh process would start from another RNG state
    resumed_model = models.create_model(cfg.model, **cfg.knobs)
    resumed = fit(resumed_model, *data, cfg, 5, resume=saved)
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.diagnostics == full.diagnostics


def test_an_incomplete_state_is_refused(tmp_path):
    import hashlib
    import io
    import json

    from pipeline.train.armstore import STATE_FORMAT, read_state

    for bad in ({"epoch": 1}, [1, 2]):
        buf = io.BytesIO()
        torch.save(bad, buf)
        payload = buf.getvalue()
        header = json.dumps({"fingerprint": "fp", "sha256": hashlib.sha256(payload).hexdigest()}).encode()
        (tmp_path / "state.pt").write_bytes(STATE_FORMAT + b" " + header + b"\n" + payload)
        with pytest.raises(ValueError, match="not a complete training state"):
            read_state(tmp_path / "state.pt", "fp")


# Tensor calls that wait for the device to catch up (on CUDA: a host synchronisation)
SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "masked_select", "unique"}
# Tensors made from host data on a device (on CUDA: a blocking host-to-device copy)
FROM_HOST = {"tensor", "as_tensor"}


class _SyncCounter(torch.overrides.TorchFunctionMode):
    """Counts, by call site in the project's own code, the calls that would make a
    GPU wait: syncing reads, and tensors built from host data on a device."""

    def __init__(self):
        super().__init__()
        self.sites: dict[tuple[str, int, str], int] = {}
        root = Path(models.__file__).resolve().parents[1]
        self.ours = tuple(str(root / d) + "/" for d in ("pipeline", "models"))  # not a .venv in the repo

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        is_bool_index = name == "__getitem__" and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in _flat(args[1:]))
        from_host = name in FROM_HOST and kwargs.get("device") is not None
        to_device = name == "to" and any(isinstance(a, (str, torch.device)) for a in args[1:]) or "device" in kwargs
        if name in SYNCING or is_bool_index or from_host or (name == "to" and to_device):
            frame = sys._getframe(1)  # the direct caller: torch's own internals are not counted
            while frame.f_code.co_filename.endswith("torch/overrides.py"):
                frame = frame.f_back
            if frame.f_code.co_filename.startswith(self.ours):
                site = (Path(frame.f_code.co_filename).name, frame.f_lineno, name)
                self.sites[site] = self.sites.get(site, 0) + 1
        return func(*args, **kwargs)


def _flat(items):
    for a in items:
        yield from (_flat(a) if isinstance(a, (tuple, list)) else (a,))


def _count(aug: str, n_train: int) -> dict:
    cfg = _cfg(epochs=1, aug=aug, batch_size=20, grad_clip=1.0, schedule="onecycle", max_lr=0.01)
    train, test = _data(n_train, 2)
    seed_everything(0)
    model = models.create_model(cfg.model, **cfg.knobs)
    with _SyncCounter() as counter:
        fit(model, train, test, cfg, 0, diagnostics=True)
    return counter.sites


@pytest.mark.parametrize("aug", ["none", "standard", "ssr_cutout", "strong"])
def test_no_host_synchronisation_per_step(aug):
    """Per-step work stays on the device: the calls that would stall a GPU (syncing
    reads, tensors copied from the host) are the same for 2 steps as for 16."""
    counts = [_count(aug, n) for n in (4, 32)]  # x 10 classes, batch 20: 2 and 16 steps
    assert counts[0] == counts[1]
    assert counts[0], "the counter saw none of the once-per-epoch reads: it is not counting"


def test_the_sync_counter_sees_a_copy_from_the_host_per_step(monkeypatch):
    """The test above would fail if a step built a constant on the device (checked by
    putting one back into the normalisation)."""
    from pipeline.arm import augment as A

    source = ("def per_step_constant(x, c):\n"
              "    mean = torch.tensor([0.4914, 0.4822, 0.4465], device=x.device).view(1, 3, 1, 1)\n"
              "    return original(x, Constants(mean, c.std, c.hue_n))\n")
    scope = {"torch": torch, "original": A.normalize_unit_, "Constants": A.Constants}
    exec(compile(source, A.__file__, "exec"), scope)  # as if written in augment.py
    monkeypatch.setattr(A, "normalize_unit_", scope["per_step_constant"])
    assert _count("standard", 4) != _count("standard", 32)


def test_compiled_step_keeps_two_static_graphs_with_a_partial_last_batch():
    """compile + reduce-overhead (CUDA graphs on a GPU; plain inductor here): 50 images
    in batches of 32 give a full and a partial batch, compiled once each, never again."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = _cfg(epochs=2, batch_size=32, compile=True, compile_mode="reduce-overhead")
    seed_everything(0)
    model = models.create_model(cfg.model, **cfg.knobs)
    start = [p.detach().clone() for p in model.parameters()]
    train, test = _data(5, 2)
    res = fit(model, train, test, cfg, 0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    assert len(res.history) == 2
    assert all(math.isfinite(r.train_loss) for r in res.history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(start, model.parameters()))  # every layer trained
