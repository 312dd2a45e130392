"""An arm x seed's record: everything the evaluation and the report need of a
finished run, small enough to commit (about 0.1 MB), bound to what made it.

    record.npz   arrays: last_pred (uint8), last_confidence (float16; and best_pred,
                 best_confidence when the best checkpoint is kept), filters; and `meta`, one JSON
                 string (RecordMeta): the run's identity (what its fingerprint
                 hashes), history, diagnostics and each checkpoint's clean numbers.

The job that trained the run computes it (pipeline.arm.job), so it is the same on
a Ray worker as here. `meta.sha256` covers the rest of the meta and every array:
a record edited or cut short is refused, and so is one whose identity does not
hash to the fingerprint it is asked for under. Loading runs no code from the file
(numpy arrays, allow_pickle=False).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, ValidationError

from pipeline.core.config import TrainConfig
from pipeline.core.contracts import DiagnosticsRecord
from pipeline.core.schema import Contract, CorruptFile
from pipeline.core.jobs import Finished, HistoryRow

FORMAT = "cifar-ablate-record/1"
FILE = "record.npz"
WHICH = ("last", "best")


def fingerprint_of(identity: dict) -> str:
    """The fingerprint of an arm x seed: the sha256 of what decides its results."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class Numbers(Contract):
    """One checkpoint's numbers besides its test predictions."""

    epoch: int
    test_loss: float
    train_acc_clean: float  # eval mode, no augmentation, on the images trained on
    train_loss_clean: float


class RecordMeta(Contract):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    format: Literal["cifar-ablate-record/1"] = FORMAT
    fingerprint: str
    # what the fingerprint hashes: config, seed, data, code, versions, device
    identity: dict
    arm: str
    seed: int
    config: TrainConfig
    trained_at: str  # UTC, ISO 8601
    code_version: str  # the git commit that trained it
    machine: str  # the CPU (and GPU) it trained on: provenance, not identity
    history: list[HistoryRow]
    diagnostics: DiagnosticsRecord | None
    checkpoints: dict[Literal["last", "best"], Numbers]
    sha256: str = ""  # of the meta without this field, and of every array


@dataclass(frozen=True)
class ArmRecord:
    meta: RecordMeta
    arrays: dict[str, np.ndarray]

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    def pred(self, which: str) -> np.ndarray:
        return self.arrays[f"{which}_pred"]

    def confidence(self, which: str) -> np.ndarray:
        return self.arrays[f"{which}_confidence"]

    @classmethod
    def of(cls, done: Finished, *, fingerprint: str, identity: dict, arm: str, seed: int, cfg: TrainConfig,
           trained_at: str, code_version: str, machine: str) -> "ArmRecord":
        arrays = {"filters": np.asarray(done.filters, np.float32)}
        for which, ev in done.evaluated.items():
            arrays[f"{which}_pred"] = np.asarray(ev.test_pred, np.uint8)
            # 3 significant digits are what a gallery shows, at half float32's size in git
            arrays[f"{which}_confidence"] = np.asarray(ev.test_confidence, np.float16)
        meta = RecordMeta(
            fingerprint=fingerprint, identity=identity, arm=arm, seed=seed, config=cfg, trained_at=trained_at,
            code_version=code_version, machine=machine, history=list(done.history),
            diagnostics=None if done.diagnostics is None else DiagnosticsRecord.model_validate(done.diagnostics),
            checkpoints={w: Numbers(epoch=ev.epoch, test_loss=ev.test_loss, train_acc_clean=ev.train_acc,
                                    train_loss_clean=ev.train_loss) for w, ev in done.evaluated.items()})
        return cls(meta.model_copy(update={"sha256": _digest(meta, arrays)}), arrays)

    def save(self, path: str | Path) -> None:
        import io

        from pipeline.core.io import write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(self.meta.model_dump_json()), **self.arrays)
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> "ArmRecord":
        """The record at `path`, checked whole (and, given `fingerprint`, bound to it);
        CorruptFile in one line otherwise."""
        path = Path(path)
        hint = "it is refused; delete it (a committed one: `git checkout` it) and run the study again"
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = RecordMeta.model_validate_json(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except FileNotFoundError:
            raise CorruptFile(f"{path} is missing") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, ValidationError) as exc:
            what = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else type(exc).__name__
            raise CorruptFile(f"{path} is not a readable arm record ({what}); {hint}") from None
        if meta.sha256 != _digest(meta, arrays):
            raise CorruptFile(f"{path}: its checksum does not match its contents (edited or damaged); {hint}")
        if fingerprint_of(meta.identity) != meta.fingerprint:
            raise CorruptFile(f"{path}: its identity does not hash to its fingerprint {meta.fingerprint[:12]}; {hint}")
        if fingerprint is not None and meta.fingerprint != fingerprint:
            raise CorruptFile(f"{path} belongs to another arm x seed (fingerprint {meta.fingerprint[:12]}, "
                              f"expected {fingerprint[:12]}); {hint}")
        missing = [f"{w}_{k}" for w in meta.checkpoints for k in ("pred", "confidence") if f"{w}_{k}" not in arrays]
        if missing or "filters" not in arrays:
            raise CorruptFile(f"{path} lacks {', '.join(missing) or 'filters'}; {hint}")
        return cls(meta, arrays)

    @staticmethod
    def peek(path: str | Path) -> RecordMeta:
        """The meta alone, unchecked (to index records by fingerprint); `load` checks."""
        with np.load(path, allow_pickle=False) as z:
            return RecordMeta.model_validate_json(str(z["meta"]))


def _digest(meta: RecordMeta, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta.model_copy(update={"sha256": ""}).model_dump_json().encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def committed(root: Path) -> dict[str, Path]:
    """The records committed under `root`'s reports/ (reports/<study>/records/), by
    fingerprint. Read unchecked here; each is checked when it is used."""
    out: dict[str, Path] = {}
    for path in sorted(Path(root).glob("reports/*/records/*/seed=*.npz")):
        try:
            out.setdefault(ArmRecord.peek(path).fingerprint, path)
        except Exception:  # noqa: BLE001  unreadable: never matches, so its arm trains (or restores) as usual
            continue
    return out


def record_path(folder: Path, arm: str, seed: int) -> Path:
    """Where a study's committed record of an arm x seed lives, under reports/<study>/records/."""
    return Path(folder) / arm / f"seed={seed}.npz"
