"""Stage `untar`: unpack the CIFAR-10 archive safely into numpy arrays.

    python -m pipeline.untar --params params.yaml --archive data/cifar10.tar.gz --out data/prepared

Reads either layout, told apart by the member names:

- the official pickled batches, `cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`,
  unpickled with an unpickler that builds nothing but numpy arrays;
- ImageFolder, `[<folder>/]train|test/<class>/<image>.png|jpg|jpeg`, 32x32 images.

Every member is checked before anything is extracted (only regular files and
folders of those layouts; no links, devices, absolute or escaping names; caps
on count and size against tar bombs). The official batches are extracted
(filter="data") into a temporary folder next to `out` that is always removed;
ImageFolder images are decoded straight from the archive, never written to
disk. `out` appears whole or not at all. pipeline/core/dataset.py defines its layout.
"""
from __future__ import annotations

import argparse
import functools
import io
import lzma
import math
import os
import pickle
import shutil
import tarfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.dataset import (ARRAY_FILES, CLASSES, IMAGE_SHAPE, MANIFEST, SPLITS, DataManifest, SplitCounts,
                                   data_sha256)
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, sha256_file, temp_sibling
from pipeline.core.schema import load_data_config

# Against tar bombs. CIFAR-10 has ~60,030 members and unpacks to ~185 MB
# (official) or ~60 MB (JPEG mirror).
MAX_MEMBERS = 200_000
MAX_BYTES = 1 << 30  # total size of the regular files, bytes

OFFICIAL_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
REQUIRED_FILES = (*TRAIN_BATCHES, "test_batch", "batches.meta")
OFFICIAL_FILES = (*REQUIRED_FILES, "readme.html")  # the official archive also ships readme.html
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
EXPECTED = {"train": 50_000, "test": 10_000}  # images per split; a tenth of it per class

# Decoding: 60,000 small JPEGs take ~6 s in one process; a pool only pays off
# for many images (its start-up and the arrays' trip back cost ~0.5 s).
DECODE_CHUNK = 2_500  # images per task
PARALLEL_MIN = 10_000  # fewer images are decoded in this process

_ALLOWED = "only regular files and folders of CIFAR-10's layouts are allowed"
_LAYOUTS = "cifar-10-batches-py/<batch> or [<folder>/]train|test/<class>/<image>.png|jpg|jpeg"
_READ_BLOCK = 1 << 20  # bytes


# ------------------------------------------------------------------ reading the tar

def _corrupt(archive: Path, reason: str) -> PipelineError:
    return PipelineError(f"cannot read archive {archive}: {reason}; the file is corrupt or truncated "
                         f"— delete it and run the download stage again")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, tarfile.ReadError) and "could not be opened successfully" in str(exc):
        return "not a tar, tar.gz, tar.bz2 or tar.xz archive"  # instead of one failure per method
    return " ".join(str(exc).split()) or type(exc).__name__


# What a damaged or truncated .tar/.tar.gz/.tar.xz raises while being read
# (gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors).
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _read_members(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member header, with the caps applied; then the whole stream read to its end.

    tarfile stops quietly at a damaged header in mid-archive, so what follows
    the last member must be the zero blocks of a proper end; reading to the
    end also makes gzip check its CRC.
    """
    members: list[tarfile.TarInfo] = []
    total = 0
    for m in tf:  # reads headers only; member data is skipped
        members.append(m)
        if len(members) > MAX_MEMBERS:
            raise PipelineError(f"refusing archive {archive}: more than {MAX_MEMBERS:,} members "
                                f"(CIFAR-10 has about 60,000); a tar bomb or not CIFAR-10 ({_ALLOWED})")
        if m.isreg():
            total += m.size
            if total > MAX_BYTES:
                raise PipelineError(f"refusing archive {archive}: its files unpack to more than "
                                    f"{MAX_BYTES >> 20:,} MiB (CIFAR-10 needs about 200 MiB); "
                                    f"a tar bomb or not CIFAR-10 ({_ALLOWED})")
    tf.fileobj.seek(tf.offset)
    while block := tf.fileobj.read(_READ_BLOCK):
        if block.count(0) != len(block):
            after = f"after member '{members[-1].name}'" if members else "at the start"
            raise _corrupt(archive, f"damaged tar header {after}")
    return members


def _refuse(name: str, why: str, hint: str = _ALLOWED) -> PipelineError:
    return PipelineError(f"refusing archive member {name!r}: {why} ({hint})")


def _member_parts(m: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path components (without '.'), after refusing anything unsafe."""
    name = m.name
    if "\x00" in name or "\\" in name:
        raise _refuse(name, "the name contains a NUL or a backslash")
    if name.startswith("/"):
        raise _refuse(name, "absolute path")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _refuse(name, "path escapes the extraction folder")
    if m.issym():
        raise _refuse(name, f"symbolic link to {m.linkname!r}")
    if m.islnk():
        raise _refuse(name, f"hard link to {m.linkname!r}")
    if m.ischr() or m.isblk():
        raise _refuse(name, "device file")
    if m.isfifo():
        raise _refuse(name, "FIFO")
    if m.issparse():
        raise _refuse(name, "sparse file")
    if not (m.isreg() or m.isdir()):
        raise _refuse(name, f"unsupported member type {m.type!r}")
    return tuple(p for p in parts if p != ".")


def _outside(name: str) -> PipelineError:
    return _refuse(name, "not part of CIFAR-10's layouts",
                   f"expected {_LAYOUTS}; only regular files and folders of these are allowed")


def _plan(members: list[tarfile.TarInfo], archive: Path):
    """Check every member before anything is read or written.

    Returns (format, [(parts, member)] of every member, [(parts, member)] of
    the data files, parts relative to the layout's root).
    """
    checked = []
    seen = set()
    for m in members:
        parts = _member_parts(m)
        if not parts:  # the archive's own root, "./"
            continue
        if m.isreg():
            if parts in seen:
                raise _refuse(m.name, "the file appears twice in the archive")
            seen.add(parts)
        checked.append((parts, m))
    files = [(p, m) for p, m in checked if m.isreg()]
    if not files:
        raise PipelineError(f"archive {archive} holds no files; expected CIFAR-10 as {_LAYOUTS}")

    if files[0][0][0] == OFFICIAL_DIR:
        for parts, m in checked:
            ok = (parts == (OFFICIAL_DIR,) and m.isdir()) or (
                len(parts) == 2 and parts[0] == OFFICIAL_DIR and parts[1] in OFFICIAL_FILES and m.isreg())
            if not ok:
                raise _outside(m.name)
        present = {p[1] for p, _ in files}
        missing = [f for f in REQUIRED_FILES if f not in present]
        if missing:
            lacks = ", ".join(f"{OFFICIAL_DIR}/{f}" for f in missing)
            raise PipelineError(f"archive {archive} lacks {lacks}; "
                                f"the official layout has {', '.join(REQUIRED_FILES)}")
        return "cifar-python", checked, files

    # ImageFolder; the first file says whether there is a top folder.
    top = files[0][0][:1] if len(files[0][0]) == 4 else ()
    found: dict[str, set[str]] = {s: set() for s in SPLITS}
    for parts, m in checked:
        rel = parts[len(top):]
        ok = parts[:len(top)] == top
        if ok and m.isdir():
            ok = len(rel) <= 2 and (not rel or rel[0] in SPLITS)
        elif ok:
            ok = len(rel) == 3 and rel[0] in SPLITS and rel[2].lower().endswith(IMAGE_EXTS)
        if not ok:
            raise _outside(m.name)
        if len(rel) >= 2:
            found[rel[0]].add(rel[1])
    for split in SPLITS:
        if not found[split]:
            raise PipelineError(f"archive {archive} has no {split} split; expected {_LAYOUTS}")
        if found[split] != set(CLASSES):
            missing = [c for c in CLASSES if c not in found[split]]
            extra = sorted(found[split] - set(CLASSES))
            what = "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                         f"unexpected {', '.join(map(repr, extra))}" if extra else "") if s)
            raise PipelineError(f"archive {archive}: the {split} split's class folders are not CIFAR-10's "
                                f"({what}); expected exactly {', '.join(CLASSES)}")
    return "imagefolder", checked, [(p[len(top):], m) for p, m in files]


# ------------------------------------------------------------- the official batches

try:  # numpy 2 moved the array-pickle helper; pickles name either module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

# The only globals CIFAR-10's pickles need: what rebuilds a numpy array.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, str, numbers and numpy arrays; refuses every other
    global, and any array declared larger than the pickle that holds it: an array
    pickled with its data is never larger than the file, while numpy allocates a
    declared shape (uninitialised) before anything else is read."""

    def __init__(self, file, member: str, size: int):
        super().__init__(file, encoding="bytes")  # as the official loader: Python 2 str -> bytes
        self.member, self.size = member, size
        check = self._check_shape

        class Array(np.ndarray):  # what the pickle gets for numpy.ndarray: its calls are checked
            def __new__(cls, shape, *args, **kwargs):
                check(shape)
                return np.ndarray.__new__(np.ndarray, shape, *args, **kwargs)

        def reconstruct(subtype, shape, dtype):
            check(shape)
            return _reconstruct(np.ndarray if subtype is Array else subtype, shape, dtype)

        self._replace = {np.ndarray: Array, _reconstruct: reconstruct}

    def _check_shape(self, shape) -> None:
        dims = shape if isinstance(shape, (tuple, list)) else (shape,)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise PipelineError(f"archive member '{self.member}' declares an array of shape {shape!r}; "
                                f"not CIFAR-10")
        if math.prod(dims) > self.size:
            raise PipelineError(f"refusing archive member '{self.member}': it declares an array of "
                                f"{math.prod(dims):,} elements in {self.size:,} bytes; not CIFAR-10")

    def find_class(self, module, name):
        try:
            found = _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise PipelineError(
                f"refusing to unpickle {module}.{name} from archive member '{self.member}': CIFAR-10 "
                f"batches hold only dicts, lists, strings, numbers and numpy arrays") from None
        return self._replace.get(found, found)

    def persistent_load(self, pid):
        raise PipelineError(f"refusing a persistent id in archive member '{self.member}'")


def _unpickle(path: Path, member: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, member, os.fstat(f.fileno()).st_size).load()
    except PipelineError:
        raise
    except Exception as exc:  # a damaged pickle raises almost anything
        raise PipelineError(f"cannot unpickle archive member '{member}': {_reason(exc)}; "
                            f"the archive is corrupt or not CIFAR-10") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"archive member '{member}' holds a {type(obj).__name__}, "
                            f"expected a dict as in the official batches")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_official(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    meta_member = f"{OFFICIAL_DIR}/batches.meta"
    meta = _unpickle(root / "batches.meta", meta_member)
    names = meta.get("label_names")
    if not isinstance(names, list | tuple):
        raise PipelineError(f"archive member '{meta_member}' has no label_names list")
    names = [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names]
    if names != list(CLASSES):
        raise PipelineError(f"archive member '{meta_member}' lists the classes {', '.join(names)}; "
                            f"expected CIFAR-10's {', '.join(CLASSES)} in that order")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        member = f"{OFFICIAL_DIR}/{name}"
        d = _unpickle(root / name, member)
        data, labels = d.get("data"), d.get("labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == int(np.prod(IMAGE_SHAPE))):
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise PipelineError(f"archive member '{member}': data is {found}; expected uint8 (N, 3072), "
                                f"one row of 3x32x32 RGB planes per image")
        y = np.asarray(labels if isinstance(labels, list | tuple | np.ndarray) else [None])
        if y.dtype.kind not in "iu" or y.shape != (len(data),):
            raise PipelineError(f"archive member '{member}': labels must be {len(data):,} integers, "
                                f"one per row of data")
        # Rows are the R, G and B planes, each 32x32 row-major: exactly NCHW.
        return data.reshape(-1, *IMAGE_SHAPE), y.astype(np.int64)

    train = [batch(b) for b in TRAIN_BATCHES]
    return {"train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
            "test": batch("test_batch")}


# ------------------------------------------------------------------- ImageFolder

def _decode_chunk(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 RGB from encoded images; runs in worker processes too."""
    out = np.empty((len(blobs), IMAGE_SHAPE[1], IMAGE_SHAPE[2], 3), np.uint8)
    for i, (blob, name) in enumerate(zip(blobs, names)):
        try:
            with Image.open(io.BytesIO(blob), formats=("PNG", "JPEG")) as im:
                if im.size != (IMAGE_SHAPE[2], IMAGE_SHAPE[1]):  # checked before decoding the pixels
                    raise PipelineError(f"image '{name}' is {im.size[0]}x{im.size[1]} pixels; "
                                        f"CIFAR-10 images are 32x32")
                out[i] = np.asarray(im.convert("RGB"))
        except PipelineError:
            raise
        except UnidentifiedImageError:
            raise PipelineError(f"cannot decode image '{name}': not a PNG or JPEG image; "
                                f"the archive is corrupt or not CIFAR-10") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for damaged files
            raise PipelineError(f"cannot decode image '{name}': {_reason(exc)}; "
                                f"the archive is corrupt or holds a file that is not a PNG/JPEG") from None
    return out


def _decode_all(blobs: list[bytes], names: list[str]) -> np.ndarray:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    workers = min(cpus, 8)
    if len(blobs) < PARALLEL_MIN or workers < 2:
        return _decode_chunk(blobs, names)
    starts = range(0, len(blobs), DECODE_CHUNK)
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(_decode_chunk, [blobs[i:i + DECODE_CHUNK] for i in starts],
                         [names[i:i + DECODE_CHUNK] for i in starts])
        return np.concatenate(list(parts))


ENCODING_SAMPLE = 500  # images whose JPEG encoding is read, evenly spaced over the archive
_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def jpeg_encoding(blobs: list[bytes]) -> str | None:
    """How JPEG images were encoded, e.g. "JPEG quality 75, 4:2:0 chroma subsampling",
    read from up to ENCODING_SAMPLE of them: the quality whose standard (IJG)
    quantization tables Pillow writes equal the images' own, and the chroma
    subsampling. None for images that are not JPEG; "mixed" where they differ."""
    from PIL import JpegImagePlugin

    seen = set()
    for blob in blobs[::max(1, len(blobs) // ENCODING_SAMPLE)]:
        try:
            with Image.open(io.BytesIO(blob)) as im:
                if im.format != "JPEG":
                    return None
                seen.add((_standard_tables().get(tuple(im.quantization[0])), JpegImagePlugin.get_sampling(im)))
        except (OSError, ValueError, KeyError, AttributeError):
            return None
    if len(seen) != 1:
        return f"JPEG, mixed encodings ({len(seen)} kinds)" if seen else None
    (quality, sampling), = seen
    q = f"quality {quality}" if quality is not None else "non-standard quantization tables"
    return f"JPEG {q}, " + (f"{_SUBSAMPLING[sampling]} chroma subsampling" if sampling in _SUBSAMPLING else
                            "no chroma (grayscale)" if sampling == -1 else "other chroma subsampling")


@functools.cache
def _standard_tables() -> dict[tuple, int]:
    """Pillow's luminance quantization table at each quality 1-100 -> that quality."""
    out = {}
    for q in range(100, 0, -1):  # where two qualities share a table, the lower one wins
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG", quality=q)
        with Image.open(buf) as im:
            out[tuple(im.quantization[0])] = q
    return out


def _read_imagefolder(tf: tarfile.TarFile, archive: Path, files):
    """Decode the images straight from the (already checked) archive: {split: (x, y)},
    and how they were encoded (`jpeg_encoding`).

    Not extracted first: writing and deleting 60,000 small files took ~40 s
    on an ext4 VM disk, against ~2 s to read them from the archive.
    """
    entries = {s: [] for s in SPLITS}
    try:
        for rel, m in files:  # archive order: forward reads of the compressed stream
            with tf.extractfile(m) as f:
                entries[rel[0]].append((CLASSES.index(rel[1]), rel[2], m.name, f.read()))
    except _READ_ERRORS as exc:
        raise _corrupt(archive, _reason(exc)) from None
    out = {}
    for split in SPLITS:
        # Deterministic order: class (official index), then file name.
        rows = sorted(entries[split])
        hwc = _decode_all([r[3] for r in rows], [r[2] for r in rows])
        x = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))  # NHWC -> NCHW
        out[split] = (x, np.array([r[0] for r in rows], dtype=np.int64))
    return out, jpeg_encoding([r[3] for split in SPLITS for r in entries[split]])


# ------------------------------------------------------------------------ checks

def _check_split(split: str, x: np.ndarray, y: np.ndarray, verify_counts: bool) -> dict[str, int]:
    if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
        raise PipelineError(f"the {split} split's images are {x.dtype} {x.shape} with {len(y):,} labels; "
                            f"expected uint8 (N, 3, 32, 32) with N labels")
    if len(y) == 0:
        raise PipelineError(f"the {split} split has no images")
    bad = np.unique(y[(y < 0) | (y >= len(CLASSES))])
    if len(bad):
        raise PipelineError(f"the {split} split has labels {', '.join(map(str, bad[:5]))} "
                            f"outside 0..{len(CLASSES) - 1}")
    counts = np.bincount(y, minlength=len(CLASSES))
    missing = [c for c, n in zip(CLASSES, counts) if n == 0]
    if missing:
        raise PipelineError(f"the {split} split has no images of class {', '.join(missing)}; "
                            f"every class must be present in both splits")
    if verify_counts:
        hint = "(set data.verify_counts: false to accept a partial or different copy)"
        if len(y) != EXPECTED[split]:
            raise PipelineError(f"the {split} split has {len(y):,} images; CIFAR-10 has "
                                f"{EXPECTED[split]:,} {hint}")
        per = EXPECTED[split] // len(CLASSES)
        for c, n in zip(CLASSES, counts):
            if n != per:
                raise PipelineError(f"the {split} split has {n:,} '{c}' images; CIFAR-10 has "
                                    f"{per:,} per class {hint}")
    return {c: int(n) for c, n in zip(CLASSES, counts)}


# ------------------------------------------------------------------------ stage

def prepare(archive_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            verify_counts: bool = True) -> DataManifest:
    """Unpack and check the archive; write the arrays and manifest.json to `out_dir`; return the manifest."""
    archive, out = Path(archive_path), Path(out_dir)
    if not archive.exists():
        raise PipelineError(f"archive {archive} not found; run `dvc repro download` first")
    if not archive.is_file():
        raise PipelineError(f"archive {archive} is not a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf = tarfile.open(archive, "r:*")
    except _READ_ERRORS as exc:
        raise _corrupt(archive, _reason(exc)) from None
    with tf:
        try:
            members = _read_members(tf, archive)
        except _READ_ERRORS as exc:
            raise _corrupt(archive, _reason(exc)) from None
        fmt, checked, files = _plan(members, archive)  # every member checked; nothing written yet
        if fmt == "imagefolder":
            splits, encoding = _read_imagefolder(tf, archive, files)
            jpeg = all(m.name.lower().endswith((".jpg", ".jpeg")) for _, m in files)
            # what to call the data in reports: JPEG is lossy, so its accuracies are not the official ones
            data_name = "CIFAR-10 (JPEG mirror)" if jpeg else "CIFAR-10 (image folders)"
        else:
            data_name, encoding = "CIFAR-10", "lossless, pickled arrays"
            tmp = temp_sibling(out)  # the extraction folder; sweeps what a killed run left
            try:
                try:
                    tf.extractall(tmp, members=[m for _, m in checked], filter="data")
                except tarfile.FilterError as exc:  # not expected after _plan; refuse all the same
                    raise PipelineError(f"refusing archive {archive}: {_reason(exc)} ({_ALLOWED})") from None
                except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise _corrupt(archive, _reason(exc)) from None
                splits = _read_official(tmp / OFFICIAL_DIR)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # also frees the disk before the arrays are written
    per_class = {s: _check_split(s, *splits[s], verify_counts) for s in SPLITS}

    with atomic_path(out) as staging:
        staging.mkdir()
        for split in SPLITS:
            x, y = splits[split]
            np.save(staging / f"{split}_x.npy", x, allow_pickle=False)
            np.save(staging / f"{split}_y.npy", y, allow_pickle=False)
        arrays = {name: sha256_file(staging / name) for name in ARRAY_FILES}
        manifest = DataManifest(
            format=fmt, name=data_name, encoding=encoding,
            classes=list(CLASSES),
            splits={s: SplitCounts(count=len(splits[s][1]), per_class=per_class[s]) for s in SPLITS},
            source={"path": str(archive_path), "sha256": sha256_file(archive)},
            arrays=arrays, data_sha256=data_sha256(arrays))
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


@cli
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.untar", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="reads data.verify_counts")
    ap.add_argument("--archive", default="data/cifar10.tar.gz", help="output of the download stage")
    ap.add_argument("--out", default="data/prepared", help="folder for the arrays and manifest.json")
    args = ap.parse_args(argv)
    cfg = load_data_config(args.params)
    t0 = time.perf_counter()
    m = prepare(args.archive, args.out, verify_counts=cfg.verify_counts)
    print(f"{args.out}: {m.splits['train'].count:,} train + {m.splits['test'].count:,} test "
          f"images ({m.format}) in {time.perf_counter() - t0:.1f} s; data_sha256 {m.data_sha256}")


if __name__ == "__main__":
    main()
