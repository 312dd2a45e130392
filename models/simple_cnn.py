"""Two-conv-block baseline."""

from __future__ import annotations

from torch import nn

from models.registry import register_model


@register_model
def simple_cnn(num_classes: int = 10) -> nn.Module:
    """Small baseline CNN: 545,290 parameters with ``num_classes=10``.

    [Conv3x3(3->32, pad 1) -> BN -> ReLU -> MaxPool2]
    [Conv3x3(32->64, pad 1) -> BN -> ReLU -> MaxPool2]
    Flatten(64*8*8 = 4096) -> Linear(4096->128) -> ReLU -> Dropout(0.5) -> Linear(128->num_classes)

    The convs keep their bias (PyTorch's default) even though BN follows;
    the stated count of 545,290 includes those 96 bias terms.
    """
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(128, num_classes),
    )
