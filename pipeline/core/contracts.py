"""The files the train stage writes, defined once: the writer and the reader
both import these types, and reading validates what was written.

    runs/<arm>/seed=<k>/   model.pt, best.pt (Checkpoint), record.npz (pipeline.core.record),
                           history.csv (HistoryRow, a view of the record)
    <arm store>/<fp>/      done/manifest.json (ArmFiles); state.pt (pipeline.train.armstore)

The evaluation's files are defined in pipeline.evaluate.contracts. Storage only:
no code an arm runs imports this file, so editing it retrains nothing.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError

from pipeline.core.schema import Contract, CorruptFile
from pipeline.core.jobs import HISTORY_FIELDS, HistoryRow

CHECKPOINTS = {"last": "model.pt", "best": "best.pt"}  # which -> file name in a run's folder


def run_dir(runs: str | Path, arm: str, seed: int) -> Path:
    """Where one arm x seed's files live, under runs/ or evaluation/."""
    return Path(runs) / arm / f"seed={seed}"


# --------------------------------------------------------------------------- training


def history_csv(rows: list[HistoryRow]) -> str:
    """history.csv's text: one row per epoch."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(r.model_dump() for r in rows)
    return buf.getvalue()


def read_history(path: str | Path, hint: str = "run `dvc repro train` again") -> list[HistoryRow]:
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise CorruptFile(f"{path} is missing; {hint}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CorruptFile(f"{path} cannot be read ({exc}); {hint}") from None
    try:
        out = [HistoryRow(**{k: (int(v) if k == "epoch" else None if v == "" else float(v)) for k, v in r.items()})
               for r in rows]
    except (TypeError, ValueError, ValidationError):
        raise CorruptFile(f"{path} is not a history of epochs ({', '.join(HISTORY_FIELDS)}); {hint}") from None
    if not out or [r.epoch for r in out] != list(range(1, len(out) + 1)):
        raise CorruptFile(f"{path} does not hold epochs 1..N in order; {hint}")
    return out


class RunMetrics(Contract):
    """One arm x seed's final numbers (runs/<arm>/seed=<k>/metrics.json)."""

    train_acc: float  # running, over the augmented batches of the last epoch
    train_loss: float
    held_out: Literal["test", "val"] = "test"  # what each epoch was evaluated on (val: data.val_split)
    acc: float  # on it, last epoch
    loss: float
    gap: float  # train_acc - acc, both of the last epoch
    best_acc: float  # the best epoch's (chosen on it: optimistic where it is the test set)
    best_epoch: int
    train_seconds: float  # every epoch's training, also across a kill and resume

    @classmethod
    def from_history(cls, history: list[HistoryRow]) -> "RunMetrics":
        last = history[-1]
        split, loss, acc = last.held_out
        best = max(history, key=lambda r: r.chosen_on)
        return cls(train_acc=last.train_acc, train_loss=last.train_loss, held_out=split, acc=acc, loss=loss,
                   gap=last.train_acc - acc, best_acc=best.chosen_on, best_epoch=best.epoch,
                   train_seconds=sum(r.epoch_seconds for r in history))

    def named(self) -> dict[str, float]:
        """The numbers named by what they were measured on (test_acc, or val_acc with a split)."""
        s = self.held_out
        return {"train_acc": self.train_acc, "train_loss": self.train_loss, f"{s}_acc": self.acc,
                f"{s}_loss": self.loss, "gap": self.gap, f"best_{s}_acc": self.best_acc,
                "best_epoch": self.best_epoch, "train_seconds": self.train_seconds}


@dataclass
class Checkpoint:
    """runs/<arm>/seed=<k>/model.pt (the last epoch) and best.pt: weights and what made
    them, saved with torch.save and loaded with `weights_only=True` (tensors, numbers,
    strings, lists and dicts only: loading runs no code from the file)."""

    model: dict  # state_dict, on the host
    model_name: str
    config: dict  # the arm's TrainConfig, model_dump()ed
    arm: str
    seed: int
    epoch: int
    example: Any  # a few test images, uint8 (4, 3, 32, 32): the logged model's input example
    code_version: str
    dvc_experiment: str
    data_sha256: str

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any) -> "Checkpoint":
        """Raises ValueError when `d` is not a complete checkpoint."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, dict) or set(d) != set(names):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a {cls.__name__} (keys {got}, expected {names})")
        if not isinstance(d["config"], dict) or not {"model", "knobs", "norm", "precision"} <= d["config"].keys():
            raise ValueError("its config lacks model, knobs, norm or precision")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Serialised in memory first: a full disk is the OSError of the file's write."""
        import io

        import torch

        from pipeline.core.io import write_bytes

        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        import torch

        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))


class GradRow(Contract):
    epoch: int
    layer: str
    mean_abs: float
    max_abs: float


class RatioRow(Contract):
    epoch: int
    layer: str
    ratio: float


class WeightRow(Contract):
    epoch: int
    layer: str
    min: float
    max: float
    mean: float
    std: float
    counts: list[int]


class DiagnosticsRecord(Contract):
    """runs/<arm>/seed=<k>/diagnostics.json (pipeline.arm.diagnostics)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    layers: list[str]
    gradients: list[GradRow]
    update_ratio: list[RatioRow]
    weights: list[WeightRow]


class ArmFiles(Contract):
    """A finished arm x seed in the arm store: what made it and a checksum per file."""

    fingerprint: str
    files: dict[str, str]  # file name -> sha256
    trained_at: str  # UTC, ISO 8601
    device: str
    code_version: str
    arm: str = ""  # "" in entries of earlier versions
    seed: int = -1
