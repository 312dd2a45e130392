"""Batched, per-image-random data augmentation on uint8 CIFAR tensors.

An `Augmenter` binds one regime and one normalisation to a device, once, before
the loop: its constants (mean, std, ...) are built there at construction, so a
training step copies nothing from the host. Called on a uint8 NCHW batch
(values 0..255) it returns a float32 NCHW batch on the same device, normalised
with ``NORMS[norm]``.

Design:

* No Python loop over images: per-image parameters are drawn as tensors and
  applied with batched torch ops -- integer shifts as pad-then-``gather``,
  rotations/scalings as one ``F.affine_grid`` + ``F.grid_sample``, cut-outs and
  erasing as broadcast boolean masks.
* Randomness: each regime draws *all* its random numbers with a single
  ``torch.rand((N, K), generator=generator, device=x.device)`` call, column ``k``
  holding parameter ``k`` for every image. A fixed seed and input therefore
  give bitwise-identical output on CPU. The drawing is split from the
  applying (``_apply_<regime>(x, u, c)``), so the same uniforms can be
  replayed on another device to check that CPU and CUDA mean the same thing.
* Mirrored library semantics are those of torchvision's *tensor* kernels
  (``torchvision.transforms.v2.functional``) and albumentations'
  ``ShiftScaleRotate``/``CoarseDropout``; each regime's docstring lists where
  it deviates and why. (A whole-batch library, torchvision.transforms.v2 or
  kornia, would draw one parameter set per batch, or per image in a Python loop.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.training import AUGMENTATIONS, NORMS

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class Constants:
    """What the kernels need besides the batch, resident on its device."""

    mean: torch.Tensor  # (1, 3, 1, 1) float32
    std: torch.Tensor  # (1, 3, 1, 1) float32
    hue_n: torch.Tensor  # (1, 3, 1, 1) float32: 5, 3, 1 (see _adjust_hue)


def constants(norm: str, device: torch.device | str = "cpu") -> Constants:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(sorted(NORMS))}")
    mean, std = NORMS[norm]

    def col(values):
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    return Constants(col(mean), col(std), col((5.0, 3.0, 1.0)))


class Augmenter:
    """One regime and one normalisation on one device: `aug(x, generator)` for
    training batches, `aug.normalize(x)` for evaluation. The regime is resolved
    here, once; calls do no name lookups and no checks."""

    def __init__(self, regime: str, norm: str, device: torch.device | str):
        if regime not in _REGIMES:
            raise ValueError(f"unknown augmentation {regime!r}; known: {', '.join(AUGMENTATIONS)}")
        self.regime, self.norm = regime, norm
        self.c = constants(norm, device)
        self._apply, self._k = _REGIMES[regime]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = _uniforms(x, self._k, generator) if self._k else None
        return self._apply(x, u, self.c)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Eval path, no augmentation: uint8 -> float [0,1] -> (x - mean) / std."""
        return _normalize_unit_(_to_unit(x_uint8), self.c)


def augment(name: str, x: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """Apply regime `name` to the uint8 NCHW batch `x`, checked; return normalised float32 NCHW.

    `generator` must live on x's device (None: torch's default generator for it).
    For one-off use; the training loop builds an `Augmenter` once instead.
    """
    _check_batch(x)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, batch is on {x.device}; put both on one device")
    return Augmenter(name, norm, x.device)(x, generator)


def normalize(x_uint8: torch.Tensor, norm: str) -> torch.Tensor:
    """Eval path, checked: uint8 -> float [0,1] -> (x - mean) / std."""
    _check_batch(x_uint8)
    return _normalize_unit_(_to_unit(x_uint8), constants(norm, x_uint8.device))


# --------------------------------------------------------------------------
# Validation and shared helpers
# --------------------------------------------------------------------------

def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a uint8 batch of shape (N, 3, H, W), got {what}")


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (torchvision ToTensor / ToDtype(scale=True))."""
    return x.to(torch.float32).div_(255.0)


def _normalize_unit_(x: torch.Tensor, c: Constants) -> torch.Tensor:
    """In place: float [0,1] -> (x - mean) / std, per channel."""
    return x.sub_(c.mean).div_(c.std)


def _uniforms(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """All of a regime's randomness in one call: (N, k) uniforms in [0, 1)."""
    return torch.rand((x.shape[0], k), generator=generator, device=x.device)


def _uniform_int(u: torch.Tensor, low: int | torch.Tensor, high: int | torch.Tensor) -> torch.Tensor:
    """Map uniforms in [0,1) to integers uniform in [low, high] (inclusive), int64."""
    span = high - low + 1
    k = torch.floor(u * span).long()
    # float32 rounding can turn u*span into exactly span for u just below 1.
    k = k.clamp(max=span - 1) if isinstance(span, int) else torch.minimum(k, span - 1)
    return k + low


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _bcast(v: torch.Tensor) -> torch.Tensor:
    """Per-image (N,) values -> (N, 1, 1, 1) to broadcast over C, H, W."""
    return v.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------
# Geometric kernels
# --------------------------------------------------------------------------

def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int,
           flip: torch.Tensor | None = None) -> torch.Tensor:
    """Exact integer shift with zero fill: out[n, :, r, c] = x[n, :, r - dy[n], c' - dx[n]].

    c' = W-1-c where flip[n] (a horizontal flip applied *after* the shift), else c.
    |dy|, |dx| <= pad. Implemented as one zero-padded copy plus one `gather`
    over flattened pixels: no interpolation, works for any dtype.
    """
    n, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = x.new_zeros((n, c, hp, wp))
    padded[:, :, pad:pad + h, pad:pad + w] = x
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    row_idx = rows.unsqueeze(0) - dy.unsqueeze(1) + pad                     # (N, H)
    if flip is not None:
        cols = torch.where(flip.unsqueeze(1), (w - 1) - cols, cols)         # (N, W)
    col_idx = cols - dx.unsqueeze(1) + pad                                  # (N, W)
    flat = (row_idx.unsqueeze(2) * wp + col_idx.unsqueeze(1)).view(n, 1, h * w)
    out = padded.view(n, c, hp * wp).gather(2, flat.expand(n, c, h * w))
    return out.view(n, c, h, w)


def _affine_theta(angle_deg: torch.Tensor, scale: torch.Tensor, tx_px: torch.Tensor, ty_px: torch.Tensor,
                  h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Inverse affine matrices (N, 2, 3) for F.affine_grid.

    The forward map, in pixel coordinates centred on the image centre with y
    pointing down, is  p_out = scale * R(angle) p_in + (tx, ty),  where a
    positive angle turns the picture counter-clockwise -- the convention of
    both cv2.getRotationMatrix2D and torchvision's rotate/affine. grid_sample
    needs the inverse, p_in = R(angle)^T (p_out - t) / scale, expressed in its
    normalised coordinates: pixel * 2/(size-1) with align_corners=True (-1, +1
    are the centres of the edge pixels) or pixel * 2/size with False (-1, +1
    are the outer edges of the edge pixels).
    """
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # Normalised units per pixel, per axis.
    sx = 2.0 / (w - 1) if align_corners else 2.0 / w
    sy = 2.0 / (h - 1) if align_corners else 2.0 / h
    # A = D R^T D^-1 / scale with D = diag(sx, sy); R^T = [[cos, -sin], [sin, cos]].
    a00, a01 = cos, -sin * (sx / sy)
    a10, a11 = sin * (sy / sx), cos
    tx, ty = tx_px * sx, ty_px * sy
    b0 = -(a00 * tx + a01 * ty)
    b1 = -(a10 * tx + a11 * ty)
    return torch.stack([torch.stack([a00, a01, b0], 1), torch.stack([a10, a11, b1], 1)], 1)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)


def _shift_scale_rotate(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor,
                        dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """albumentations ShiftScaleRotate on a float batch: bilinear, BORDER_REFLECT_101.

    Rotation by angle_deg (counter-clockwise) and scaling about the centre
    ((W-1)/2, (H-1)/2) in pixel units, as cv2.getRotationMatrix2D with
    albumentations' centre (w/2 - 0.5, h/2 - 0.5), then a shift of (dx*W, dy*H)
    pixels. With align_corners=True the normalised coordinate +-1 is the centre
    of an edge pixel, so grid_sample's "reflection" padding mirrors about the
    edge pixel's centre without repeating it -- exactly cv2.BORDER_REFLECT_101
    (with align_corners=False it would be BORDER_REFLECT, which repeats it).
    """
    _, _, h, w = x.shape
    theta = _affine_theta(angle_deg, scale, dx * w, dy * h, h, w, align_corners=True)
    return _warp(x, theta, mode="bilinear", padding_mode="reflection", align_corners=True)


def _rotate_nearest(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """torchvision rotate(angle, NEAREST, expand=False, center=None, fill=0) on a float batch.

    Same grid as torchvision's tensor kernel (pixel centres, centre of the
    image, align_corners=False), so outside-the-frame pixels read 0.
    """
    _, _, h, w = x.shape
    zeros = torch.zeros_like(angle_deg)
    theta = _affine_theta(angle_deg, torch.ones_like(angle_deg), zeros, zeros, h, w, align_corners=False)
    return _warp(x, theta, mode="nearest", padding_mode="zeros", align_corners=False)


def _box_mask(h: int, w: int, top: torch.Tensor, left: torch.Tensor, bottom: torch.Tensor,
              right: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) bool mask of rows [top, bottom) x cols [left, right) where active."""
    rows = torch.arange(h, device=top.device).unsqueeze(0)
    cols = torch.arange(w, device=top.device).unsqueeze(0)
    in_rows = (rows >= top.unsqueeze(1)) & (rows < bottom.unsqueeze(1))     # (N, H)
    in_cols = (cols >= left.unsqueeze(1)) & (cols < right.unsqueeze(1))     # (N, W)
    in_rows = in_rows & active.unsqueeze(1)
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


# --------------------------------------------------------------------------
# Colour kernels (torchvision tensor semantics, batched with per-image factors)
# --------------------------------------------------------------------------

def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    """torchvision _blend for float images: factor*x + (1-factor)*other, clamped to [0, 1]."""
    f = _bcast(factor)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # per-image mean luma
    return _blend(x, mean, factor)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """torchvision adjust_hue: rotate each image's hue by `shift` turns (N,), via HSV.

    RGB -> HSV: v = max, delta = max - min, hue in sixths of a turn
    h6 = (g-b)/delta if r is the max, 2 + (b-r)/delta if g, else 4 + (r-g)/delta.
    HSV -> RGB (branch-free form): channel(n) = v - v*s*clamp(min(k, 4-k), 0, 1)
    with k = (n + h6) mod 6 and n = 5, 3, 1 for r, g, b (`n`, (1, 3, 1, 1) on x's device). Since v*s = delta,
    saturation is never formed, and grey pixels (delta = 0) come back as v
    whatever their hue, so they need no special case. Same result as
    torchvision's _rgb2hsv/_hsv2rgb up to float rounding.
    """
    r, g, b = x.unbind(1)                                                   # (N, H, W) each
    # Elementwise max/min of three planes: much cheaper on CPU than a size-3 reduction.
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    is_r, is_g = maxc == r, maxc == g
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    base = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    # |num| <= delta, so where delta = 0 (grey) num = 0 and the quotient is 0.
    h6 = num.div_(delta.clamp_min(1e-12)).add_(base).add_(6.0 * shift.view(-1, 1, 1)).unsqueeze(1)
    k = torch.remainder(n + h6, 6.0)                                        # (N, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * ramp


def _color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor, hue: torch.Tensor, hue_n: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors, in the fixed order brightness, contrast, saturation, hue."""
    x = _adjust_brightness(x, brightness)
    x = _adjust_contrast(x, contrast)
    x = _adjust_saturation(x, saturation)
    return _adjust_hue(x, hue, hue_n)


# --------------------------------------------------------------------------
# Regimes: draw uniforms, then apply
# --------------------------------------------------------------------------

def _apply_none(x: torch.Tensor, u: None, c: Constants) -> torch.Tensor:
    """No augmentation: exactly `normalize(x, norm)`. Draws no random numbers."""
    return _normalize_unit_(_to_unit(x), c)


STANDARD_PAD = 4  # pixels of zero padding for RandomCrop
STANDARD_K = 3    # uniforms per image: crop row, crop column, flip


def _apply_standard(x: torch.Tensor, u: torch.Tensor, c: Constants) -> torch.Tensor:
    """RandomCrop(size, padding=4) + RandomHorizontalFlip(p=0.5) + Normalize.

    Mirrors torchvision: the uint8 image is zero padded (fill=0, i.e. black,
    which normalises to -mean/std), the crop's top-left corner is uniform over
    the 9x9 possible positions, and the flip is applied to the crop. Done on
    uint8 as one exact integer gather (no interpolation), then normalised.
    Uniform columns: 0 crop row, 1 crop column, 2 flip.
    """
    pad = STANDARD_PAD
    # Crop corner o in [0, 2*pad] of the padded image == shift the image by pad - o.
    dy = pad - _uniform_int(u[:, 0], 0, 2 * pad)
    dx = pad - _uniform_int(u[:, 1], 0, 2 * pad)
    flip = u[:, 2] < 0.5
    return _normalize_unit_(_to_unit(_shift(x, dy, dx, pad, flip)), c)


SSR_SHIFT = 0.0625       # fraction of width/height
SSR_SCALE = 0.1          # scale uniform in [1 - 0.1, 1 + 0.1]
SSR_ROTATE = 7.0         # degrees
CUTOUT_SIZE = 16         # pixels, side of the square hole
SSR_CUTOUT_K = 9


def _apply_ssr_cutout(x: torch.Tensor, u: torch.Tensor, c: Constants) -> torch.Tensor:
    """dilated_net recipe, albumentations 1.x semantics (the API the recipe's
    arguments belong to), in this order:

    1. HorizontalFlip(p=0.5).
    2. ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=7, p=0.5):
       per image dx, dy ~ U(-0.0625, 0.0625) of the width/height, scale ~
       U(0.9, 1.1), angle ~ U(-7, 7) degrees, about the image centre, bilinear,
       border BORDER_REFLECT_101 (the 1.x default; 2.x deprecates the transform
       for Affine, whose default border is constant). grid_sample with
       padding_mode="reflection" and align_corners=True reproduces
       REFLECT_101 exactly (see _shift_scale_rotate). Differences from
       cv2.warpAffine: cv2 quantises sample positions to 1/32 pixel and rounds
       the result back to uint8; here the result stays float32.
    3. CoarseDropout(max_holes=1, max_height=16, max_width=16, fill_value=mean,
       p=0.5) (1.x arguments; 2.x renamed them num_holes_range, hole_height_range,
       fill): one 16x16 hole whose top-left corner is uniform over the positions
       that keep the whole hole inside the image, as 1.x draws it
       (randint(0, H - 16), inclusive). The mean fill is written as an exact 0
       after normalisation (albumentations would fill a rounded uint8 mean).
    4. Normalize with `norm`.

    Uniform columns: 0 flip, 1 SSR on, 2 angle, 3 scale, 4 dx, 5 dy,
    6 hole on, 7 hole top, 8 hole left.
    """
    _, _, h, w = x.shape
    flip = _bcast(u[:, 0] < 0.5)
    x = torch.where(flip, x.flip(-1), x)                     # exact, still uint8
    xf = _to_unit(x)
    warped = _shift_scale_rotate(
        xf,
        angle_deg=_uniform(u[:, 2], -SSR_ROTATE, SSR_ROTATE),
        scale=_uniform(u[:, 3], 1.0 - SSR_SCALE, 1.0 + SSR_SCALE),
        dx=_uniform(u[:, 4], -SSR_SHIFT, SSR_SHIFT),
        dy=_uniform(u[:, 5], -SSR_SHIFT, SSR_SHIFT),
    )
    # Warping the whole batch and selecting keeps untouched images bit-exact
    # and avoids a data-dependent subset (which would sync a CUDA stream).
    xf = torch.where(_bcast(u[:, 1] < 0.5), warped, xf)
    xf = _normalize_unit_(xf, c)
    top = _uniform_int(u[:, 7], 0, h - CUTOUT_SIZE)
    left = _uniform_int(u[:, 8], 0, w - CUTOUT_SIZE)
    hole = _box_mask(h, w, top, left, top + CUTOUT_SIZE, left + CUTOUT_SIZE, u[:, 6] < 0.5)
    return xf.masked_fill_(hole, 0.0)


STRONG_PAD = 4
STRONG_ROTATE = 15.0                 # degrees
STRONG_JITTER = (0.2, 0.2, 0.2, 0.1)  # brightness, contrast, saturation, hue
STRONG_TRANSLATE = 0.1               # fraction of width/height
ERASE_P = 0.25
ERASE_SCALE = (0.02, 0.2)            # fraction of the image area
ERASE_RATIO = (0.3, 3.3)             # height / width
ERASE_ATTEMPTS = 10                  # torchvision's get_params tries 10 times
STRONG_K = 11 + 2 * ERASE_ATTEMPTS + 2


def _apply_strong(x: torch.Tensor, u: torch.Tensor, c: Constants) -> torch.Tensor:
    """resnet18 recipe, torchvision order and tensor-kernel semantics:

    1. RandomCrop(size, padding=4), zero fill, and RandomHorizontalFlip(0.5):
       exact integer gather on uint8, as in `standard`.
    2. RandomRotation(15): angle ~ U(-15, 15) degrees about the centre,
       NEAREST (torchvision's default), fill 0.
    3. ColorJitter(0.2, 0.2, 0.2, 0.1): brightness, contrast, saturation ~
       U(0.8, 1.2), hue shift ~ U(-0.1, 0.1) turns, as torchvision's float
       tensor kernels (contrast blends towards the per-image mean luma; hue
       via a vectorised RGB<->HSV, see _adjust_hue). Choice: torchvision
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
    _, _, h, w = x.shape
    pad = STRONG_PAD
    dy = pad - _uniform_int(u[:, 0], 0, 2 * pad)
    dx = pad - _uniform_int(u[:, 1], 0, 2 * pad)
    xf = _to_unit(_shift(x, dy, dx, pad, flip=u[:, 2] < 0.5))
    xf = _rotate_nearest(xf, _uniform(u[:, 3], -STRONG_ROTATE, STRONG_ROTATE))
    bri, con, sat, hue = STRONG_JITTER
    xf = _color_jitter(xf, _uniform(u[:, 4], 1 - bri, 1 + bri), _uniform(u[:, 5], 1 - con, 1 + con),
                       _uniform(u[:, 6], 1 - sat, 1 + sat), _uniform(u[:, 7], -hue, hue), c.hue_n)
    xf = _translate(xf, u[:, 8], u[:, 9])
    xf = _normalize_unit_(xf, c)
    return _random_erase_(xf, u[:, 10], u[:, 11:11 + 2 * ERASE_ATTEMPTS], u[:, -2], u[:, -1])


def _translate(x: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor) -> torch.Tensor:
    """RandomAffine(degrees=0, translate=(0.1, 0.1)) from uniforms: whole-pixel shift, zero fill."""
    _, _, h, w = x.shape
    max_dx, max_dy = STRONG_TRANSLATE * w, STRONG_TRANSLATE * h
    tx = torch.round(_uniform(ux, -max_dx, max_dx)).long()
    ty = torch.round(_uniform(uy, -max_dy, max_dy)).long()
    pad = int(round(max(max_dx, max_dy)))
    return _shift(x, ty, tx, pad)


def _random_erase_(x: torch.Tensor, u_on: torch.Tensor, u_attempts: torch.Tensor,
                   u_top: torch.Tensor, u_left: torch.Tensor) -> torch.Tensor:
    """In place: torchvision RandomErasing(p, scale, ratio, value=0) with per-image boxes."""
    _, _, h, w = x.shape
    area = h * w * _uniform(u_attempts[:, 0::2], *ERASE_SCALE)                     # (N, 10) pixels
    log_r = _uniform(u_attempts[:, 1::2], math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
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
    top = _uniform_int(u_top, torch.zeros_like(eh), h - eh)
    left = _uniform_int(u_left, torch.zeros_like(ew), w - ew)
    box = _box_mask(h, w, top, left, top + eh, left + ew, active)
    return x.masked_fill_(box, 0.0)


# Regime name -> (kernel, uniforms drawn per image).
_REGIMES: dict[str, tuple[Callable, int]] = {
    "none": (_apply_none, 0),
    "standard": (_apply_standard, STANDARD_K),
    "ssr_cutout": (_apply_ssr_cutout, SSR_CUTOUT_K),
    "strong": (_apply_strong, STRONG_K),
}
assert set(_REGIMES) == set(AUGMENTATIONS), "every regime of pipeline.training.AUGMENTATIONS needs a kernel"
