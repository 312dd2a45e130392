"""The prepared data set: the format stage `untar` writes and the later stages read.

numpy only, no torch, so the data stages start fast. The folder holds

    train_x.npy  (N, 3, 32, 32) uint8, NCHW, RGB
    train_y.npy  (N,) int64, an index into CLASSES
    test_x.npy, test_y.npy
    manifest.json  format, classes, per-split counts, checksums, data_sha256
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from pipeline.core.schema import Contract
from pipeline.core.errors import PipelineError
from pipeline.core.io import sha256_file

# The official label order (batches.meta of the official archive; it is also
# the alphabetical order of the class folders of ImageFolder mirrors).
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
# Fixed order: data_sha256 hashes the arrays' checksums in this order.
ARRAY_FILES = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")
IMAGE_SHAPE = (3, 32, 32)  # channels, height, width
MANIFEST = "manifest.json"

_NOT_PREPARED = "run `dvc repro untar` first"


def data_sha256(arrays: dict[str, str]) -> str:
    """One id for the prepared data: sha256 over the arrays' sha256, in ARRAY_FILES order."""
    text = "".join(f"{name} {arrays[name]}\n" for name in ARRAY_FILES)
    return hashlib.sha256(text.encode()).hexdigest()


class SplitCounts(Contract):
    count: int
    per_class: dict[str, int]


class DataManifest(Contract):
    """data/prepared/manifest.json, written by the untar stage."""

    format: str  # cifar-python, imagefolder
    name: str  # what to call the data in reports, e.g. "CIFAR-10 (JPEG mirror)"
    encoding: str | None = None  # e.g. "JPEG quality 75, 4:2:0 chroma subsampling" (what a reader must know)
    classes: list[str]
    splits: dict[Literal["train", "test"], SplitCounts]
    source: dict[str, str]  # the archive's path and sha256
    arrays: dict[str, str]  # file name -> sha256
    data_sha256: str  # data_sha256(arrays)


def load_manifest(folder: str | Path) -> DataManifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise PipelineError(f"no prepared data at {folder}: the folder does not exist; {_NOT_PREPARED}")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"no prepared data at {folder}: {MANIFEST} is missing; {_NOT_PREPARED}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); {_NOT_PREPARED}") from None
    try:
        return DataManifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PipelineError(f"{path} is not a manifest of the prepared data ({'.'.join(map(str, err['loc']))}: "
                            f"{err['msg']}; an old or foreign file); {_NOT_PREPARED}") from None


def load_split(folder: str | Path, split: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one split: x (N, 3, 32, 32) uint8, y (N,) int64, checked against manifest.json.

    x is memory-mapped read-only unless mmap=False: index it (x[idx]) to get an
    ordinary array.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    manifest = load_manifest(folder)
    n = manifest.splits[split].count
    arrays = []
    for kind, dtype, shape in (("x", np.uint8, (n, *IMAGE_SHAPE)), ("y", np.int64, (n,))):
        path = folder / f"{split}_{kind}.npy"
        _check_sum(path, manifest.arrays.get(path.name))
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise PipelineError(f"{path} is missing; {_NOT_PREPARED}") from None
        except (ValueError, EOFError) as exc:  # not an .npy file, truncated, or an object array
            raise PipelineError(f"cannot read {path} ({exc}); {_NOT_PREPARED}") from None
        if a.dtype != dtype or a.shape != shape:
            raise PipelineError(f"{path} holds {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape} "
                                f"as {MANIFEST} says; {_NOT_PREPARED}")
        arrays.append(a)
    x, y = arrays
    if n and (y.min() < 0 or y.max() >= len(CLASSES)):
        raise PipelineError(f"{folder / f'{split}_y.npy'} holds labels outside 0..{len(CLASSES) - 1}; "
                            f"{_NOT_PREPARED}")
    return x, y


def _check_sum(path: Path, expected: str | None) -> None:
    """`path` holds what the manifest says it does (its sha256), else one line."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # said where it is read
    if _sha256(str(path), st.st_size, st.st_mtime_ns) != expected:
        raise PipelineError(f"{path} does not match the sha256 {MANIFEST} records for it (changed or damaged since "
                            f"the untar stage wrote it); prepare it again: `dvc repro -f untar`")


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha256, hashed once per process while its size and modification time hold."""
    return sha256_file(path)


# --------------------------------------------------------------------------- subsets: quick runs


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
    x, y = load_split(folder, split)
    idx = stratified_subset(y, limit, seed)
    return np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx]), idx


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the images held out for validation: `fraction` of them,
    stratified, chosen by `seed` (its own stream, so not the images the training
    subset of the same seed picked first). All False for a fraction of 0."""
    held = np.zeros(len(labels), dtype=bool)
    n = round(fraction * len(labels))
    if n:
        stream = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        held[stratified_subset(labels, n, stream)] = True
    return held


def load_training(folder, limit: int | None, val_split: float, seed: int):
    """The training images of a study and its validation images: the stratified
    subset of `limit` images, then `val_split` of them held out. Returns
    ((x, y, indices) trained on, (x, y, indices) held out; empty without a split)."""
    x, y, idx = load_subset(folder, "train", limit, seed)
    held = validation_split(y, val_split, seed)
    return ((np.ascontiguousarray(x[~held]), y[~held], idx[~held]),
            (np.ascontiguousarray(x[held]), y[held], idx[held]))
