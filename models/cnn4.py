"""Four-conv-block CNN with a wide classifier head."""

from __future__ import annotations

from torch import nn

from models.registry import register_model


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register_model
def cnn4(num_classes: int = 10) -> nn.Module:
    """Four Conv-BN-ReLU blocks: 4,441,482 parameters with ``num_classes=10``.

    [Conv3x3(3->32)-BN-ReLU] [Conv3x3(32->64)-BN-ReLU] MaxPool2      (32 -> 16)
    [Conv3x3(64->128)-BN-ReLU] [Conv3x3(128->128)-BN-ReLU] MaxPool2  (16 -> 8)
    Flatten(128*8*8 = 8192) -> Linear(8192->512) -> ReLU -> Dropout(0.5) -> Linear(512->num_classes)

    All convs use padding 1. The recipe does not say whether the convs have a
    bias; they keep PyTorch's default bias, as in ``simple_cnn``, and the
    count above includes it (352 terms).
    """
    return nn.Sequential(
        *_block(3, 32),
        *_block(32, 64),
        nn.MaxPool2d(2),
        *_block(64, 128),
        *_block(128, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 8 * 8, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    )
