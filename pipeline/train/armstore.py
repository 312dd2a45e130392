"""Finished and interrupted arms, kept by fingerprint (pipeline.train.plan) so no
work is lost. The store sits at the repository root (`.arm-cache/`, found from
inside queued DVC experiments too), so every experiment shares it:

- `<fp>/done/`: a finished run's files, read-only, and `manifest.json` with the
  sha256 of each. An entry is restored only after every checksum matches; a
  damaged one is moved to `quarantine/` (one line says so) and the arm trains again.
  Outputs under runs/ are copies (copy-on-write where the file system has it):
  editing one never reaches the cache or a logged MLflow record.
- `<fp>/state.pt`: the full training state after the last finished epoch, so a
  killed run resumes where it stopped.
- `<fp>.lock`: held while one process trains that fingerprint.
"""
from __future__ import annotations

import datetime as dt
import os
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline.core.contracts import ArmFiles, TrainState
from pipeline.core.io import atomic_path, clone_file, sha256_file, sweep

STORE = ".arm-cache"
MANIFEST = "manifest.json"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ArmStore:
    def __init__(self, root: Path):
        self.root = Path(root) / STORE

    def folder(self, fp: str) -> Path:
        return self.root / fp

    def done_fps(self) -> set[str]:
        """The fingerprints with a finished entry (checked when restored)."""
        return {d.parent.name for d in self.root.glob("*/done")} if self.root.is_dir() else set()

    def saved_fps(self) -> set[str]:
        """The fingerprints with a saved training state."""
        return {d.parent.name for d in self.root.glob("*/state.pt")} if self.root.is_dir() else set()

    def lock(self, fp: str):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{fp}.lock"))

    # --- finished arms

    def done(self, fp: str) -> tuple[Path, ArmFiles] | None:
        """The verified finished entry, or None (a damaged one is moved aside)."""
        d = self.folder(fp) / "done"
        if not d.exists():
            return None
        problem = self._check(d, fp)
        if problem is None:
            return d, ArmFiles.model_validate_json((d / MANIFEST).read_bytes())
        self.quarantine(d, f"arm cache entry {fp[:12]} is damaged ({problem})")
        return None

    @staticmethod
    def _check(d: Path, fp: str) -> str | None:
        try:
            manifest = ArmFiles.model_validate_json((d / MANIFEST).read_bytes())
        except Exception as exc:  # missing, garbled, or another format
            return f"{MANIFEST}: {type(exc).__name__}"
        if manifest.fingerprint != fp:
            return f"{MANIFEST} belongs to {manifest.fingerprint[:12]}"
        present = {p.name for p in d.iterdir()} - {MANIFEST}
        if present != set(manifest.files):
            return f"files {sorted(present ^ set(manifest.files))} missing or unexpected"
        for name, digest in manifest.files.items():
            if sha256_file(d / name) != digest:
                return f"{name}: checksum mismatch"
        return None

    def finish(self, fp: str, manifest: dict):
        """Context manager: a folder to write a finished run into. On leaving, its
        files get checksums and read-only permissions and it becomes `done/` whole."""
        return _Finish(self.folder(fp) / "done", fp, manifest)

    def quarantine(self, path: Path, why: str) -> None:
        dest = self.root / "quarantine" / f"{path.parent.name}-{path.name}-{dt.datetime.now():%Y%m%dT%H%M%S%f}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        say(f"warning: {why}; moved to {dest}; that arm x seed trains again")

    @staticmethod
    def restore(src: Path, dest: Path) -> None:
        """A finished run into the workspace, atomically, as independent copies."""
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for f in src.iterdir():
                if f.name != MANIFEST:
                    clone_file(f, tmp / f.name)

    # --- interrupted arms

    def load_state(self, fp: str, device_type: str) -> TrainState | None:
        """The saved state of an interrupted run, or None. A state that is unreadable,
        incomplete or from another device type is moved aside with one line."""
        path = self.folder(fp) / "state.pt"
        if not path.exists():
            return None
        try:
            state = TrainState.load(path)
        except Exception as exc:  # cut short by a full disk, or not a state at all
            self.quarantine(path, f"the saved training state {path} cannot be resumed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:160]})")
            return None
        if state.device != device_type:
            self.quarantine(path, f"the saved state {path} was trained on {state.device}, this run is on {device_type}")
            return None
        return state

    def save_state(self, fp: str, state: TrainState) -> None:
        with atomic_path(self.folder(fp) / "state.pt") as tmp:
            state.save(tmp)

    def drop_state(self, fp: str) -> None:
        (self.folder(fp) / "state.pt").unlink(missing_ok=True)

    def sweep(self) -> None:
        """What killed runs left: temporaries, and states of arms that finished after all."""
        if not self.root.is_dir():
            return
        sweep(self.root)
        for d in self.root.iterdir():
            if d.is_dir() and d.name != "quarantine":
                sweep(d)
                if (d / "done").is_dir() and (d / "state.pt").exists():
                    self.drop_state(d.name)


class _Finish:
    def __init__(self, dest: Path, fp: str, manifest: dict):
        self.dest, self.fp, self.manifest = dest, fp, manifest

    def __enter__(self) -> Path:
        self._ctx = atomic_path(self.dest)
        self.tmp = self._ctx.__enter__()
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, *exc):
        if exc[0] is None:
            files = {p.name: sha256_file(p) for p in sorted(self.tmp.iterdir())}
            (self.tmp / MANIFEST).write_text(ArmFiles(fingerprint=self.fp, files=files, **self.manifest)
                                             .model_dump_json(indent=1) + "\n")
            for p in self.tmp.iterdir():
                p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return self._ctx.__exit__(*exc)


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

    def save(self, state: TrainState) -> None:
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
