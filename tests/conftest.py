"""Shared fixtures and helpers.

- `prepared`: a small prepared data set (the untar stage's format) of synthetic,
  learnable images, made once per session.
- `project(tmp_path, **params)`: a git + DVC repository of this project's code
  with a small generated official-format archive, for end-to-end runs.
- `trained`: such a project whose default study ran end to end once per session;
  `make_project(..., cached=trained)` copies its arm, evaluation and figure caches
  in, so a test that needs a study (not its training) restores it.
- `run(cmd, cwd)`: a shell command in such a project, with the venv on PATH and
  MLflow published only when a test asks (`publish_tracking`; TRACKING_ON: by
  each stage as it ends, as for users).
- `study_files`: a real 2-arm x 2-seed study through the stages' main()s (slow).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import dataset
from pipeline.core.io import sha256_file
from tests.archives import write_official
from tests.synthetic import images

REPO = Path(__file__).resolve().parents[1]
# Each test project keeps its arms in its own folder (a relative path is taken from the
# repository root), never in the user's arm store; tests of the store's own location unset it.
os.environ["CIFAR_ABLATE_ARMS"] = ".arm-cache"
BIN = Path(sys.executable).parent
REAL_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
REAL_SHA256 = "2ca76c958b9e50d95e55a63e11fddfedcef00332cb5172550a6380cb2c0eaab4"


# --------------------------------------------------------------------------- data


def write_prepared(folder: Path, train_per_class: int = 10, test_per_class: int = 6) -> Path:
    """Synthetic prepared arrays and a manifest like the untar stage's."""
    folder.mkdir(parents=True)
    splits = {"train": images(train_per_class, seed=1), "test": images(test_per_class, seed=2)}
    for split, (x, y) in splits.items():
        np.save(folder / f"{split}_x.npy", x, allow_pickle=False)
        np.save(folder / f"{split}_y.npy", y, allow_pickle=False)
    arrays = {name: sha256_file(folder / name) for name in dataset.ARRAY_FILES}
    manifest = {"format": "synthetic", "name": "synthetic CIFAR-shaped images", "classes": list(dataset.CLASSES),
                "splits": {s: {"count": int(len(y)), "per_class": {c: int((y == k).sum())
                                                                  for k, c in enumerate(dataset.CLASSES)}}
                           for s, (_, y) in splits.items()},
                "source": {"path": "synthetic", "sha256": "0" * 64},
                "arrays": arrays, "data_sha256": dataset.data_sha256(arrays)}
    (folder / dataset.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "prepared")


# --------------------------------------------------------------------------- projects


# The stages publish to MLflow as they end; in the tests that is the exception, where it
# is what they test: the others publish when they read the store, once.
TRACKING_ON = {"CIFAR_ABLATE_TRACKING": "on"}


def env(extra: dict | None = None) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "RAY_"))}
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out.setdefault("CIFAR_ABLATE_TRACKING", "off")
    out["GIT_AUTHOR_NAME"] = out["GIT_COMMITTER_NAME"] = "test"
    out["GIT_AUTHOR_EMAIL"] = out["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    return {**out, **(extra or {})}


def run(cmd: str, cwd: Path, check: bool = True, timeout: int = 600, extra_env: dict | None = None):
    out = subprocess.run(cmd, shell=True, cwd=cwd, env=env(extra_env), capture_output=True, text=True,
                         timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


CACHES = (".arm-cache", ".cache/facts", ".cache/figures")


def make_project(tmp: Path, per_class: int = 12, cached: Path | None = None, **params) -> Path:
    """A git + DVC repository holding this project's code and a small official-format
    archive; with `cached`, a copy of that project's caches (see `trained`)."""
    proj = tmp / "proj"
    proj.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy2(REPO / name, proj / name)
    for name in ("pipeline", "models"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
    archive = proj / "cifar-10-python.tar.gz"  # committed: queued experiments' copies have it too
    write_official(archive, per_class=per_class)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p.update({"seeds": [0, 1], "epochs": 2, "batch_size": 32})
    # a relative path: the same params.yaml, so the same commit, in every project
    p["data"].update({"url": archive.name, "sha256": sha256_file(archive), "md5": None, "verify_counts": False})
    p.update(params)
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run("git init -q && dvc init -q && dvc config core.analytics false", proj)
    shutil.copytree(REPO / ".dvc" / "plots", proj / ".dvc" / "plots")  # the plot templates
    shutil.copy2(REPO / ".dvc" / "config", proj / ".dvc" / "config")
    # one commit for the same tree, whatever the time: checkpoints record it, and those a
    # project retrains equal the ones it copied from `cached`
    date = "2026-01-01T00:00:00Z"
    run(f"git add -A && git add -f {archive.name} && git commit -qm init", proj,
        extra_env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    for rel in CACHES if cached is not None else ():
        shutil.copytree(cached / rel, proj / rel, ignore=shutil.ignore_patterns("*.lock", "quarantine"))
    return proj


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A project whose default study (make_project's params) ran `dvc repro` once."""
    proj = make_project(tmp_path_factory.mktemp("trained"))
    run("dvc repro", proj)
    return proj


@pytest.fixture
def project(tmp_path):
    return lambda **params: make_project(tmp_path, **params)


def publish_tracking(proj: Path) -> None:
    """Publish the project's study to its MLflow store now (its stages did not: tracking off)."""
    run(f"{sys.executable} -m pipeline.tracking publish", proj)


def publish_study(files: dict, db: Path) -> None:
    """Publish a study of `run_study` (its runs, evaluation and report) to the store `db`."""
    from pipeline.tracking.__main__ import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(files["root"])
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        main(["publish", "--params", str(files["params"]), "--runs", str(files["runs"]),
              "--evaluation", str(files["evaluation"]), "--reports", str(files["reports"].parent)])


def mlflow_runs(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select r.run_uuid, r.status, (select value from tags t where t.run_uuid = r.run_uuid "
            "and t.key = 'mlflow.parentRunId'), r.name from runs r").fetchall()
        steps = dict(conn.execute("select run_uuid, count(distinct step) from metrics "
                                  "where key = 'test_acc' group by run_uuid").fetchall())
    return [{"id": r, "status": s, "parent": p, "name": n, "epochs": steps.get(r, 0)} for r, s, p, n in rows]


def descendants(pid: int) -> set[int]:
    """The live processes started by `pid`, their children, and so on."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p}
        todo.extend(kids - found)
        found |= kids
    return found


def wait_for_saved_epochs(root: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 300) -> None:
    """Wait until `n` jobs of the train stage running as `proc` have saved an epoch in
    `root`'s arm cache (fails if it exits first)."""
    deadline = time.monotonic() + timeout
    while len(list(root.glob(".arm-cache/*/state.pt"))) < n:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the stage ended before saving an epoch:\n{out[-2000:]}")
        assert time.monotonic() < deadline, "no epoch was saved"
        time.sleep(0.05)


def epochs_printed(out: str) -> dict[str, list[int]]:
    """Per run label ("aug=none seed=0"), the epochs the train stage reported training, in order."""
    import re

    found: dict[str, list[int]] = {}
    for label, epoch in re.findall(r"^(.+ seed=\d+) epoch (\d+)/\d+:", out, re.M):
        found.setdefault(label, []).append(int(epoch))
    return found


def assert_trained_fresh(out: str, runs: int, epochs: int) -> None:
    """Every one of `runs` runs trained here, from its first epoch to its last: none was
    restored from the arm store or resumed (what a --retrain comparison relies on)."""
    assert "restored from the arm cache" not in out and "resuming after epoch" not in out, out[-3000:]
    printed = epochs_printed(out)
    assert len(printed) == runs and all(e == list(range(1, epochs + 1)) for e in printed.values()), printed


def assert_resumed(out: str, epochs: int) -> dict[str, int]:
    """Each run that said it resumes after epoch k trained exactly epochs k+1..`epochs`
    after saying so (not again from epoch 1); returns {label: k}."""
    import re

    resumed = {}
    for m in re.finditer(r"^(.+? seed=\d+): (?:.*; )?resuming after epoch (\d+)", out, re.M):
        label, k = m.group(1), int(m.group(2))
        after = epochs_printed(out[m.end():]).get(label, [])
        assert after == list(range(k + 1, epochs + 1)), (label, k, after)
        resumed[label] = k
    assert resumed, out[-3000:]
    return resumed


def run_queue(proj: Path, jobs: int = 2, timeout: float = 600, extra_env: dict | None = None) -> str:
    """`dvc queue start -j jobs` and wait until every queued experiment ended; `dvc queue status`."""
    run(f"dvc queue start -j {jobs}", proj, extra_env=extra_env)
    deadline = time.monotonic() + timeout
    done = False
    try:
        while True:
            status = run("dvc queue status", proj).stdout
            if "Queued" not in status and "Running" not in status:
                done = True
                return status
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:  # a test that gave up leaves no experiment training behind it
        run("dvc queue stop" if done else "dvc queue stop --kill", proj, check=False)


def assert_same_predictions(served, checkpoint: Path, data: Path, n: int = 64) -> None:
    """A served model (uint8 images in, logits out) predicts the classes its checkpoint predicts."""
    import torch

    import models
    from tests.training import normalize

    ckpt = torch.load(checkpoint, weights_only=True)
    net = models.create_model(ckpt["config"]["model"], **ckpt["config"]["knobs"])
    net.load_state_dict(ckpt["model"])
    net.eval()
    x = torch.from_numpy(np.load(data / "test_x.npy")[:n])
    with torch.no_grad():
        assert torch.equal(served.eval()(x).argmax(1), net(normalize(x, ckpt["config"]["norm"])).argmax(1))


# --------------------------------------------------------------------------- a real small study


def run_study(root: Path, data: Path, seeds=(0, 1), tag: str = "", mlflow: bool = False,
              data_params: dict | None = None, **extra) -> dict[str, Path]:
    """params<tag>.yaml -> runs<tag>/ -> evaluation<tag>/ -> reports<tag>/ through the stages' main()s,
    with `data_params` as params.yaml's data section. Call with the cwd at `root`."""
    from pipeline.evaluate.stage import main as evaluate
    from pipeline.report.stage import main as report
    from pipeline.train.stage import main as train

    paths = {k: root / f"{k}{tag}" for k in ("runs", "evaluation", "reports", "metrics", "curves")}
    paths["params"] = root / f"params{tag}.yaml"
    p = {"study": "report-test", "preset": "simple_cnn", "seeds": seeds if isinstance(seeds, dict) else list(seeds),
         "epochs": 1, "batch_size": 32,
         "device": "cpu", "report": {"bootstrap": 200}, **({"data": data_params} if data_params else {}), **extra}
    paths["params"].write_text(yaml.safe_dump(p, sort_keys=False))
    train(["--params", str(paths["params"]), "--data", str(data), "--runs", str(paths["runs"]),
           "--metrics", str(paths["metrics"] / "train.json"), "--curves", str(paths["curves"]) + ".csv",
           "--no-progress"] + ([] if mlflow else ["--no-mlflow"]))
    evaluate(["--params", str(paths["params"]), "--data", str(data), "--runs", str(paths["runs"]),
              "--out", str(paths["evaluation"]), "--metrics", str(paths["metrics"] / "evaluate.json"),
              "--headline", str(paths["metrics"] / "study.json")])
    report(["--params", str(paths["params"]), "--data", str(data), "--runs", str(paths["runs"]),
            "--evaluation", str(paths["evaluation"]), "--out", str(paths["reports"])])
    paths["data"] = data
    paths["root"] = root
    from pipeline.core.config import load_params

    paths["reports"] = paths["reports"] / load_params(paths["params"]).report_name
    return paths


@pytest.fixture(scope="session")
def study_files(tmp_path_factory, prepared):
    """A 2-arm x 2-seed study made by the real stages, and a 1-seed variant restored
    from the arm cache (session-wide: several test modules read it)."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("CIFAR_ABLATE_TRACKING", "off")  # a test publishes when it needs to
        two = run_study(root, prepared, seeds=(0, 1), mlflow=True,
                        report={"bootstrap": 200, "register_model": "report-test-winner"})
        one = run_study(root, prepared, seeds=(0,), tag="1")
    return {"root": root, "two": two, "one": one, "db": root / "mlflow.db"}
