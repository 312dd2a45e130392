"""ResNet-18 with the usual CIFAR stem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from models.registry import register_model

if TYPE_CHECKING:
    from torch import nn


@register_model(params=11_173_962)
def resnet18(num_classes: int = 10, *,
             residual: bool = True,
             batchnorm: bool = True,
             width: Annotated[float, Field(ge=0.125, le=4)] = 1.0) -> nn.Module:
    """torchvision ResNet-18, CIFAR stem: 11,173,962 parameters with the default knobs and 10 classes.

    ``torchvision.models.resnet18(weights=None)`` with the ImageNet stem
    (7x7 stride-2 conv + max-pool, which would shrink 32x32 inputs to 8x8
    before the first block) replaced by Conv3x3(3->64, stride 1, pad 1,
    no bias) and ``maxpool = Identity``. All convs are re-initialised
    Kaiming-normal (fan_out, relu) so the new stem is initialised like the rest;
    BN and the final Linear keep torchvision's initialisation.

    ``conv1`` is replaced in place, so it stays the first ``nn.Conv2d`` in
    ``modules()`` order. The global average pool is a plain mean over the
    spatial dimensions (models.layers.GlobalAvgPool: deterministic on CUDA).

    Knobs: ``residual`` (False: every block is conv-BN-ReLU-conv-BN-ReLU, with
    no shortcut and so no 1x1 downsampling convs: an 18-layer plain net),
    ``batchnorm`` (False drops every BN), ``width`` (multiplies every stage's
    64/128/256/512 channels).
    """
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    from models.layers import GlobalAvgPool, PlainBlock, ScaledResNet, norm2d, scaled

    norm = norm2d(batchnorm)
    model = ScaledResNet(BasicBlock if residual else PlainBlock, [2, 2, 2, 2], num_classes=num_classes,
                         norm_layer=norm, width=width)
    stem = scaled(64, width)
    model.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.avgpool = GlobalAvgPool()
    if width != 1.0:
        model.bn1 = norm(stem)
        model.fc = nn.Linear(scaled(512, width), num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model
