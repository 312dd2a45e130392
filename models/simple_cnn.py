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
               width: Annotated[float, Field(gt=0, le=4)] = 1.0) -> nn.Module:
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
    common 0.5; the default study (the simple_cnn preset) sets the rate this
    criterion picks, written down before the default study at that rate ran:

        Of the rates 0, 0.25 and 0.5, the one whose final-epoch running train
        accuracy (mean over seeds, 30 epochs, all training images) is nearest
        the figures the recipe's author reported, 88.65% without augmentation
        and 69.11% with it, by the larger of the two arms' absolute
        differences (a rate must fit both arms). Test accuracy does not enter.

    The crossed study in reports/dropout/ (dropout 0, 0.25, 0.5 x augmentation
    none, standard; CIFAR-10 (JPEG mirror), 3 seeds per arm, a 2-core CPU)
    measured running train accuracy of 96.76 / 85.82 / 72.48% without
    augmentation and 73.51 / 66.76 / 56.56% with it: differences of at most
    8.11, 2.83 and 16.17 points, so the criterion picks 0.25. (An earlier
    default, 0, was chosen after that study's test results were seen, because
    the author's claims held there; that choice is withdrawn. This criterion
    uses train-side figures only.) The crossed study is the primary result;
    its differences and their adjusted p-values are in its report.
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
