"""The prepared data set: the format stage `untar` writes and the later stages read.

numpy only, no torch, so the data stages start fast. The folder holds

    train_x.npy  (N, 3, 32, 32) uint8, NCHW, RGB
    train_y.npy  (N,) int64, an index into CLASSES
    test_x.npy, test_y.npy
    manifest.json  format, classes, per-split counts, checksums, data_sha256
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError

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


def load_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise PipelineError(f"no prepared data at {folder}: the folder does not exist; {_NOT_PREPARED}")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"no prepared data at {folder}: {MANIFEST} is missing; {_NOT_PREPARED}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); {_NOT_PREPARED}") from None
    ok = (isinstance(manifest, dict) and isinstance(manifest.get("splits"), dict)
          and all(isinstance(manifest["splits"].get(s), dict) and
                  isinstance(manifest["splits"][s].get("count"), int) for s in SPLITS)
          and isinstance(manifest.get("data_sha256"), str))
    if not ok:
        raise PipelineError(f"{path} lacks the splits' counts or data_sha256 (an old or foreign file); "
                            f"{_NOT_PREPARED}")
    return manifest


def load_split(folder: str | Path, split: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one split: x (N, 3, 32, 32) uint8, y (N,) int64, checked against manifest.json.

    x is memory-mapped read-only unless mmap=False: index it (x[idx]) to get an
    ordinary array.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    manifest = load_manifest(folder)
    n = manifest["splits"][split]["count"]
    arrays = []
    for kind, dtype, shape in (("x", np.uint8, (n, *IMAGE_SHAPE)), ("y", np.int64, (n,))):
        path = folder / f"{split}_{kind}.npy"
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
