"""Finished and interrupted arms, kept by fingerprint (pipeline.train.plan) so no
work is lost, in the user's cache folder, where every clone and every queued
experiment on the machine shares them:

    $CIFAR_ABLATE_ARMS, else $XDG_CACHE_HOME/cifar-ablate/arms, else ~/.cache/cifar-ablate/arms
    (a relative CIFAR_ABLATE_ARMS is taken from the repository root)

- `<fp>/done/`: a finished run, read-only: its checkpoints (model.pt, best.pt),
  its record (record.npz, pipeline.core.record) and `manifest.json` with the
  sha256 of each file. An entry is restored only after every checksum matches;
  a damaged one is moved to `quarantine/` (one line says so) and the arm trains
  again. Outputs under runs/ are copies (copy-on-write where the file system has
  them): editing one never reaches the store or a logged MLflow record.
- `<fp>/state.pt`: the full training state after the last finished epoch, so a
  killed run resumes where it stopped; it carries its fingerprint and checksum,
  and one that does not match is set aside, never resumed.
- `<fp>/used.json`: when each study last used the entry (`python -m pipeline.arms list`).
- `<fp>.lock`: held while one process trains or restores that fingerprint.

A repository's `.arm-cache/` (where arms were kept before) is taken over: its
entries move here the first time a study runs.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import stat
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.core.contracts import ArmFiles
from pipeline.core.io import atomic_path, clone_file, sha256_file, sweep, write_bytes, write_text
from pipeline.core.jobs import TrainState
from pipeline.core.provenance import repo_root

ENV = "CIFAR_ABLATE_ARMS"
LEGACY = ".arm-cache"  # the repository-local store of earlier versions
MANIFEST = "manifest.json"
STATE = "state.pt"
USED = "used.json"
STATE_FORMAT = b"cifar-ablate-state/1"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def store_path(root: Path | None = None) -> Path:
    """Where the arm store is (see the module docstring)."""
    given = os.environ.get(ENV)
    if given:
        p = Path(given).expanduser()
        return p if p.is_absolute() else (root or repo_root()) / p
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cifar-ablate" / "arms"


@dataclass(frozen=True)
class Entry:
    """A finished arm x seed in the store, as `python -m pipeline.arms list` shows it."""

    fingerprint: str
    arm: str
    seed: int
    bytes: int
    trained_at: str
    used: dict[str, str]  # study -> when it last used the entry (UTC, ISO 8601)

    @property
    def last_used(self) -> str:
        return max(self.used.values(), default=self.trained_at)


class ArmStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, fp: str) -> Path:
        return self.root / fp

    def done_fps(self) -> set[str]:
        """The fingerprints with a finished entry (checked when restored)."""
        return {d.parent.name for d in self.root.glob("*/done")} if self.root.is_dir() else set()

    def saved_fps(self) -> set[str]:
        """The fingerprints with a saved training state."""
        return {d.parent.name for d in self.root.glob(f"*/{STATE}")} if self.root.is_dir() else set()

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
    def restore(src: Path, dest: Path, extra: dict[str, str] | None = None) -> None:
        """A finished run into the workspace, atomically, as independent copies (and
        `extra` files: name -> text)."""
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            for f in src.iterdir():
                if f.name != MANIFEST:
                    clone_file(f, tmp / f.name)
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)

    def used(self, fp: str, study: str) -> None:
        """Note that `study` used the entry now (what `list` and `prune` read)."""
        path = self.folder(fp) / USED
        seen = _read_used(path)
        seen[study] = _now()
        try:
            write_text(path, json.dumps(seen, indent=1, sort_keys=True) + "\n")
        except OSError:  # a read-only store is still a store to restore from
            pass

    def entries(self) -> list[Entry]:
        out = []
        for d in sorted(self.root.glob("*/done")) if self.root.is_dir() else []:
            try:
                manifest = ArmFiles.model_validate_json((d / MANIFEST).read_bytes())
            except Exception:  # noqa: BLE001  damaged: `done()` deals with it when the arm is asked for
                continue
            size = sum(f.stat().st_size for f in d.parent.rglob("*") if f.is_file())
            out.append(Entry(manifest.fingerprint, manifest.arm, manifest.seed, size, manifest.trained_at,
                             _read_used(d.parent / USED)))
        return out

    def remove(self, fp: str) -> None:
        shutil.rmtree(self.folder(fp), ignore_errors=True)
        (self.root / f"{fp}.lock").unlink(missing_ok=True)

    # --- interrupted arms

    def load_state(self, fp: str, device_type: str) -> TrainState | None:
        """The saved state of an interrupted run, or None. A state that is unreadable,
        incomplete, of another arm x seed or from another device type is moved aside
        with one line."""
        path = self.folder(fp) / STATE
        if not path.exists():
            return None
        try:
            state = read_state(path, fp)
        except Exception as exc:  # cut short by a full disk, damaged, another arm's, or not a state at all
            self.quarantine(path, f"the saved training state {path} cannot be resumed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:160]})")
            return None
        if state.device != device_type:
            self.quarantine(path, f"the saved state {path} was trained on {state.device}, this run is on {device_type}")
            return None
        return state

    def save_state(self, fp: str, state: TrainState) -> None:
        with atomic_path(self.folder(fp) / STATE) as tmp:
            write_state(tmp, fp, state)

    def drop_state(self, fp: str) -> None:
        (self.folder(fp) / STATE).unlink(missing_ok=True)

    def sweep(self) -> None:
        """What killed runs left: temporaries, and states of arms that finished after all."""
        if not self.root.is_dir():
            return
        sweep(self.root)
        for d in self.root.iterdir():
            if d.is_dir() and d.name != "quarantine":
                sweep(d)
                if (d / "done").is_dir() and (d / STATE).exists():
                    self.drop_state(d.name)

    def take_over(self, repo: Path) -> int:
        """Move the entries of `repo`'s `.arm-cache/` (the store of earlier versions) here;
        returns how many. Entries already here stay; the folder goes once empty."""
        old = Path(repo) / LEGACY
        if not old.is_dir() or old.resolve() == self.root.resolve():
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        moved = 0
        from filelock import FileLock

        with FileLock(str(self.root / ".take-over.lock")):
            for d in sorted(old.iterdir()):
                if not d.is_dir() or d.name == "quarantine" or len(d.name) != 64:
                    continue
                dest = self.folder(d.name)
                for part in ("done", STATE):
                    if (d / part).exists() and not (dest / part).exists():
                        dest.mkdir(parents=True, exist_ok=True)
                        _move(d / part, dest / part)
                        moved += part == "done"
                shutil.rmtree(d, ignore_errors=True)
                (old / f"{d.name}.lock").unlink(missing_ok=True)
        if not any(p for p in old.iterdir() if p.name != "quarantine"):
            shutil.rmtree(old, ignore_errors=True)
        return moved


def _move(src: Path, dest: Path) -> None:
    """`src` to `dest` whole: a rename on one file system, else a copy renamed into place."""
    try:
        os.replace(src, dest)
    except OSError:
        with atomic_path(dest) as tmp:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
        shutil.rmtree(src) if src.is_dir() else src.unlink()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_used(path: Path) -> dict[str, str]:
    try:
        seen = json.loads(path.read_text())
        return {str(k): str(v) for k, v in seen.items()} if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- states


def write_state(path: Path, fp: str, state: TrainState) -> None:
    """One file: a header line (format, fingerprint, sha256 of the rest), then the
    state as torch.save writes it."""
    import torch

    buf = io.BytesIO()
    torch.save({f.name: getattr(state, f.name) for f in fields(state)}, buf)
    payload = buf.getvalue()
    header = json.dumps({"fingerprint": fp, "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    write_bytes(path, STATE_FORMAT + b" " + header + b"\n" + payload)


def read_state(path: Path, fp: str) -> TrainState:
    """The state saved at `path` for fingerprint `fp`; ValueError when it is not one,
    is damaged, or belongs to another arm x seed."""
    import torch

    data = Path(path).read_bytes()
    first, _, payload = data.partition(b"\n")
    if not first.startswith(STATE_FORMAT + b" "):
        raise ValueError("not a saved training state")
    header = json.loads(first[len(STATE_FORMAT) + 1:])
    if header.get("fingerprint") != fp:
        raise ValueError(f"it is the state of another arm x seed ({str(header.get('fingerprint'))[:12]})")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("its checksum does not match (damaged or cut short)")
    d = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    names = [f.name for f in fields(TrainState)]
    if not isinstance(d, dict) or set(d) != set(names):
        raise ValueError("not a complete training state")
    state = TrainState(**d)
    if not isinstance(state.epoch, int) or state.epoch < 1 or len(state.history) != state.epoch:
        raise ValueError(f"epoch {state.epoch!r} does not match its {len(state.history)} history rows")
    return state


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
