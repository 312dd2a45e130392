"""Four-conv-block CNN with a wide classifier head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from models.registry import register_model

if TYPE_CHECKING:
    from torch import nn


@register_model(params=4_441_482)
def cnn4(num_classes: int = 10, *,
         dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
         batchnorm: bool = True,
         width: Annotated[float, Field(ge=0.125, le=4)] = 1.0) -> nn.Module:
    """Four Conv-BN-ReLU blocks: 4,441,482 parameters with the default knobs and 10 classes.

    [Conv3x3(3->32)-BN-ReLU] [Conv3x3(32->64)-BN-ReLU] MaxPool2      (32 -> 16)
    [Conv3x3(64->128)-BN-ReLU] [Conv3x3(128->128)-BN-ReLU] MaxPool2  (16 -> 8)
    Flatten(128*8*8 = 8192) -> Linear(8192->512) -> ReLU -> Dropout(0.5) -> Linear(512->num_classes)

    All convs use padding 1. The recipe does not say whether the convs have a
    bias; they keep PyTorch's default bias, as in ``simple_cnn``, and the
    count above includes it (352 terms).

    Knobs: ``dropout`` in the head, ``batchnorm`` (False drops every BN),
    ``width`` (multiplies every conv's channels and the 512 hidden units).
    """
    from torch import nn

    from models.layers import norm2d, scaled

    norm = norm2d(batchnorm)
    c = [scaled(n, width) for n in (32, 64, 128, 128)]
    hidden = scaled(512, width)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, c[0]),
        *block(c[0], c[1]),
        nn.MaxPool2d(2),
        *block(c[1], c[2]),
        *block(c[2], c[3]),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c[3] * 8 * 8, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
