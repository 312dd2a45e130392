"""Finished and interrupted arms, kept by fingerprint so no work is lost.

An arm x seed's fingerprint is the sha256 of its resolved training config, its
seed, the data it trains on (checksum and subset) and the training code. The
store sits at the repository root (`.arm-cache/`, found from inside queued DVC
experiments too), so every experiment shares it:

- `<fp>/done/`: a finished run's files, written atomically. A later run with the
  same fingerprint is restored from here instead of trained again.
- `<fp>/state.pt`: the full training state after the last finished epoch, so a
  killed run resumes where it stopped.
- `<fp>.lock`: held while one process trains that fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.io import atomic_path

STORE = ".arm-cache"
# The code a trained arm depends on (the train stage's code deps in dvc.yaml).
TRAIN_CODE = ("pipeline/train.py", "pipeline/trainer.py", "pipeline/augment.py",
              "pipeline/config.py", "pipeline/diagnostics.py", "pipeline/armstore.py")
TRAIN_CODE_DIRS = ("models",)
_NOT_FINGERPRINTED = ("device", "eval_batch_size")  # where it runs, not what it computes


def code_digest(root: Path) -> str:
    h = hashlib.sha256()
    files = [root / f for f in TRAIN_CODE]
    for d in TRAIN_CODE_DIRS:
        files += sorted((root / d).rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def fingerprint(cfg: TrainConfig, seed: int, data_id: dict, code: str) -> str:
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_FINGERPRINTED}
    blob = json.dumps({"config": config, "seed": seed, "data": data_id, "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ArmStore:
    def __init__(self, root: Path):
        self.root = Path(root) / STORE

    def folder(self, fp: str) -> Path:
        return self.root / fp

    def done(self, fp: str) -> Path | None:
        d = self.folder(fp) / "done"
        return d if (d / "metrics.json").exists() else None

    def lock(self, fp: str):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{fp}.lock"))

    def load_state(self, fp: str) -> dict | None:
        path = self.folder(fp) / "state.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a state cut short by a full disk: start the arm over
            print(f"warning: ignoring unreadable {path} ({exc}); training that arm from the start",
                  file=sys.stderr)
            return None

    def save_state(self, fp: str, state: dict) -> None:
        with atomic_path(self.folder(fp) / "state.pt") as tmp:
            torch.save(state, tmp)

    def finish(self, fp: str):
        """Context manager: the folder to write a finished run into; it becomes `done/` whole."""
        return atomic_path(self.folder(fp) / "done")

    def drop_state(self, fp: str) -> None:
        (self.folder(fp) / "state.pt").unlink(missing_ok=True)

    @staticmethod
    def restore(src: Path, dest: Path) -> None:
        """Copy a finished run into the workspace (hard links where possible: no extra space)."""
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for f in src.iterdir():
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)


class StateWriter:
    """Saves an arm's training state after each epoch in a background thread, so
    the write overlaps the next epoch instead of stalling the GPU (a ResNet-18
    state with its AdamW moments is about 180 MB). One write is in flight at
    most; a failed write raises at the next save or at close. Use as a context
    manager: leaving it waits for the last write."""

    def __init__(self, store: ArmStore, fp: str):
        self._store, self._fp = store, fp
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="state-writer")
        self._pending: Future | None = None

    def save(self, state: dict) -> None:
        """`state` must not share memory with anything training goes on changing."""
        self.wait()
        self._pending = self._pool.submit(self._store.save_state, self._fp, state)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "StateWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
