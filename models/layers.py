"""Layers shared by the architectures (imported by builders, never at registry time)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def scaled(channels: int, width: float) -> int:
    """A layer's width under a width multiplier: at least one channel."""
    return max(1, round(channels * width))


def norm2d(enabled: bool):
    """BatchNorm2d, or a no-op in its place when BatchNorm is ablated."""
    return nn.BatchNorm2d if enabled else (lambda channels: nn.Identity())


class GlobalAvgPool(nn.Module):
    """Mean over height and width, keeping (N, C, 1, 1) like AdaptiveAvgPool2d(1).

    The same numbers as ``AdaptiveAvgPool2d(1)``, but its backward pass is
    deterministic on CUDA, where AdaptiveAvgPool2d's has no deterministic kernel
    and ``deterministic: true`` would refuse to run.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class PlainBlock(BasicBlock):
    """BasicBlock without its residual connection: conv-BN-ReLU-conv-BN-ReLU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = None  # a shortcut with nothing to add it to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's width times `width` (1.0: torchvision's own)."""

    def __init__(self, *args, width: float = 1.0, **kwargs):
        self._width = width  # read by _make_layer during ResNet.__init__
        super().__init__(*args, **kwargs)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # the first stage: its input is the stem's output
            self.inplanes = scaled(64, self._width)
        return super()._make_layer(block, scaled(planes, self._width), blocks, stride, dilate)


class Classifier(nn.Module):
    """uint8 images (N, 3, H, W) -> logits: normalisation, then the network.
    What a checkpoint is served as (an MLflow model, for example)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() / 255.0 - self.mean) / self.std)
