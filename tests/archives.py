"""Small CIFAR-10-like archives for the data-stage tests, good and malicious.

Every writer returns what a correct `untar` must produce from it, so tests can
compare arrays exactly: {"train_x": (N,3,32,32) uint8, "train_y": (N,) int64,
"test_x": ..., "test_y": ...}, in the order the stage promises (official:
batch order; ImageFolder: class, then file name).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
OFFICIAL_DIR = "cifar-10-batches-py"


# ----------------------------------------------------------------- tar building

def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def dir_member(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def special_member(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    """A symlink (SYMTYPE), hard link (LNKTYPE), FIFO (FIFOTYPE) or device (CHRTYPE/BLKTYPE)."""
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = 0o644
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, None


def write_tar(path: Path, members, mode: str = "w:gz") -> Path:
    """Write (TarInfo, bytes-or-None) pairs, in order, as they are: no name clean-up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # gzip's header carries a time unless told one: the same members give the same bytes
    with (gzip.GzipFile(path, "wb", mtime=0) if mode == "w:gz" else contextlib.nullcontext()) as gz, \
            tarfile.open(path if gz is None else None, mode if gz is None else "w", fileobj=gz,
                         format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


# -------------------------------------------------------------- official format

def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _balanced_labels(rng: np.random.Generator, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class)).astype(np.int64)


def official_pickle(x: np.ndarray, y: np.ndarray, batch_label: str) -> bytes:
    """A batch as the official archive pickles it: bytes keys, (N, 3072) uint8 rows, a list of ints."""
    return pickle.dumps({
        b"batch_label": batch_label.encode(),
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), -1),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(x))],
    }, protocol=4)  # protocol >= 3 keeps bytes as bytes (protocol 2 would need _codecs.encode)


def meta_pickle(names=CLASSES) -> bytes:
    return pickle.dumps({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names],
                         b"num_vis": 3072}, protocol=4)


def write_official(path: Path, *, per_class: int = 3, seed: int = 0, label_names=CLASSES,
                   replace: dict[str, bytes] | None = None, extra=(), mode: str = "w:gz") -> dict:
    """The official layout with `per_class` images per class in each split.

    The training images are spread over the five data batches. `replace` swaps
    a member's bytes (e.g. a malicious pickle); `extra` appends members.
    """
    rng = np.random.default_rng(seed)
    train_y = _balanced_labels(rng, per_class)
    test_y = _balanced_labels(rng, per_class)
    train_x, test_x = _images(rng, len(train_y)), _images(rng, len(test_y))
    files = {}
    for i, (bx, by) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), 1):
        files[f"data_batch_{i}"] = official_pickle(bx, by, f"training batch {i} of 5")
    files["test_batch"] = official_pickle(test_x, test_y, "testing batch 1 of 1")
    files["batches.meta"] = meta_pickle(label_names)
    files["readme.html"] = b"<html>CIFAR-10</html>"
    files.update(replace or {})
    members = [dir_member(OFFICIAL_DIR)] + [file_member(f"{OFFICIAL_DIR}/{k}", v) for k, v in files.items()]
    write_tar(path, members + list(extra), mode)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


class _RunsCommand:
    """Unpickling this runs a shell command: what a restricted unpickler must refuse."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def evil_pickle(marker: Path) -> bytes:
    """A batch-shaped pickle whose loading would create `marker` (via os.system)."""
    return pickle.dumps({b"data": _RunsCommand(f"touch '{marker}'"), b"labels": [0]}, protocol=4)


# ------------------------------------------------------------------ ImageFolder

def _encode(img_hwc: np.ndarray, ext: str) -> tuple[bytes, np.ndarray]:
    """(file bytes, the pixels a decoder gets back): lossless for png, JPEG's own for jpg."""
    buf = io.BytesIO()
    Image.fromarray(img_hwc).save(buf, format="PNG" if ext == "png" else "JPEG", quality=75)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        return data, np.asarray(im.convert("RGB"))


def write_imagefolder(path: Path, *, per_class: int = 3, seed: int = 0, exts=("png", "jpg"),
                      top: str | None = None, classes=CLASSES, size: tuple[int, int] = (32, 32),
                      odd_size: tuple[int, int] | None = None, extra=(), mode: str = "w:gz") -> dict:
    """`[top/]train|test/<class>/NNNN.<ext>`, image i of a class in format exts[i % len(exts)].

    `odd_size` makes the first train image of the first class that (w, h).
    Members are written in a shuffled order, so the stage must sort them.
    """
    rng = np.random.default_rng(seed)
    prefix = f"{top}/" if top else ""
    members = [dir_member(top)] if top else []
    expected = {}
    for split in ("train", "test"):
        members.append(dir_member(f"{prefix}{split}"))
        xs, ys = [], []
        for label, cls in enumerate(classes):
            members.append(dir_member(f"{prefix}{split}/{cls}"))
            for i in range(per_class):
                ext = exts[i % len(exts)]
                w, h = odd_size if (odd_size and split == "train" and label == 0 and i == 0) else size
                img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                data, pixels = _encode(img, ext)
                members.append(file_member(f"{prefix}{split}/{cls}/{i:04d}.{ext}", data))
                xs.append(pixels.transpose(2, 0, 1) if (w, h) == (32, 32) else None)
                ys.append(label)
        expected[f"{split}_x"] = (np.stack(xs) if all(x is not None for x in xs) else None)
        expected[f"{split}_y"] = np.array(ys, dtype=np.int64)
    # Folders first (as tar writes them), files shuffled.
    dirs = [m for m in members if m[1] is None]
    files = [members[i] for i in rng.permutation(len(members)) if members[i][1] is not None]
    write_tar(path, dirs + files + list(extra), mode)
    return expected


# ------------------------------------------------------------ damaged archives

def truncate(path: Path, fraction: float = 0.5) -> Path:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * fraction)])
    return path


def flip_bytes(path: Path, count: int = 64) -> Path:
    """Invert `count` bytes in the middle of the file."""
    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + count, len(data))):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    return path
