"""VGG-style CNN from the common PyTorch CIFAR-10 tutorial (no BatchNorm)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from models.registry import register_model

if TYPE_CHECKING:
    from torch import nn


@register_model(params=5_851_338)
def tutorial_cnn(num_classes: int = 10, *,
                 batchnorm: bool = False,
                 width: Annotated[float, Field(ge=0.125, le=4)] = 1.0) -> nn.Module:
    """Three double-conv blocks, no BN: 5,851,338 parameters with the default knobs and 10 classes.

    [Conv3x3(3->32)-ReLU-Conv3x3(32->64)-ReLU-MaxPool2]      (32 -> 16)
    [Conv3x3(64->128)-ReLU-Conv3x3(128->128)-ReLU-MaxPool2]  (16 -> 8)
    [Conv3x3(128->256)-ReLU-Conv3x3(256->256)-ReLU-MaxPool2] (8 -> 4)
    Flatten(256*4*4 = 4096) -> Linear(4096->1024) -> ReLU -> Linear(1024->512) -> ReLU
    -> Linear(512->num_classes)

    All convs use padding 1 and a bias (there is no BN to make it redundant).
    No dropout, as in the recipe.

    Knobs: ``batchnorm`` (True adds BN after every conv: the ablation the
    recipe leaves out), ``width`` (multiplies every conv's channels and the
    1024/512 hidden units).
    """
    from torch import nn

    from models.layers import norm2d, scaled

    norm = norm2d(batchnorm)
    c = [scaled(n, width) for n in (32, 64, 128, 128, 256, 256)]
    h1, h2 = scaled(1024, width), scaled(512, width)

    def block(c_in: int, c_mid: int, c_out: int) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_mid, 3, padding=1), norm(c_mid), nn.ReLU(inplace=True),
                  nn.Conv2d(c_mid, c_out, 3, padding=1), norm(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        return [m for m in layers if not isinstance(m, nn.Identity)]

    return nn.Sequential(
        *block(3, c[0], c[1]),
        *block(c[1], c[2], c[3]),
        *block(c[3], c[4], c[5]),
        nn.Flatten(),
        nn.Linear(c[5] * 4 * 4, h1),
        nn.ReLU(inplace=True),
        nn.Linear(h1, h2),
        nn.ReLU(inplace=True),
        nn.Linear(h2, num_classes),
    )
