"""Small, learnable CIFAR-shaped data for fast tests: class k is a noisy image
with a class-specific colour and stripe, so a few epochs separate the classes."""
from __future__ import annotations

import numpy as np


def images(n_per_class: int, seed: int = 0, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N,3,32,32) NCHW images and int64 labels, class-major order."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(1234).integers(30, 226, size=(classes, 3))
    xs, ys = [], []
    for k in range(classes):
        base = np.broadcast_to(colours[k][:, None, None], (n_per_class, 3, 32, 32)).astype(np.int16)
        noise = rng.integers(-110, 111, size=(n_per_class, 3, 32, 32))
        img = base + noise
        img[:, :, :, (3 * k) % 32:(3 * k) % 32 + 3] += 40  # a faint stripe per class
        xs.append(np.clip(img, 0, 255).astype(np.uint8))
        ys.append(np.full(n_per_class, k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)
