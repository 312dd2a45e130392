"""`none`: no augmentation, the normalisation alone. Draws no random numbers."""
from __future__ import annotations

import torch

from pipeline.arm import augment as A

DRAWS = 0


def apply(x: torch.Tensor, u: torch.Tensor | None, c: A.Constants) -> torch.Tensor:
    return A.normalize_unit_(A.to_unit(x), c)
