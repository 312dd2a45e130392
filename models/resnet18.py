"""ResNet-18 with the usual CIFAR stem."""

from __future__ import annotations

import torchvision
from torch import nn

from models.registry import register_model


@register_model
def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18, CIFAR stem: 11,173,962 parameters with ``num_classes=10``.

    ``torchvision.models.resnet18(weights=None)`` with the ImageNet stem
    (7x7 stride-2 conv + max-pool, which would shrink 32x32 inputs to 8x8
    before the first block) replaced by Conv3x3(3->64, stride 1, pad 1,
    no bias) and ``maxpool = Identity``. All convs are re-initialised
    Kaiming-normal (fan_out, relu) so the new stem is initialised like the rest;
    BN and the final Linear keep torchvision's initialisation.

    ``conv1`` is replaced in place, so it stays the first ``nn.Conv2d`` in
    ``modules()`` order. The global average pool is a plain mean over the
    spatial dimensions: the same numbers as ``AdaptiveAvgPool2d(1)``, but its
    backward pass is deterministic on CUDA, where AdaptiveAvgPool2d's has no
    deterministic kernel and ``deterministic: true`` would refuse to run.
    """
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.avgpool = GlobalAvgPool()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


class GlobalAvgPool(nn.Module):
    """Mean over height and width, keeping (N, C, 1, 1) like AdaptiveAvgPool2d(1)."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True)
