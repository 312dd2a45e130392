"""Contract tests for the model registry and every registered architecture, and
each of its knobs: picked up from the registry, so a new model file is tested
without editing anything here.

Hand counts of the recipes' parameter counts, for the record:
  cnn4 (convs keep their bias; BN = 2 * channels): convs 240,832 + BN 704 +
    fc 8192->512->10 4,199,946 = 4,441,482
  tutorial_cnn (all layers with bias, no BN): convs 1,126,080 + fc 4,725,258 = 5,851,338
"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

import models
from models import create_model, first_conv, list_models, model_spec, register_model
from pipeline.evaluate.modelfacts import count_flops, receptive_field

MODELS = list_models()
# The recipes' own counts: a registered count that drifts from these is a bug.
RECIPES = {"simple_cnn": 545_290, "dilated_net": 193_280, "resnet18": 11_173_962, "cnn4": 4_441_482,
           "tutorial_cnn": 5_851_338}


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def knob_values(knob) -> list:
    """Each allowed value of a knob: every choice of a Literal or bool; a range's ends and default."""
    tp = knob.annotation
    if tp is bool:
        return [False, True]
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    meta = [m for info in typing.get_args(tp)[1:] for m in getattr(info, "metadata", [info])]
    lo = next((getattr(m, "ge", None) for m in meta if hasattr(m, "ge")), None)
    gt = next((getattr(m, "gt", None) for m in meta if hasattr(m, "gt")), None)
    hi = next((getattr(m, "le", None) for m in meta if hasattr(m, "le")), None)
    lt = next((getattr(m, "lt", None) for m in meta if hasattr(m, "lt")), None)
    values = {knob.default}
    values.add(lo if lo is not None else gt + 0.25)
    values.add(hi if hi is not None else lt - 0.05)
    return sorted(values)


KNOB_CASES = [(m, k, v) for m in MODELS for k, knob in model_spec(m).knobs.items() for v in knob_values(knob)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_forward_shape_and_finite(name: str, train: bool) -> None:
    model = create_model(name).train(train)
    with torch.no_grad():
        out = model(_batch())
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_grads(name: str) -> None:
    model = create_model(name).train()
    nn.functional.cross_entropy(model(_batch()), torch.tensor([0, 1])).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", MODELS)
def test_param_count_with_default_knobs_is_the_declared_one(name: str) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == model_spec(name).params
    if name in RECIPES:
        assert model_spec(name).params == RECIPES[name]


@pytest.mark.parametrize("name, knob, value", KNOB_CASES, ids=[f"{m}-{k}={v}" for m, k, v in KNOB_CASES])
def test_every_knob_value_builds_a_working_model(name, knob, value) -> None:
    model = create_model(name, **{knob: value}).train()
    out = model(_batch())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_knobs_change_what_they_say():
    def n(name, **kw):
        return sum(p.numel() for p in create_model(name, **kw).parameters())

    assert n("simple_cnn", batchnorm=False) == 545_290 - 2 * (32 + 64)
    assert n("simple_cnn", width=2.0) > n("simple_cnn") > n("simple_cnn", width=0.5)
    assert n("simple_cnn", dropout=0.0) == n("simple_cnn")  # dropout has no parameters...
    drop = [m for m in create_model("simple_cnn", dropout=0.25).modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drop] == [0.25]  # ...but it is the layer's rate
    plain = create_model("resnet18", residual=False)
    assert n("resnet18", residual=False) < n("resnet18")  # no 1x1 shortcut convs
    assert all(getattr(m, "downsample", None) is None for m in plain.modules())
    rf = {d: receptive_field(create_model("dilated_net", dilation=d)) for d in (1, 2, 3)}
    assert rf[1] < rf[2] < rf[3]  # a dilated conv widens the view, at no parameter cost:
    assert len({n("dilated_net", dilation=d) for d in (1, 2, 3, 4)}) == 1
    flops = lambda **kw: count_flops(create_model("dilated_net", **kw))  # noqa: E731
    assert flops(separable=True) < flops(separable=False)  # depthwise-separable is cheaper
    assert n("dilated_net", separable=False) > n("dilated_net")
    assert n("tutorial_cnn", batchnorm=True) > n("tutorial_cnn")


@pytest.mark.parametrize("name", MODELS)
def test_first_conv_is_the_input_layer(name: str) -> None:
    assert first_conv(create_model(name)).in_channels == 3


def test_list_models_is_sorted_and_the_recipes_are_there() -> None:
    assert MODELS == sorted(MODELS) and set(RECIPES) <= set(MODELS)


def test_a_new_model_is_one_file(tmp_path, monkeypatch) -> None:
    """The registry finds model files by itself: one more file, one more model."""
    (tmp_path / "models").mkdir()
    for f in Path(models.__file__).parent.glob("*.py"):
        (tmp_path / "models" / f.name).write_text(f.read_text())
    (tmp_path / "models" / "tiny_mlp.py").write_text(
        "from models.registry import register_model\n\n\n"
        "@register_model(params=30840)\n"
        "def tiny_mlp(num_classes: int = 10, *, hidden: int = 10):\n"
        "    from torch import nn\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3072, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    code = ("import models; print(models.list_models()); print(models.model_spec('tiny_mlp').params, "
            "sum(p.numel() for p in models.create_model('tiny_mlp').parameters()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, check=True)
    assert "tiny_mlp" in out.stdout.splitlines()[0] and out.stdout.splitlines()[1] == "30840 30840"


def test_unknown_name_lists_known_models_and_suggests() -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet81")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "'resnet81'" in message
    assert ", ".join(MODELS) in message
    assert "did you mean 'resnet18'?" in message


def test_duplicate_registration_refused() -> None:
    def simple_cnn(num_classes: int = 10) -> nn.Module:  # same name as the real one
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model(simple_cnn, params=20)
    assert isinstance(create_model("simple_cnn"), nn.Sequential)  # the original is still registered


def test_num_classes_is_passed_through() -> None:
    model = create_model("simple_cnn", num_classes=7).eval()
    with torch.no_grad():
        assert model(_batch()).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_gives_same_weights(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create_model(name).state_dict()

    first, second, other = build(0), build(0), build(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Guards against a vacuous pass, e.g. a builder that ignores the RNG.
    assert any(not torch.equal(first[k], other[k]) for k in first)
