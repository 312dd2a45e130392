"""Two-conv-block baseline (the default study's model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from models.registry import register_model

if TYPE_CHECKING:
    from torch import nn


@register_model(params=545_290)
def simple_cnn(num_classes: int = 10, *,
               dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5,
               batchnorm: bool = True,
               width: Annotated[float, Field(ge=0.125, le=4)] = 1.0) -> nn.Module:
    """Small baseline CNN: 545,290 parameters with the default knobs and 10 classes.

    [Conv3x3(3->32, pad 1) -> BN -> ReLU -> MaxPool2]
    [Conv3x3(32->64, pad 1) -> BN -> ReLU -> MaxPool2]
    Flatten(64*8*8 = 4096) -> Linear(4096->128) -> ReLU -> Dropout(0.5) -> Linear(128->num_classes)

    The convs keep their bias (PyTorch's default) even though BN follows;
    the stated count of 545,290 includes those 96 bias terms.

    Knobs: ``dropout`` before the last layer, ``batchnorm`` (False drops both
    BN layers), ``width`` (multiplies the 32/64 conv channels and the 128
    hidden units).

    The recipe does not state its dropout rate. The builder's default is the
    common 0.5; the simple_cnn preset sets 0.25. How that rate came about, plainly:
    the default moved 0.5 -> 0 -> 0.25, each time after test results had been
    seen. 0 was picked after the crossed study of reports/dropout/ (3 seeds per
    arm, seeds 0-2) showed augmentation helping most there. 0.25 was picked by a
    criterion (of 0, 0.25 and 0.5, the rate whose final-epoch running train
    accuracy is nearest the author's reported 88.65% without augmentation and
    69.11% with it) that was described as written before the default study ran,
    but was written after that crossed study's test results at 0.25 had been
    read; on clean (evaluated) train accuracy the same criterion would pick 0.5.
    Seeds 0-5 at 0.25 were trained and their test curves examined. No earlier
    result is therefore confirmatory: the crossed study registered in
    reports/dropout/plan.yaml tests augmentation at all three rates on 12 new
    seeds per arm, and the default study is its dropout-0.25 slice.
    """
    from torch import nn

    from models.layers import norm2d, scaled

    c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(128, width)
    norm = norm2d(batchnorm)
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        norm(c1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        norm(c2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 8 * 8, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
