"""Tests for pipeline.arm.augment and its regimes: batched, per-image-random augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.arm import augment as A
from pipeline.arm.augment import NORMS, Augmenter, regime_module
from pipeline.arm.regimes import ssr_cutout, standard, strong
from pipeline.core.config import AUGMENTATIONS, NORM_NAMES
from tests.training import augment, normalize

RANDOM_REGIMES = ["standard", "ssr_cutout", "strong"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _asymmetric_image() -> torch.Tensor:
    """(3, 32, 32) uint8: a left-to-right ramp plus a bright block at the top left."""
    ramp = torch.linspace(10, 240, 32).round().to(torch.uint8)
    img = ramp.view(1, 1, 32).expand(3, 32, 32).clone()
    img[0, 2:10, 3:9] = 255
    img[2, 20:25, 1:4] = 0
    return img


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_pixels(y: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: pixels whose three channels are exactly 0 (the cut-out/erase fill)."""
    return (y == 0).all(dim=1)


# ---------------------------------------------------------------- basics

def test_every_regime_has_a_module_and_every_norm_its_constants():
    from pathlib import Path

    files = {f.stem for f in Path(A.__file__).with_name("regimes").glob("*.py")} - {"__init__"}
    assert files == set(AUGMENTATIONS)
    for name in AUGMENTATIONS:
        assert Augmenter(name, "cifar10", "cpu").regime == name and regime_module(name).DRAWS >= 0
    assert set(NORMS) == set(NORM_NAMES)


def test_augmenter_equals_the_checked_one_off_call():
    x = _images(16, seed=3)
    for name in AUGMENTATIONS:
        aug = Augmenter(name, "cifar10", "cpu")
        assert torch.equal(aug(x, _gen(5)), augment(name, x, "cifar10", _gen(5)))
        assert torch.equal(aug.normalize(x), normalize(x, "cifar10"))


@pytest.mark.parametrize("name", ["none", *RANDOM_REGIMES])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_shape_dtype_device_finite(name, norm):
    x = _images(16)
    y = augment(name, x, norm, _gen(1))
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert torch.isfinite(y).all()
    assert x.dtype == torch.uint8  # input untouched
    assert torch.equal(x, _images(16))


def test_none_equals_normalize():
    x = _images(8)
    assert torch.equal(augment("none", x, "cifar10", _gen(0)), normalize(x, "cifar10"))
    assert torch.equal(augment("none", x, "cifar10_legacy", None), normalize(x, "cifar10_legacy"))


def test_normalize_formula():
    x = _images(4)
    mean, std = NORMS["cifar10_legacy"]
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, "cifar10_legacy"), ref)


def test_unknown_names_raise_valueerror_listing_known():
    x = _images(2)
    with pytest.raises(ValueError) as err:
        augment("nope", x, "cifar10", None)
    msg = str(err.value)
    assert "\n" not in msg and "regimes/nope.py" in msg
    with pytest.raises(ValueError) as err:
        augment("standard", x, "imagenet", None)
    assert all(norm in str(err.value) for norm in NORMS)
    with pytest.raises(ValueError):
        normalize(x, "imagenet")


def test_bad_batch_raises_valueerror():
    with pytest.raises(ValueError):
        augment("standard", torch.zeros(2, 3, 32, 32), "cifar10", None)  # float, not uint8
    with pytest.raises(ValueError):
        augment("standard", torch.zeros(3, 32, 32, dtype=torch.uint8), "cifar10", None)


# ---------------------------------------------------------------- determinism

@pytest.mark.parametrize("name", RANDOM_REGIMES)
def test_same_seed_same_output_different_seed_different(name):
    x = _images(32)
    a = augment(name, x, "cifar10", _gen(123))
    b = augment(name, x, "cifar10", _gen(123))
    c = augment(name, x, "cifar10", _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- standard

def _reference_standard(img: torch.Tensor, dy: int, dx: int, flip: bool) -> torch.Tensor:
    """Per image, the obvious way: zero-pad by 4, slice the 32x32 window, maybe flip."""
    padded = F.pad(img, (4, 4, 4, 4))  # zeros on the uint8 image, as torchvision's fill=0
    crop = padded[:, 4 - dy:36 - dy, 4 - dx:36 - dx]
    return crop.flip(-1) if flip else crop


def test_standard_is_exact_integer_shift_with_zero_fill():
    x = _images(64, seed=3)
    y = augment("standard", x, "cifar10", _gen(7))
    seen = set()
    for i in range(len(x)):
        match = None
        for flip in (False, True):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    ref = normalize(_reference_standard(x[i], dy, dx, flip).unsqueeze(0), "cifar10")[0]
                    if torch.equal(y[i], ref):
                        match = (dy, dx, flip)
                        break
                if match:
                    break
            if match:
                break
        assert match is not None, f"image {i} is not an integer shift (+flip) of its input"
        seen.add(match)
    assert len(seen) > 20  # offsets vary from image to image


def test_standard_per_image_randomness_and_flip_rate():
    img = _asymmetric_image()
    x = img.expand(64, 3, 32, 32).contiguous()
    y = augment("standard", x, "cifar10", _gen(11))
    distinct = {tuple(t.flatten().tolist()) for t in y}
    assert len(distinct) > 30
    # Flipped iff the bright block (top left in the original) now sits in the right half.
    red = y[:, 0, 2:10]
    flipped = red[..., 16:].max(dim=-1).values.max(dim=-1).values > red[..., :16].max(dim=-1).values.max(dim=-1).values
    assert 20 <= int(flipped.sum()) <= 44


def test_standard_padding_is_normalised_black():
    x = torch.full((256, 3, 32, 32), 200, dtype=torch.uint8)
    y = augment("standard", x, "cifar10", _gen(5))
    black = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), "cifar10").view(3)
    white = normalize(torch.full((1, 3, 1, 1), 200, dtype=torch.uint8), "cifar10").view(3)
    pix = y.permute(0, 2, 3, 1).reshape(-1, 3)
    is_black = (pix == black).all(1)
    assert ((pix == white).all(1) | is_black).all()
    assert 0 < is_black.float().mean() < 0.5


# ---------------------------------------------------------------- ssr_cutout

def _hole_boxes(y: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Per image, the (top, left, bottom, right) box of exactly-zero pixels, or None; assert it is a full box."""
    boxes = []
    for z in _zero_pixels(y):
        if not z.any():
            boxes.append(None)
            continue
        rows = torch.nonzero(z.any(1)).flatten()
        cols = torch.nonzero(z.any(0)).flatten()
        t, b, l, r = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert z[t:b, l:r].all() and int(z.sum()) == (b - t) * (r - l), "zeros do not form one rectangle"
        boxes.append((t, l, b, r))
    return boxes


def test_ssr_cutout_hole_and_rates():
    img = _asymmetric_image()
    x = img.expand(800, 3, 32, 32).contiguous()
    y = augment("ssr_cutout", x, "cifar10", _gen(21))
    boxes = _hole_boxes(y)
    holes = [box for box in boxes if box is not None]
    # albumentations 1.x CoarseDropout: always a whole 16x16 hole inside the image, its
    # top-left corner uniform over the 17 x 17 positions that allow it
    assert all(b - t == 16 and r - left == 16 for t, left, b, r in holes)
    tops = np.bincount([t for t, _, _, _ in holes], minlength=17)
    assert len(tops) == 17 and tops.min() > 0 and tops[0] < 3 * len(holes) / 17
    hole_rate = len(holes) / len(boxes)
    assert 0.42 <= hole_rate <= 0.58

    # Flip: the left-to-right ramp survives a small shift/scale/rotation.
    cols = y.mean(dim=(1, 2))  # (N, W) channel-and-row means; hole zeros only damp it
    flipped = cols[:, :8].mean(1) > cols[:, -8:].mean(1)
    assert 0.42 <= flipped.float().mean() <= 0.58

    # Untouched by ShiftScaleRotate: bit-equal to the (possibly flipped) normalised input outside the hole.
    plain = normalize(img.unsqueeze(0), "cifar10")[0]
    ref = torch.where(flipped.view(-1, 1, 1, 1), plain.flip(-1), plain)
    hole = _zero_pixels(y).unsqueeze(1)
    untouched = ((y == ref) | hole).flatten(1).all(1)
    assert 0.42 <= untouched.float().mean() <= 0.58


def test_ssr_cutout_uses_norm_mean_as_fill():
    x = _images(200, seed=4)
    for norm in NORMS:
        y = augment("ssr_cutout", x, norm, _gen(2))
        assert 0.35 < (_zero_pixels(y).flatten(1).any(1)).float().mean() < 0.65


def test_shift_scale_rotate_border_is_reflect_101():
    """A whole-pixel shift must equal numpy's 'reflect' padding (cv2.BORDER_REFLECT_101)."""
    x = _images(3, seed=5).float() / 255
    shifts = [(2, -3), (-1, 4), (0, 2)]  # (dx, dy) pixels
    dx = torch.tensor([s[0] / 32 for s in shifts])
    dy = torch.tensor([s[1] / 32 for s in shifts])
    out = A.shift_scale_rotate(x, torch.zeros(3), torch.ones(3), dx, dy)
    for i, (sx, sy) in enumerate(shifts):
        padded = np.pad(x[i].numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
        ref = padded[:, 4 - sy:36 - sy, 4 - sx:36 - sx]
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


# ---------------------------------------------------------------- strong

def test_strong_erasing_rate():
    x = _images(1000, seed=6)
    y = augment("strong", x, "cifar10", _gen(31))
    # Smallest box: about 0.02 * 1024 = 20 pixels, less rounding (e.g. 2 x 8).
    erased = _zero_pixels(y).flatten(1).sum(1) >= 10
    assert 0.19 <= erased.float().mean() <= 0.31


def test_strong_erased_region_is_a_rectangle():
    x = _images(200, seed=8)
    y = augment("strong", x, "cifar10", _gen(9))
    for box in _hole_boxes(y):
        if box is not None:
            t, l, b, r = box
            area = (b - t) * (r - l)
            assert 10 <= area <= 0.25 * 1024


def test_strong_kernels_match_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    x = _images(6, seed=10).float() / 255
    angle = torch.tensor([-15.0, -7.5, -1.0, 3.0, 9.0, 14.9])
    factor = torch.tensor([0.8, 0.9, 1.0, 1.05, 1.15, 1.2])
    hue = torch.tensor([-0.1, -0.05, 0.0, 0.02, 0.07, 0.1])
    pairs = [
        (A.rotate_nearest(x, angle), lambda i: tvf.rotate(x[i], float(angle[i]), InterpolationMode.NEAREST, fill=0)),
        (A.adjust_brightness(x, factor), lambda i: tvf.adjust_brightness(x[i], float(factor[i]))),
        (A.adjust_contrast(x, factor), lambda i: tvf.adjust_contrast(x[i], float(factor[i]))),
        (A.adjust_saturation(x, factor), lambda i: tvf.adjust_saturation(x[i], float(factor[i]))),
        (A.adjust_hue(x, hue, A.constants("cifar10").hue_n), lambda i: tvf.adjust_hue(x[i], float(hue[i]))),
    ]
    for mine, ref in pairs:
        torch.testing.assert_close(mine, torch.stack([ref(i) for i in range(len(x))]), atol=1e-5, rtol=0)


def test_translate_matches_torchvision_affine():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    x = _images(8, seed=12).float() / 255
    ux = torch.linspace(0, 0.999, 8)
    uy = ux.flip(0)
    out = strong._translate(x, ux, uy)
    for i in range(8):
        tx = round(float(-3.2 + 6.4 * ux[i]))
        ty = round(float(-3.2 + 6.4 * uy[i]))
        ref = tvf.affine(x[i], angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.NEAREST, fill=0)
        torch.testing.assert_close(out[i], ref, atol=0, rtol=0)


# ---------------------------------------------------------------- CUDA

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_semantics():
    x_cpu = _images(2048, seed=13)
    x_gpu = x_cpu.cuda()
    # Same uniforms on both devices: the transforms themselves must agree
    # (nearest-neighbour ties may round differently on a few pixels).
    u = torch.rand((256, strong.DRAWS), generator=_gen(14))
    c_cpu, c_gpu = A.constants("cifar10", "cpu"), A.constants("cifar10", "cuda")
    for regime in (standard, ssr_cutout, strong):
        a = regime.apply(x_cpu[:256], u[:, :regime.DRAWS], c_cpu)
        b = regime.apply(x_gpu[:256], u[:, :regime.DRAWS].cuda(), c_gpu).cpu()
        assert ((a - b).abs() > 1e-3).float().mean() < 0.01, regime.__name__
    # Each device's own generator: same distributions, not the same bits.
    for name in ["none", *RANDOM_REGIMES]:
        a = augment(name, x_cpu, "cifar10", _gen(15))
        g = torch.Generator(device="cuda").manual_seed(15)
        b = augment(name, x_gpu, "cifar10", g)
        assert b.device.type == "cuda" and b.dtype == torch.float32
        b = b.cpu()
        torch.testing.assert_close(a.mean(dim=(0, 2, 3)), b.mean(dim=(0, 2, 3)), atol=0.05, rtol=0)
        torch.testing.assert_close(a.std(dim=(0, 2, 3)), b.std(dim=(0, 2, 3)), atol=0.05, rtol=0)
        za = _zero_pixels(a).flatten(1).any(1).float().mean()
        zb = _zero_pixels(b).flatten(1).any(1).float().mean()
        assert abs(za - zb) < 0.06, name
