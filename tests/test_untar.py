"""Stage `untar`: both layouts round-trip; every bad or malicious archive is refused cleanly."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import untar
from pipeline.core import dataset as data
from pipeline.core.errors import PipelineError
from pipeline.core.io import sha256_file
from tests import archives

REAL_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpg.tar.gz"


@pytest.fixture
def params(tmp_path):
    """A params file for small archives: the official counts are not required."""
    path = tmp_path / "in" / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("data:\n  verify_counts: false\n")
    return path


@pytest.fixture
def work(tmp_path):
    """The folder `out` goes into; the tests check it holds nothing else afterwards."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def _run(params, archive, out):
    return untar.main(["--params", str(params), "--archive", str(archive), "--out", str(out)])


def _check_outputs(out: Path, archive: Path, expected: dict, fmt: str, per_class: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == data.load_manifest(out).model_dump()
    assert manifest["format"] == fmt
    assert manifest["classes"] == list(data.CLASSES)
    for split in ("train", "test"):
        x, y = data.load_split(out, split)
        np.testing.assert_array_equal(x, expected[f"{split}_x"])
        np.testing.assert_array_equal(y, expected[f"{split}_y"])
        assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == np.int64
        assert manifest["splits"][split] == {"count": 10 * per_class,
                                             "per_class": {c: per_class for c in data.CLASSES}}
    assert manifest["source"] == {"path": str(archive), "sha256": sha256_file(archive)}
    assert list(manifest["arrays"]) == list(data.ARRAY_FILES)
    for name, digest in manifest["arrays"].items():
        assert sha256_file(out / name) == digest
    assert manifest["data_sha256"] == data.data_sha256(manifest["arrays"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*data.ARRAY_FILES, "manifest.json"])
    return manifest


# ------------------------------------------------------------------ round trips

def test_official_format_round_trips(tmp_path, work):
    archive = tmp_path / "in" / "cifar.tar.gz"
    expected = archives.write_official(archive, per_class=3)
    manifest = untar.prepare(archive, work / "prepared", verify_counts=False).model_dump()
    assert manifest == _check_outputs(work / "prepared", archive, expected, "cifar-python", 3)
    assert [p.name for p in work.iterdir()] == ["prepared"]  # no temporary folders left


@pytest.mark.parametrize("top", [None, "cifar10"])
def test_imagefolder_round_trips_png_and_jpg(tmp_path, work, top):
    archive = tmp_path / "in" / "cifar.tar.gz"
    expected = archives.write_imagefolder(archive, per_class=3, top=top, exts=("png", "jpg", "jpeg"))
    untar.prepare(archive, work / "prepared", verify_counts=False)
    _check_outputs(work / "prepared", archive, expected, "imagefolder", 3)
    assert [p.name for p in work.iterdir()] == ["prepared"]


def test_the_manifest_says_how_the_images_were_encoded(tmp_path, work):
    """A JPEG mirror's quality and chroma subsampling change what a model sees: the
    manifest records them (read from the files' quantization tables), the official
    pickled arrays are lossless, and a mixed folder is no JPEG mirror."""
    archive = tmp_path / "in" / "jpg.tar.gz"
    archives.write_imagefolder(archive, per_class=2, exts=("jpg",))  # quality 75, Pillow's default 4:2:0
    m = untar.prepare(archive, work / "jpg", verify_counts=False)
    assert (m.name, m.encoding) == ("CIFAR-10 (JPEG mirror)", "JPEG quality 75, 4:2:0 chroma subsampling")
    official = tmp_path / "in" / "official.tar.gz"
    archives.write_official(official, per_class=2)
    assert untar.prepare(official, work / "official", verify_counts=False).encoding == "lossless, pickled arrays"
    mixed = tmp_path / "in" / "mixed.tar.gz"
    archives.write_imagefolder(mixed, per_class=2)
    m = untar.prepare(mixed, work / "mixed", verify_counts=False)
    assert (m.name, m.encoding) == ("CIFAR-10 (image folders)", None)


def test_jpeg_encoding_reads_quality_and_subsampling():
    def jpeg(quality, subsampling):
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 10, 30)).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        return buf.getvalue()

    assert untar.jpeg_encoding([jpeg(90, 0)] * 3) == "JPEG quality 90, 4:4:4 chroma subsampling"
    assert untar.jpeg_encoding([jpeg(40, 1)]) == "JPEG quality 40, 4:2:2 chroma subsampling"
    assert untar.jpeg_encoding([jpeg(75, 2), jpeg(90, 0)]) == "JPEG, mixed encodings (2 kinds)"


def test_uncompressed_tar_and_dot_prefixed_names(tmp_path, work):
    archive = tmp_path / "in" / "cifar.tar"
    expected = archives.write_imagefolder(archive, per_class=2, top=".", mode="w")
    untar.prepare(archive, work / "prepared", verify_counts=False)
    _check_outputs(work / "prepared", archive, expected, "imagefolder", 2)


def test_main_writes_output_and_is_deterministic(tmp_path, work, params, capsys):
    archive = tmp_path / "in" / "cifar.tar.gz"
    archives.write_imagefolder(archive, per_class=2)
    _run(params, archive, work / "a")
    _run(params, archive, work / "b")
    out = capsys.readouterr().out
    assert "20 train + 20 test images (imagefolder)" in out
    a, b = data.load_manifest(work / "a"), data.load_manifest(work / "b")
    assert a.data_sha256 == b.data_sha256
    # Running again over an existing output replaces it whole.
    _run(params, archive, work / "a")
    assert data.load_manifest(work / "a") == a
    assert sorted(p.name for p in work.iterdir()) == ["a", "b"]


def test_verify_counts_requires_the_official_counts(tmp_path, work, capsys):
    archive = tmp_path / "in" / "cifar.tar.gz"
    archives.write_official(archive, per_class=3)
    params = tmp_path / "in" / "strict.yaml"
    params.write_text("data:\n  verify_counts: true\n")
    with pytest.raises(SystemExit) as exc:
        _run(params, archive, work / "prepared")
    assert exc.value.code == 2
    err = _one_line(capsys)
    assert "the train split has 30 images; CIFAR-10 has 50,000" in err
    assert "data.verify_counts: false" in err
    assert list(work.iterdir()) == []


def test_caps_against_tar_bombs(tmp_path, monkeypatch):
    archive = tmp_path / "in" / "cifar.tar.gz"
    archives.write_imagefolder(archive, per_class=1)
    monkeypatch.setattr(untar, "MAX_MEMBERS", 10)
    with pytest.raises(PipelineError, match="more than 10 members"):
        untar.prepare(archive, tmp_path / "out", verify_counts=False)
    monkeypatch.setattr(untar, "MAX_MEMBERS", 200_000)
    monkeypatch.setattr(untar, "MAX_BYTES", 1000)
    with pytest.raises(PipelineError, match="unpack to more than"):
        untar.prepare(archive, tmp_path / "out", verify_counts=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------- bad archives

def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _marker(tmp_path):
    return tmp_path / "pwned"


def _traversal(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[archives.file_member("../evil.txt", b"x")])
    return "'../evil.txt': path escapes the extraction folder"


def _nested_traversal(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1,
                               extra=[archives.file_member("train/cat/../../../evil.txt", b"x")])
    return "path escapes the extraction folder"


def _absolute(tmp_path, archive):
    target = tmp_path / "abs-evil.txt"
    archives.write_imagefolder(archive, per_class=1, extra=[archives.file_member(str(target), b"x")])
    return "absolute path"


def _symlink(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[
        archives.special_member("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd")])
    return "'train/cat/link.png': symbolic link to '/etc/passwd'"


def _symlink_dir_then_write(tmp_path, archive):
    # The classic: a symlinked folder, then a file "inside" it.
    archives.write_imagefolder(archive, per_class=1, extra=[
        archives.special_member("train/dog", tarfile.SYMTYPE, str(tmp_path)),
        archives.file_member("train/dog/evil.txt", b"x")])
    return "symbolic link"


def _hardlink(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[
        archives.special_member("train/cat/hard.png", tarfile.LNKTYPE, "train/cat/0000.png")])
    return "hard link to 'train/cat/0000.png'"


def _fifo(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[
        archives.special_member("train/cat/fifo.png", tarfile.FIFOTYPE)])
    return "'train/cat/fifo.png': FIFO"


def _device(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[
        archives.special_member("train/cat/null.png", tarfile.CHRTYPE)])
    return "'train/cat/null.png': device file"


def _backslash(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[archives.file_member("..\\evil.txt", b"x")])
    return "NUL or a backslash"


def _outside_layout(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[archives.file_member("README.txt", b"hi")])
    return "'README.txt': not part of CIFAR-10's layouts"


def _not_an_image_name(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[archives.file_member("train/cat/run.sh", b"x")])
    return "'train/cat/run.sh': not part of CIFAR-10's layouts"


def _duplicate(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1,
                               extra=[archives.file_member("./train/cat/0000.png", b"x")])
    return "appears twice"


def _evil_pickle(tmp_path, archive):
    archives.write_official(archive, replace={"data_batch_1": archives.evil_pickle(_marker(tmp_path))})
    return "refusing to unpickle posix.system from archive member 'cifar-10-batches-py/data_batch_1'"


def _evil_meta(tmp_path, archive):
    archives.write_official(archive, replace={"batches.meta": archives.evil_pickle(_marker(tmp_path))})
    return "refusing to unpickle posix.system"


def _garbage_pickle(tmp_path, archive):
    archives.write_official(archive, replace={"test_batch": b"\x80\x04not a pickle"})
    return "cannot unpickle archive member 'cifar-10-batches-py/test_batch'"


def _missing_batch(tmp_path, archive):
    archives.write_official(archive)
    with tarfile.open(archive) as tf:  # rebuilt without data_batch_3
        kept = [(m, tf.extractfile(m).read() if m.isreg() else None)
                for m in tf.getmembers() if not m.name.endswith("data_batch_3")]
    archives.write_tar(archive, kept)
    return "lacks cifar-10-batches-py/data_batch_3"


def _wrong_label_names(tmp_path, archive):
    names = list(archives.CLASSES)
    names[3], names[5] = names[5], names[3]
    archives.write_official(archive, label_names=names)
    return "lists the classes airplane, automobile, bird, dog"


def _truncated(tmp_path, archive):
    archives.write_official(archive)
    archives.truncate(archive, 0.5)
    return f"cannot read archive {archive}"


def _truncated_imagefolder(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=2)
    archives.truncate(archive, 0.7)
    return "the file is corrupt or truncated — delete it and run the download stage again"


def _corrupted(tmp_path, archive):
    archives.write_official(archive)
    archives.flip_bytes(archive)
    return f"cannot read archive {archive}"


def _corrupted_imagefolder(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=2)
    archives.flip_bytes(archive)
    return "the file is corrupt or truncated"


def _not_a_tar(tmp_path, archive):
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"<html>404 Not Found</html>")
    return f"cannot read archive {archive}"


def _empty_tar(tmp_path, archive):
    archives.write_tar(archive, [archives.dir_member("train")])
    return "holds no files"


def _wrong_classes(tmp_path, archive):
    classes = ["kitten" if c == "cat" else c for c in archives.CLASSES]
    archives.write_imagefolder(archive, per_class=1, classes=classes)
    return "missing cat; unexpected 'kitten'"


def _wrong_size(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=2, odd_size=(64, 48))
    return "image 'train/airplane/0000.png' is 64x48 pixels; CIFAR-10 images are 32x32"


def _not_an_image(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1,
                               extra=[archives.file_member("test/cat/9999.jpg", b"text")])
    return "cannot decode image 'test/cat/9999.jpg'"


def _empty_class(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1, extra=[archives.dir_member("test/cat")])
    with tarfile.open(archive) as tf:
        kept = [(m, tf.extractfile(m).read() if m.isreg() else None)
                for m in tf.getmembers() if not m.name.startswith("test/cat/")]
    archives.write_tar(archive, kept)
    return "the test split has no images of class cat"


def _no_test_split(tmp_path, archive):
    archives.write_imagefolder(archive, per_class=1)
    with tarfile.open(archive) as tf:
        kept = [(m, tf.extractfile(m).read() if m.isreg() else None)
                for m in tf.getmembers() if not m.name.startswith("test")]
    archives.write_tar(archive, kept)
    return "has no test split"


BAD = [_traversal, _nested_traversal, _absolute, _symlink, _symlink_dir_then_write, _hardlink, _fifo,
       _device, _backslash, _outside_layout, _not_an_image_name, _duplicate, _evil_pickle, _evil_meta,
       _garbage_pickle, _missing_batch, _wrong_label_names, _truncated, _truncated_imagefolder,
       _corrupted, _corrupted_imagefolder, _not_a_tar, _empty_tar, _wrong_classes, _wrong_size,
       _not_an_image, _empty_class, _no_test_split]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_archive_is_refused_in_one_line(tmp_path, work, params, capsys, make):
    archive = tmp_path / "in" / "cifar.tar.gz"
    expect = make(tmp_path, archive)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        _run(params, archive, work / "prepared")
    assert exc.value.code == 2
    line = _one_line(capsys)
    assert expect in line, line
    # Nothing was written anywhere: no output, no temporary folders, no escaped files, no command ran.
    assert list(work.iterdir()) == []
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not _marker(tmp_path).exists()


def test_refusal_leaves_the_previous_output_untouched(tmp_path, work, params, capsys):
    good = tmp_path / "in" / "good.tar.gz"
    archives.write_imagefolder(good, per_class=1)
    _run(params, good, work / "prepared")
    before = {p.name: p.read_bytes() for p in (work / "prepared").iterdir()}
    for make in (_traversal, _corrupted, _evil_pickle, _wrong_size):
        bad = tmp_path / "in" / f"{make.__name__}.tar.gz"
        make(tmp_path, bad)
        with pytest.raises(SystemExit):
            _run(params, bad, work / "prepared")
        assert {p.name: p.read_bytes() for p in (work / "prepared").iterdir()} == before
        assert [p.name for p in work.iterdir()] == ["prepared"]
    assert not _marker(tmp_path).exists()
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()


def test_missing_archive_names_the_download_stage(tmp_path, params, capsys):
    with pytest.raises(SystemExit):
        _run(params, tmp_path / "nope.tar.gz", tmp_path / "out")
    assert "run `dvc repro download` first" in _one_line(capsys)


def _load(payload: bytes):
    return untar._RestrictedUnpickler(io.BytesIO(payload), "m", len(payload)).load()


def test_restricted_unpickler_allows_only_numpy_arrays():
    ok = pickle.dumps({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2]}, protocol=4)
    got = _load(ok)
    np.testing.assert_array_equal(got[b"data"], np.arange(6).reshape(2, 3))
    assert type(got[b"data"]) is np.ndarray
    for payload in (pickle.dumps(Path("x"), protocol=4), pickle.dumps(print, protocol=4)):
        with pytest.raises(PipelineError, match="refusing to unpickle"):
            _load(payload)


class _Declares:
    """Pickles as a call that allocates an array of a declared shape, with no data."""

    def __init__(self, make, args):
        self.make, self.args = make, args

    def __reduce__(self):
        return self.make, self.args


@pytest.mark.parametrize("make, args", [
    (np.ndarray, ((100_000, 3072), "u1")),                        # numpy.ndarray(shape, dtype)
    (untar._reconstruct, (np.ndarray, (100_000, 3072), b"B")),    # the helper array pickles use
])
def test_an_array_declared_larger_than_its_pickle_is_refused_before_allocation(make, args):
    payload = pickle.dumps({b"data": _Declares(make, args), b"labels": [0]}, protocol=4)
    assert len(payload) < 400
    with pytest.raises(PipelineError, match=r"declares an array of 307,200,000 elements in \d+ bytes"):
        _load(payload)


# --------------------------------------------------------------- the real thing

@pytest.mark.slow
def test_real_jpeg_mirror(tmp_path):
    if not REAL_ARCHIVE.is_file():
        pytest.skip(f"optional data {REAL_ARCHIVE} is absent")
    t0 = time.perf_counter()
    manifest = untar.prepare(REAL_ARCHIVE, tmp_path / "prepared", verify_counts=True).model_dump()
    seconds = time.perf_counter() - t0
    assert manifest["format"] == "imagefolder"
    assert manifest["encoding"] == "JPEG quality 75, 4:2:0 chroma subsampling"  # as the mirror's README says
    assert manifest["splits"]["train"] == {"count": 50_000, "per_class": {c: 5_000 for c in data.CLASSES}}
    assert manifest["splits"]["test"] == {"count": 10_000, "per_class": {c: 1_000 for c in data.CLASSES}}
    x, y = data.load_split(tmp_path / "prepared", "test")
    assert x.shape == (10_000, 3, 32, 32) and np.bincount(y).tolist() == [1_000] * 10
    assert 20 < x.mean() < 235  # real pixels, not a constant
    assert seconds < 60, f"prepare() took {seconds:.1f} s"
