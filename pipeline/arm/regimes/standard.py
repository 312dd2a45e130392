"""`standard`: RandomCrop(size, padding=4) + RandomHorizontalFlip(p=0.5) + Normalize.

Mirrors torchvision: the uint8 image is zero padded (fill=0, i.e. black,
which normalises to -mean/std), the crop's top-left corner is uniform over
the 9x9 possible positions, and the flip is applied to the crop. Done on
uint8 as one exact integer gather (no interpolation), then normalised.
Uniform columns: 0 crop row, 1 crop column, 2 flip.
"""
from __future__ import annotations

import torch

from pipeline.arm import augment as A

STANDARD_PAD = 4  # pixels of zero padding for RandomCrop
DRAWS = 3    # uniforms per image: crop row, crop column, flip


def apply(x: torch.Tensor, u: torch.Tensor | None, c: A.Constants) -> torch.Tensor:
    pad = STANDARD_PAD
    # Crop corner o in [0, 2*pad] of the padded image == shift the image by pad - o.
    dy = pad - A.uniform_int(u[:, 0], 0, 2 * pad)
    dx = pad - A.uniform_int(u[:, 1], 0, 2 * pad)
    flip = u[:, 2] < 0.5
    return A.normalize_unit_(A.to_unit(A.shift(x, dy, dx, pad, flip)), c)
