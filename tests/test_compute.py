"""Compute for the answer: `precision: auto` on the CPU, equivalence tests, the arm
store in the user cache shared by clones, and runs rebuilt from committed records."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import stats
from tests.conftest import REPO, env, make_project, run


def _cpuinfo(path: Path, flags: str) -> Path:
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx2 {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n\n")
    return path


@pytest.mark.parametrize("flags, expected", [("avx512f avx512_bf16", "bf16"), ("amx_bf16 amx_tile", "bf16"),
                                             ("avx512f avx512bw avx512_vnni", "fp32"), ("", "fp32")])
def test_the_shipped_preset_trains_bf16_where_the_cpu_computes_it_natively(tmp_path, monkeypatch, flags, expected):
    """The shipped params.yaml, resolved for a CPU that reports these flags, as the
    train stage resolves it (its devices, then its jobs)."""
    from pipeline.core import hardware
    from pipeline.core.config import load_params
    from pipeline.train.engine import local_devices
    from pipeline.train.plan import Identity, jobs_for

    monkeypatch.setattr(hardware, "CPUINFO", _cpuinfo(tmp_path / "cpuinfo", flags))
    params = load_params(REPO / "params.yaml")
    assert {a.train.precision for a in params.arms} == {"auto"}  # shipped: auto, not a fixed precision
    device, found = local_devices("cpu")
    jobs = jobs_for(params, params.seeds[:1], Identity({}, {}, "cpu"), device, found.bf16)
    assert {j.cfg.precision for j in jobs} == {expected}
    assert hardware.cpu_name() == "Test CPU 9000"
    # the precision is part of the fingerprint: the same arm in fp32 is another arm
    other = jobs_for(params, params.seeds[:1], Identity({}, {}, "cpu"), device, not found.bf16)
    assert {j.fp for j in jobs}.isdisjoint(j.fp for j in other)


@pytest.mark.parametrize("shift", [0.0, 0.003, -0.006, 0.009, 0.012, -0.02])
def test_tost_agrees_with_statsmodels_on_both_sides_of_the_margin(shift):
    from statsmodels.stats.weightstats import ttost_ind

    rng = np.random.default_rng(11)
    a, b = rng.normal(0.70 + shift, 0.005, 24), rng.normal(0.70, 0.008, 20)
    e = stats.tost(a, b, 0.01, alpha=0.05)
    assert e.p == pytest.approx(ttost_ind(a, b, -0.01, 0.01, usevar="unequal")[0], rel=1e-9)
    # the same decision read from the interval: equivalent iff the 90% CI lies within the margin
    assert (e.p < 0.05) == (-0.01 < e.ci.low and e.ci.high < 0.01)
    w = stats.welch(a, b)
    verdict = stats.equivalence_verdict(e.p, w.p, 0.05)
    if abs(shift) <= 0.003:
        assert verdict == "equivalent"
    if abs(shift) >= 0.012:
        assert verdict == "differs"


def test_the_three_verdicts():
    assert stats.equivalence_verdict(0.01, 0.001, 0.05) == "equivalent"  # a real but small difference
    assert stats.equivalence_verdict(0.4, 0.001, 0.05) == "differs"
    assert stats.equivalence_verdict(0.4, 0.3, 0.05) == "inconclusive"
    assert stats.equivalence_verdict(None, None, 0.05) == "inconclusive"


def test_tost_power_agrees_with_a_direct_simulation_of_statsmodels_test():
    """The power at the margin (equal arms, the observed SDs and seed counts) against a
    brute-force simulation calling ttost_ind on each simulated study (other draws)."""
    from statsmodels.stats.weightstats import ttost_ind

    rng = np.random.default_rng(3)
    a, b = rng.normal(0.7, 0.008, 12), rng.normal(0.7, 0.008, 12)
    e = stats.tost(a, b, 0.01)
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    sims = np.random.default_rng(99)
    hits = [ttost_ind(sims.normal(0, sa, 12), sims.normal(0, sb, 12), -0.01, 0.01, usevar="unequal")[0] < 0.05
            for _ in range(3000)]
    mc = float(np.mean(hits))
    assert abs(e.power - mc) < 4 * np.sqrt(mc * (1 - mc) / 3000) + 0.005, (e.power, mc)
    assert 0.2 < e.power < 1.0


def test_numpy_and_pillow_are_pinned_exactly():
    """Their versions decide every fingerprint (numpy is hashed in it; Pillow decodes the
    JPEG mirror into the arrays whose checksum is hashed): a range would let them drift."""
    import tomllib

    from pipeline.arms import PINNED

    deps = "\n".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])

    for lib in PINNED:
        assert re.search(rf"^{lib}==\d", deps, re.M | re.I), f"{lib} is not pinned exactly"


# --------------------------------------------------------------------------- the arm store, shared


def _train(proj: Path, store: Path | None, extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = env({"PYTHONPATH": str(proj), "XDG_CACHE_HOME": str(proj.parent / "xdg"), **(extra or {})})
    e.pop("CIFAR_ABLATE_ARMS", None)
    if store is not None:
        e["CIFAR_ABLATE_ARMS"] = str(store)
    return subprocess.run([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-mlflow",
                           "--no-progress"], cwd=proj, env=e, capture_output=True, text=True, timeout=600, **kw)


def _clone(tmp_path: Path, name: str, prepared: Path, **params) -> Path:
    proj = tmp_path / name
    for top in ("pipeline", "models"):
        shutil.copytree(REPO / top, proj / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(prepared, proj / "prepared")
    (proj / "params.yaml").write_text(yaml.safe_dump({"seeds": [0], "epochs": 1, "batch_size": 32, "device": "cpu",
                                                      **params}))
    return proj


def test_a_second_clone_restores_from_the_user_store_and_a_repositorys_old_store_is_taken_over(tmp_path, prepared):
    """The store is in the user cache folder ($XDG_CACHE_HOME here): a second clone
    restores the first one's arms without training; a clone holding arms in its own
    .arm-cache/ (the old place) hands them over to the store on its first run."""
    a, b = _clone(tmp_path, "a", prepared), _clone(tmp_path, "b", prepared)
    first = _train(a, None)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("epoch 1/1") == 2
    store = tmp_path / "a" / ".." / "xdg" / "cifar-ablate" / "arms"
    assert len(list(store.glob("*/done/record.npz"))) == 2
    second = _train(b, None)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "epoch 1/" not in second.stdout and second.stdout.count("restored from the arm cache") == 2
    # the old place: this store's entries moved into c/.arm-cache, a fresh user store
    c = _clone(tmp_path, "c", prepared)
    shutil.move(str(store), str(c / ".arm-cache"))
    third = _train(c, None, {"XDG_CACHE_HOME": str(tmp_path / "other-xdg")})
    assert third.returncode == 0, third.stderr[-3000:]
    assert "took over 2 finished arm(s) from .arm-cache/" in third.stdout, third.stdout
    assert "epoch 1/" not in third.stdout and third.stdout.count("restored from the arm cache") == 2
    assert not (c / ".arm-cache").exists()
    assert len(list((tmp_path / "other-xdg" / "cifar-ablate" / "arms").glob("*/done/record.npz"))) == 2


def test_two_processes_asking_for_one_arm_train_it_once(tmp_path, prepared):
    """Two clones start the same study at once on one store: one trains each run, the
    other waits and restores it; the store ends with one whole entry per run."""
    store = tmp_path / "store"
    a = _clone(tmp_path, "a", prepared, aug="standard", epochs=3)
    b = _clone(tmp_path, "b", prepared, aug="standard", epochs=3)
    procs = []
    for proj in (a, b):
        e = env({"PYTHONPATH": str(proj), "CIFAR_ABLATE_ARMS": str(store)})
        procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.train", "--data", "prepared", "--no-mlflow",
                                       "--no-progress"], cwd=proj, env=e, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = "".join(outs)
    assert both.count("epoch 3/3") == 1, both  # trained once
    assert both.count("restored from the arm cache") == 1, both
    assert len(list(store.glob("*/done/record.npz"))) == 1 and not list(store.glob("*/state.pt"))
    from pipeline.core.record import ArmRecord

    [entry] = store.glob("*/done")
    assert ArmRecord.load(entry / "record.npz", entry.parent.name).meta.seed == 0


def test_list_and_prune_by_their_rule(tmp_path, prepared, monkeypatch):
    """prune removes what no study used for N days and nothing names; list shows each
    run's arm, seed, size and studies."""
    import datetime as dt

    from pipeline.arms import list_entries, prune
    from pipeline.train.armstore import ArmStore

    proj = _clone(tmp_path, "p", prepared, aug=["none", "standard"])
    store_dir = tmp_path / "store"
    out = _train(proj, store_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    store = ArmStore(store_dir)
    lines = list_entries(store)
    assert "2 finished run(s)" in lines[0] and any("aug=standard" in line and "simple_cnn" in line for line in lines)
    now = dt.datetime.now(dt.timezone.utc)
    assert prune(store, set(), 30, now, dry_run=True) == []  # used just now
    later = now + dt.timedelta(days=31)
    from pipeline.core.record import ArmRecord

    metas = {e.arm: ArmRecord.peek(store.folder(e.fingerprint) / "done" / "record.npz") for e in store.entries()}
    keep = {(metas["aug=none"].config.model_dump_json(), 0)}  # named by params or a plan
    gone = prune(store, keep, 30, later, dry_run=True)
    assert [e.arm for e in gone] == ["aug=standard"] and len(store.entries()) == 2
    gone = prune(store, keep, 30, later, dry_run=False)
    assert [e.arm for e in store.entries()] == ["aug=none"]


# --------------------------------------------------------------------------- records


@pytest.mark.slow
def test_a_fresh_clone_with_an_empty_store_renders_the_report_from_committed_records(tmp_path, trained):
    """Export the study's records, commit them; a clone on a machine whose store is
    empty rebuilds the evaluation and the report from them without training: every
    figure and verdict equal (the generated-at time, commit and restored count aside)."""
    proj = make_project(tmp_path, cached=trained)
    run("dvc repro", proj)
    out = run(f"{sys.executable} -m pipeline.arms export", proj).stdout
    assert re.search(r"(\d+) record\(s\) copied, 0 already there; \1 of the study's \1 runs finished", out), out
    run("git add -f reports && git commit -qm records", proj)  # -f: a test-sized study's folder is git-ignored
    clone = tmp_path / "clone"
    run(f"git clone -q {proj} {clone}", tmp_path)
    shutil.copy2(proj / "cifar-10-python.tar.gz", clone)  # committed with add -f: cloned too, but be sure
    again = run("dvc repro", clone, extra_env={"CIFAR_ABLATE_ARMS": str(tmp_path / "empty-store")})
    text = again.stdout + again.stderr
    assert "epoch 1/" not in text and "from its committed record (no weights here)" in text, text[-3000:]
    assert "run(s) have no weights on this machine" in text
    study = next(p.name for p in (proj / "reports").iterdir() if (p / "report.md").exists())

    def comparable(path: Path) -> str:
        t = path.read_text()
        t = re.sub(r"Generated \| [^|]+\|", "Generated | - |", t)
        t = re.sub(r"Git commit \(report\) \| [^|]+\|", "", t)
        t = re.sub(r"Parent run \(tracking key\) \| [^|]+\|", "", t)  # this execution's MLflow parent run
        return re.sub(r"Runs restored from the arm cache \| [^|]+\|", "", t)

    assert comparable(clone / "reports" / study / "report.md") == comparable(proj / "reports" / study / "report.md")
    figures = sorted((proj / "reports" / study / "figures").iterdir())
    assert figures and all((clone / "reports" / study / "figures" / f.name).read_bytes() == f.read_bytes()
                           for f in figures)
    assert (clone / "metrics" / "study.json").read_text() == (proj / "metrics" / "study.json").read_text()
    assert not list((tmp_path / "empty-store").glob("*/done"))  # nothing trained into it


def test_a_record_edited_or_bound_to_another_run_is_refused(tmp_path):
    from pipeline.core.schema import CorruptFile
    from pipeline.core.jobs import Evaluated, Finished, HistoryRow
    from pipeline.core.config import parse_params
    from pipeline.core.record import ArmRecord, fingerprint_of

    cfg = parse_params({"seeds": [0]}).arms[0].train
    ev = Evaluated(epoch=1, test_pred=np.zeros(20, np.uint8), test_confidence=np.ones(20, np.float32),
                   test_loss=1.0, train_acc=0.5, train_loss=1.0)
    done = Finished(model={}, best_state=None, best_epoch=1, diagnostics=None, evaluated={"last": ev},
                    filters=np.zeros((2, 3, 3, 3), np.float32),
                    history=[HistoryRow(epoch=1, train_loss=1.0, train_acc=0.5, test_loss=1.0, test_acc=0.4, lr=1e-3,
                                        epoch_seconds=1.0, images_per_second=10.0)])
    identity = {"config": cfg.model_dump(), "seed": 0}
    fp = fingerprint_of(identity)
    rec = ArmRecord.of(done, fingerprint=fp, identity=identity, arm="aug=none", seed=0, cfg=cfg, trained_at="t",
                       code_version="c", machine="m")
    rec.save(tmp_path / "r.npz")
    assert ArmRecord.load(tmp_path / "r.npz", fp).meta.history[0].test_acc == 0.4
    with pytest.raises(CorruptFile, match="belongs to another arm x seed"):
        ArmRecord.load(tmp_path / "r.npz", "0" * 64)
    edited = ArmRecord(rec.meta.model_copy(update={"history": [rec.meta.history[0].model_copy(
        update={"test_acc": 0.9})]}), rec.arrays)
    edited.save(tmp_path / "edited.npz")
    with pytest.raises(CorruptFile, match="checksum does not match"):
        ArmRecord.load(tmp_path / "edited.npz")
    flipped = dict(rec.arrays, last_pred=np.ones(20, np.uint8))
    ArmRecord(rec.meta, flipped).save(tmp_path / "flipped.npz")
    with pytest.raises(CorruptFile, match="checksum does not match"):
        ArmRecord.load(tmp_path / "flipped.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "r.npz").read_bytes()[:200])
    with pytest.raises(CorruptFile, match="not a readable arm record"):
        ArmRecord.load(tmp_path / "cut.npz")
    assert os.path.getsize(tmp_path / "r.npz") < 10_000
