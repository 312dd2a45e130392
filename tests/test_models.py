"""Contract tests for the model registry and every registered architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import create_model, first_conv, list_models, register_model

# Trainable parameters with num_classes=10. A new architecture must add its
# count here (test_every_model_declares_its_param_count enforces it).
#
# cnn4, by hand (convs keep their bias; BN = 2 * channels):
#   conv 3->32    3*32*9 + 32     =      896   BN     64
#   conv 32->64   32*64*9 + 64    =   18,496   BN    128
#   conv 64->128  64*128*9 + 128  =   73,856   BN    256
#   conv 128->128 128*128*9 + 128 =  147,584   BN    256
#   fc 8192->512  8192*512 + 512  = 4,194,816
#   fc 512->10    512*10 + 10     =    5,130
#   total 240,832 conv + 704 BN + 4,199,946 fc = 4,441,482
#
# tutorial_cnn, by hand (all layers with bias, no BN):
#   conv 3->32      896      conv 32->64     18,496
#   conv 64->128    73,856   conv 128->128  147,584
#   conv 128->256  295,168   conv 256->256  590,080
#   fc 4096->1024  4096*1024 + 1024 = 4,195,328
#   fc 1024->512   1024*512 + 512   =   524,800
#   fc 512->10                      =     5,130
#   total 1,126,080 conv + 4,725,258 fc = 5,851,338
EXPECTED_PARAMS = {
    "simple_cnn": 545_290,
    "dilated_net": 193_280,
    "resnet18": 11_173_962,
    "cnn4": 4_441_482,
    "tutorial_cnn": 5_851_338,
}

MODELS = list_models()


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


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
def test_param_count(name: str) -> None:
    model = create_model(name)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == EXPECTED_PARAMS[name]


def test_every_model_declares_its_param_count() -> None:
    assert set(MODELS) <= set(EXPECTED_PARAMS), "add the new model's count to EXPECTED_PARAMS"


@pytest.mark.parametrize("name", MODELS)
def test_first_conv_is_the_input_layer(name: str) -> None:
    conv = first_conv(create_model(name))
    assert conv.in_channels == 3


def test_list_models_is_sorted_and_complete() -> None:
    assert MODELS == sorted(EXPECTED_PARAMS)


def test_unknown_name_lists_known_models_and_suggests() -> None:
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet81")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "'resnet81'" in message
    assert ", ".join(MODELS) in message
    assert "did you mean 'resnet18'?" in message


def test_unknown_name_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(ValueError, match="known models are") as excinfo:
        create_model("zzzzzz")
    assert "did you mean" not in str(excinfo.value)


def test_duplicate_registration_refused() -> None:
    def simple_cnn(num_classes: int = 10) -> nn.Module:  # same name as the real one
        return nn.Linear(1, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model(simple_cnn)
    # The original builder must still be the registered one.
    assert isinstance(create_model("simple_cnn"), nn.Sequential)


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
