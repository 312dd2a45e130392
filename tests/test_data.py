"""pipeline.data: loading the prepared arrays and stratified subsets."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import untar
from pipeline.core import dataset as data
from pipeline.core.errors import PipelineError
from pipeline.core.dataset import load_split, load_subset, load_training, stratified_subset, validation_split
from tests import archives


def test_classes_are_the_official_order():
    assert data.CLASSES == ("airplane", "automobile", "bird", "cat", "deer",
                            "dog", "frog", "horse", "ship", "truck")
    assert data.CLASSES == archives.CLASSES
    assert untar.CLASSES is data.CLASSES


# ------------------------------------------------------------ stratified_subset

def _labels(per_class=100, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def test_subset_has_exact_per_class_counts():
    labels = _labels()
    idx = stratified_subset(labels, 25, seed=0)
    assert len(idx) == 25 and len(np.unique(idx)) == 25
    assert np.all(np.diff(idx) > 0)  # sorted
    # 25 = 10 * 2 + 5: the five lowest classes get the extra image.
    assert np.bincount(labels[idx], minlength=10).tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    assert np.bincount(labels[stratified_subset(labels, 500, 0)]).tolist() == [50] * 10


def test_subset_is_deterministic_and_depends_on_the_seed():
    labels = _labels()
    a = stratified_subset(labels, 100, seed=1)
    np.testing.assert_array_equal(a, stratified_subset(labels, 100, seed=1))
    b = stratified_subset(labels, 100, seed=2)
    assert not np.array_equal(a, b)
    assert np.bincount(labels[b]).tolist() == [10] * 10


def test_no_limit_or_a_large_one_means_everything():
    labels = _labels(per_class=3)
    for limit in (None, 30, 31, 10**9):
        np.testing.assert_array_equal(stratified_subset(labels, limit, 0), np.arange(30))
    assert len(stratified_subset(labels, 0, 0)) == 0


def test_small_classes_give_what_they_have():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    idx = stratified_subset(labels, 30, 0)
    assert np.bincount(labels[idx]).tolist() == [2, 14, 14]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=10), limit=st.integers(0, 400),
       seed=st.integers(0, 2**32 - 1))
def test_subset_properties(counts, limit, seed):
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(len(counts)), counts))
    idx = stratified_subset(labels, limit, seed)
    assert len(idx) == min(limit, len(labels))
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    got = np.bincount(labels[idx], minlength=len(counts))
    # Every class gets its fair share or all it has; shares differ by at most one,
    # and the extra ones go to the lowest classes.
    full = got == np.array(counts)
    if (~full).any():
        shares = got[~full]
        assert shares.max() - shares.min() <= 1
        assert np.all(np.diff(shares) <= 0)
        assert np.all(got[full] <= shares.max() + 1)


def test_subset_rejects_bad_input():
    with pytest.raises(ValueError):
        stratified_subset(np.zeros((2, 2), int), 1, 0)
    with pytest.raises(ValueError):
        stratified_subset(np.zeros(5, int), -1, 0)


# ------------------------------------------------------------------- load_split

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    expected = archives.write_official(root / "cifar.tar.gz", per_class=2)
    untar.prepare(root / "cifar.tar.gz", root / "out", verify_counts=False)
    return root / "out", expected


def test_load_split_round_trip(prepared):
    folder, expected = prepared
    for split in ("train", "test"):
        x, y = data.load_split(folder, split)
        assert isinstance(x, np.memmap) and not x.flags.writeable
        np.testing.assert_array_equal(x, expected[f"{split}_x"])
        np.testing.assert_array_equal(y, expected[f"{split}_y"])
        idx = stratified_subset(y, 10, 0)
        assert np.bincount(y[idx]).tolist() == [1] * 10 and x[idx].shape == (10, 3, 32, 32)
    x, _ = data.load_split(folder, "test", mmap=False)
    assert not isinstance(x, np.memmap)
    assert data.load_manifest(folder).splits["train"].count == 20


def test_missing_folder_says_to_run_untar(tmp_path):
    with pytest.raises(PipelineError, match=r"run `dvc repro untar` first"):
        data.load_split(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"manifest.json is missing; run `dvc repro untar` first"):
        data.load_manifest(tmp_path / "empty")


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def _replace(folder, name: str, write) -> None:
    """Replace a prepared file and record its checksum in the manifest, as a consistent
    rewrite would: the checks after the checksum's still have to catch it."""
    from pipeline.core.io import sha256_file

    write(folder / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["arrays"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_arrays_must_match_the_manifest(prepared, tmp_path):
    folder = _copy(prepared[0], tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["count"] = 21
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"train_x.npy holds uint8 \(20, 3, 32, 32\), expected uint8 "
                                            r"\(21, 3, 32, 32\)"):
        data.load_split(folder, "train")
    _replace(folder, "test_y.npy", lambda p: np.save(p, np.zeros(20, np.int32)))
    with pytest.raises(PipelineError, match="test_y.npy holds int32"):
        data.load_split(folder, "test")


def test_pickled_or_broken_arrays_are_refused(prepared, tmp_path):
    folder = _copy(prepared[0], tmp_path)
    _replace(folder, "test_y.npy", lambda p: np.save(p, np.array([object()] * 20), allow_pickle=True))
    with pytest.raises(PipelineError, match="cannot read .*test_y.npy"):
        data.load_split(folder, "test")
    _replace(folder, "train_x.npy", lambda p: p.write_bytes(b"junk"))
    with pytest.raises(PipelineError, match="cannot read .*train_x.npy"):
        data.load_split(folder, "train")
    (folder / "manifest.json").write_text("{")
    with pytest.raises(PipelineError, match="not valid JSON"):
        data.load_manifest(folder)


def test_labels_out_of_range_are_refused(prepared, tmp_path):
    folder = _copy(prepared[0], tmp_path)
    _replace(folder, "test_y.npy", lambda p: np.save(p, np.full(20, 10, np.int64)))
    with pytest.raises(PipelineError, match="labels outside 0..9"):
        data.load_split(folder, "test")


# ------------------------------------------------------------ validation split


def test_validation_images_are_held_out_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    held = validation_split(labels, 0.1, seed=0)
    assert held.sum() == 50 and np.bincount(labels[held]).tolist() == [5] * 10
    np.testing.assert_array_equal(held, validation_split(labels, 0.1, seed=0))
    assert not np.array_equal(held, validation_split(labels, 0.1, seed=1))
    assert not validation_split(labels, 0.0, seed=0).any()


def test_the_trained_and_held_out_images_split_the_study_subset(tmp_path):
    from tests.conftest import write_prepared

    folder = write_prepared(tmp_path / "prepared")
    (tx, ty, ti), (vx, vy, vi) = load_training(folder, 100, 0.2, 0)
    (_, _, subset) = load_subset(folder, "train", 100, 0)
    assert len(vi) == 20 and len(ti) == 80 and not set(ti) & set(vi)
    np.testing.assert_array_equal(np.sort(np.concatenate([ti, vi])), subset)
    x, y = load_split(folder, "train")
    np.testing.assert_array_equal(vx, x[vi])
    np.testing.assert_array_equal(ty, y[ti])
    (tx0, _, ti0), (_, _, vi0) = load_training(folder, 100, 0.0, 0)
    assert len(vi0) == 0 and np.array_equal(ti0, subset)  # no split: the subset as before


def test_prepared_arrays_are_checked_against_their_manifest_when_read(prepared, tmp_path):
    """A byte of a prepared array changed after the untar stage wrote it: refused with one
    line, even where the shape and dtype still fit."""
    folder = _copy(prepared[0], tmp_path)
    data.load_split(folder, "train")
    path = folder / "train_x.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one pixel
    path.write_bytes(bytes(raw))
    with pytest.raises(PipelineError, match=r"train_x.npy does not match the sha256 manifest.json records"):
        data.load_split(folder, "train")
