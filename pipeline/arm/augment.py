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
  applying (``apply(x, u, c)`` of each regime), so the same uniforms can be
  replayed on another device to check that CPU and CUDA mean the same thing.
* One file per regime (pipeline/arm/regimes/<name>.py: ``DRAWS``, the uniforms
  it takes per image, and ``apply``); this file holds the kernels they share.
  An arm's fingerprint covers its own regime's file, so a new regime retrains
  no arm of another.
* Mirrored library semantics are those of torchvision's *tensor* kernels
  (``torchvision.transforms.v2.functional``) and albumentations'
  ``ShiftScaleRotate``/``CoarseDropout``; each regime's docstring lists where
  it deviates and why. (A whole-batch library, torchvision.transforms.v2 or
  kornia, would draw one parameter set per batch, or per image in a Python loop.)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Per-channel mean and std of the normalisation, RGB (the names: pipeline.core.config.NORM_NAMES).
NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The widely copied std (per-image std averaged, not the dataset std),
    # used by the dilated_net recipe.
    "cifar10_legacy": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

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
        self.regime, self.norm = regime, norm
        self.c = constants(norm, device)
        mod = regime_module(regime)
        self._apply, self._k = mod.apply, mod.DRAWS

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = _uniforms(x, self._k, generator) if self._k else None
        return self._apply(x, u, self.c)

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Eval path, no augmentation: uint8 -> float [0,1] -> (x - mean) / std."""
        return normalize_unit_(to_unit(x_uint8), self.c)


def regime_module(name: str):
    """pipeline.arm.regimes.<name>: its `DRAWS` and `apply(x, u, c)`."""
    if not (Path(__file__).with_name("regimes") / f"{name}.py").is_file():
        raise ValueError(f"unknown augmentation {name!r}: no pipeline/arm/regimes/{name}.py")
    return importlib.import_module(f"pipeline.arm.regimes.{name}")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1 (torchvision ToTensor / ToDtype(scale=True))."""
    return x.to(torch.float32).div_(255.0)


def normalize_unit_(x: torch.Tensor, c: Constants) -> torch.Tensor:
    """In place: float [0,1] -> (x - mean) / std, per channel."""
    return x.sub_(c.mean).div_(c.std)


def _uniforms(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """All of a regime's randomness in one call: (N, k) uniforms in [0, 1)."""
    return torch.rand((x.shape[0], k), generator=generator, device=x.device)


def uniform_int(u: torch.Tensor, low: int | torch.Tensor, high: int | torch.Tensor) -> torch.Tensor:
    """Map uniforms in [0,1) to integers uniform in [low, high] (inclusive), int64."""
    span = high - low + 1
    k = torch.floor(u * span).long()
    # float32 rounding can turn u*span into exactly span for u just below 1.
    k = k.clamp(max=span - 1) if isinstance(span, int) else torch.minimum(k, span - 1)
    return k + low


def uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def bcast(v: torch.Tensor) -> torch.Tensor:
    """Per-image (N,) values -> (N, 1, 1, 1) to broadcast over C, H, W."""
    return v.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------
# Geometric kernels
# --------------------------------------------------------------------------

def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int,
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


def shift_scale_rotate(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor,
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


def rotate_nearest(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """torchvision rotate(angle, NEAREST, expand=False, center=None, fill=0) on a float batch.

    Same grid as torchvision's tensor kernel (pixel centres, centre of the
    image, align_corners=False), so outside-the-frame pixels read 0.
    """
    _, _, h, w = x.shape
    zeros = torch.zeros_like(angle_deg)
    theta = _affine_theta(angle_deg, torch.ones_like(angle_deg), zeros, zeros, h, w, align_corners=False)
    return _warp(x, theta, mode="nearest", padding_mode="zeros", align_corners=False)


def box_mask(h: int, w: int, top: torch.Tensor, left: torch.Tensor, bottom: torch.Tensor,
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
    f = bcast(factor)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, 0.0, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # per-image mean luma
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
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


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor, hue: torch.Tensor, hue_n: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors, in the fixed order brightness, contrast, saturation, hue."""
    x = adjust_brightness(x, brightness)
    x = adjust_contrast(x, contrast)
    x = adjust_saturation(x, saturation)
    return adjust_hue(x, hue, hue_n)
