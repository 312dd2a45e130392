"""VGG-style CNN from the common PyTorch CIFAR-10 tutorial (no BatchNorm)."""

from __future__ import annotations

from torch import nn

from models.registry import register_model


def _block(c_in: int, c_mid: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_mid, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_mid, c_out, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


@register_model
def tutorial_cnn(num_classes: int = 10) -> nn.Module:
    """Three double-conv blocks, no BN: 5,851,338 parameters with ``num_classes=10``.

    [Conv3x3(3->32)-ReLU-Conv3x3(32->64)-ReLU-MaxPool2]      (32 -> 16)
    [Conv3x3(64->128)-ReLU-Conv3x3(128->128)-ReLU-MaxPool2]  (16 -> 8)
    [Conv3x3(128->256)-ReLU-Conv3x3(256->256)-ReLU-MaxPool2] (8 -> 4)
    Flatten(256*4*4 = 4096) -> Linear(4096->1024) -> ReLU -> Linear(1024->512) -> ReLU
    -> Linear(512->num_classes)

    All convs use padding 1 and a bias (there is no BN to make it redundant).
    No dropout, as in the recipe.
    """
    return nn.Sequential(
        *_block(3, 32, 64),
        *_block(64, 128, 128),
        *_block(128, 256, 256),
        nn.Flatten(),
        nn.Linear(256 * 4 * 4, 1024),
        nn.ReLU(inplace=True),
        nn.Linear(1024, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
