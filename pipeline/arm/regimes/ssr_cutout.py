"""`ssr_cutout`: dilated_net recipe, albumentations 1.x semantics (the API the recipe's
arguments belong to), in this order:

1. HorizontalFlip(p=0.5).
2. ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=7, p=0.5):
   per image dx, dy ~ U(-0.0625, 0.0625) of the width/height, scale ~
   U(0.9, 1.1), angle ~ U(-7, 7) degrees, about the image centre, bilinear,
   border BORDER_REFLECT_101 (the 1.x default; 2.x deprecates the transform
   for Affine, whose default border is constant). grid_sample with
   padding_mode="reflection" and align_corners=True reproduces
   REFLECT_101 exactly (see pipeline.arm.augment.shift_scale_rotate). Differences from
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
from __future__ import annotations

import torch

from pipeline.arm import augment as A

SSR_SHIFT = 0.0625       # fraction of width/height
SSR_SCALE = 0.1          # scale uniform in [1 - 0.1, 1 + 0.1]
SSR_ROTATE = 7.0         # degrees
CUTOUT_SIZE = 16         # pixels, side of the square hole
DRAWS = 9


def apply(x: torch.Tensor, u: torch.Tensor | None, c: A.Constants) -> torch.Tensor:
    _, _, h, w = x.shape
    flip = A.bcast(u[:, 0] < 0.5)
    x = torch.where(flip, x.flip(-1), x)                     # exact, still uint8
    xf = A.to_unit(x)
    warped = A.shift_scale_rotate(
        xf,
        angle_deg=A.uniform(u[:, 2], -SSR_ROTATE, SSR_ROTATE),
        scale=A.uniform(u[:, 3], 1.0 - SSR_SCALE, 1.0 + SSR_SCALE),
        dx=A.uniform(u[:, 4], -SSR_SHIFT, SSR_SHIFT),
        dy=A.uniform(u[:, 5], -SSR_SHIFT, SSR_SHIFT),
    )
    # Warping the whole batch and selecting keeps untouched images bit-exact
    # and avoids a data-dependent subset (which would sync a CUDA stream).
    xf = torch.where(A.bcast(u[:, 1] < 0.5), warped, xf)
    xf = A.normalize_unit_(xf, c)
    top = A.uniform_int(u[:, 7], 0, h - CUTOUT_SIZE)
    left = A.uniform_int(u[:, 8], 0, w - CUTOUT_SIZE)
    hole = A.box_mask(h, w, top, left, top + CUTOUT_SIZE, left + CUTOUT_SIZE, u[:, 6] < 0.5)
    return xf.masked_fill_(hole, 0.0)
