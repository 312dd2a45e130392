"""`strong`: resnet18 recipe, torchvision order and tensor-kernel semantics:

1. RandomCrop(size, padding=4), zero fill, and RandomHorizontalFlip(0.5):
   exact integer gather on uint8, as in `standard`.
2. RandomRotation(15): angle ~ U(-15, 15) degrees about the centre,
   NEAREST (torchvision's default), fill 0.
3. ColorJitter(0.2, 0.2, 0.2, 0.1): brightness, contrast, saturation ~
   U(0.8, 1.2), hue shift ~ U(-0.1, 0.1) turns, as torchvision's float
   tensor kernels (contrast blends towards the per-image mean luma; hue
   via a vectorised RGB<->HSV, see pipeline.arm.augment.adjust_hue). Choice: torchvision
   shuffles the order of the four per call; here it is fixed to
   brightness, contrast, saturation, hue for every image. Float throughout, no uint8 rounding
   between steps (the PIL path rounds after each).
4. RandomAffine(degrees=0, translate=(0.1, 0.1)): torchvision draws
   tx = round(U(-0.1*W, 0.1*W)) whole pixels (round half to even) and
   likewise ty; with NEAREST such a shift is exact, so it is done as an
   integer gather with zero fill. It stays separate from step 2 because
   ColorJitter's contrast moves the rotation's black corners off 0 while
   the translation's fill stays 0, as in torchvision.
5. Normalize with `norm`.
6. RandomErasing(p=0.25, scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0) on
   the normalised tensor: torchvision's 10 attempts (area and log-uniform
   aspect ratio, h = round(sqrt(area*ratio)), w = round(sqrt(area/ratio)),
   kept if h < H and w < W) are all drawn and the first valid one used;
   none valid -> no erasing, as torchvision.

Uniform columns: 0-1 crop corner, 2 flip, 3 angle, 4-7 jitter factors,
8-9 translation x/y, 10 erase on, 11.. erase attempts (area, log ratio)
x 10, last two the erase box's top/left.
"""
from __future__ import annotations

import math

import torch

from pipeline.arm import augment as A

STRONG_PAD = 4
STRONG_ROTATE = 15.0                 # degrees
STRONG_JITTER = (0.2, 0.2, 0.2, 0.1)  # brightness, contrast, saturation, hue
STRONG_TRANSLATE = 0.1               # fraction of width/height
ERASE_P = 0.25
ERASE_SCALE = (0.02, 0.2)            # fraction of the image area
ERASE_RATIO = (0.3, 3.3)             # height / width
ERASE_ATTEMPTS = 10                  # torchvision's get_params tries 10 times
DRAWS = 11 + 2 * ERASE_ATTEMPTS + 2


def apply(x: torch.Tensor, u: torch.Tensor | None, c: A.Constants) -> torch.Tensor:
    _, _, h, w = x.shape
    pad = STRONG_PAD
    dy = pad - A.uniform_int(u[:, 0], 0, 2 * pad)
    dx = pad - A.uniform_int(u[:, 1], 0, 2 * pad)
    xf = A.to_unit(A.shift(x, dy, dx, pad, flip=u[:, 2] < 0.5))
    xf = A.rotate_nearest(xf, A.uniform(u[:, 3], -STRONG_ROTATE, STRONG_ROTATE))
    bri, con, sat, hue = STRONG_JITTER
    xf = A.color_jitter(xf, A.uniform(u[:, 4], 1 - bri, 1 + bri), A.uniform(u[:, 5], 1 - con, 1 + con),
                       A.uniform(u[:, 6], 1 - sat, 1 + sat), A.uniform(u[:, 7], -hue, hue), c.hue_n)
    xf = _translate(xf, u[:, 8], u[:, 9])
    xf = A.normalize_unit_(xf, c)
    return _random_erase_(xf, u[:, 10], u[:, 11:11 + 2 * ERASE_ATTEMPTS], u[:, -2], u[:, -1])


def _translate(x: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """RandomAffine(degrees=0, translate=(0.1, 0.1)) from uniforms: whole-pixel shift, zero fill."""
    _, _, h, w = x.shape
    max_dx, max_dy = STRONG_TRANSLATE * w, STRONG_TRANSLATE * h
    tx = torch.round(A.uniform(ux, -max_dx, max_dx)).long()
    ty = torch.round(A.uniform(uy, -max_dy, max_dy)).long()
    pad = int(round(max(max_dx, max_dy)))
    return A.shift(x, ty, tx, pad)


def _random_erase_(x: torch.Tensor, u_on: torch.Tensor, u_attempts: torch.Tensor,
                   u_top: torch.Tensor, u_left: torch.Tensor) -> torch.Tensor:
    """In place: torchvision RandomErasing(p, scale, ratio, value=0) with per-image boxes."""
    _, _, h, w = x.shape
    area = h * w * A.uniform(u_attempts[:, 0::2], *ERASE_SCALE)                     # (N, 10) pixels
    log_r = A.uniform(u_attempts[:, 1::2], math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    ratio = torch.exp(log_r)
    eh = torch.round(torch.sqrt(area * ratio)).long()
    ew = torch.round(torch.sqrt(area / ratio)).long()
    valid = (eh < h) & (ew < w)
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid attempt (0 if none)
    eh = eh.gather(1, first).squeeze(1)
    ew = ew.gather(1, first).squeeze(1)
    active = (u_on < ERASE_P) & valid.any(dim=1)
    eh = torch.where(active, eh, torch.zeros_like(eh))     # keeps the corner ranges below valid
    ew = torch.where(active, ew, torch.zeros_like(ew))
    top = A.uniform_int(u_top, torch.zeros_like(eh), h - eh)
    left = A.uniform_int(u_left, torch.zeros_like(ew), w - ew)
    box = A.box_mask(h, w, top, left, top + eh, left + ew, active)
    return x.masked_fill_(box, 0.0)
