"""Which images an arm trains and is tested on: a stratified subset, for quick runs."""
from __future__ import annotations

import numpy as np


def _quotas(available: np.ndarray, limit: int) -> np.ndarray:
    """Split `limit` (<= available.sum()) over classes as evenly as their sizes allow.

    Water-filling: every class gets min(size, level) for the highest level that
    fits, and the remainder goes, one each, to the lowest classes that still
    have images to give.
    """
    lo, hi = 0, int(available.max())
    while lo < hi:  # highest level with sum(min(available, level)) <= limit
        mid = (lo + hi + 1) // 2
        if np.minimum(available, mid).sum() <= limit:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(available, lo)
    rest = limit - int(quota.sum())
    quota[np.flatnonzero(available > lo)[:rest]] += 1
    return quota


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of `limit` images, as equal per class as possible, chosen by `seed`.

    Classes are the distinct labels present, in ascending order; when `limit`
    does not divide evenly the lowest classes get one more. A class with too
    few images gives all it has and the rest is spread over the others. None,
    or a limit of at least len(labels), means every index.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = _quotas(counts, limit)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
              for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def load_subset(folder, split: str, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split of the prepared data, cut to its stratified subset: (x, y, indices)."""
    from pipeline.core.dataset import load_split

    x, y = load_split(folder, split)
    idx = stratified_subset(y, limit, seed)
    return np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]), idx
