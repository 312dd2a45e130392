"""The files that pass between stages, defined once: the writer and the reader
both import these types, and reading validates what was written.

    runs/<arm>/seed=<k>/   model.pt, best.pt (checkpoints), history.csv (HistoryRow),
                           metrics.json (RunMetrics), diagnostics.json
    runs/study.json        StudyRecord: the arms and seeds that trained, the MLflow runs
    evaluation/<arm>/seed=<k>/<last|best>.json   CheckpointEval
    evaluation/summary.json                       StudySummary (pipeline.evaluate.contracts:
                                                  this Summary, and a crossed study's factors)
    .arm-cache/<fp>/state.pt                      TrainState (resumable, after every epoch)

This file is part of every trained arm's identity (pipeline.core.provenance.ARM_CODE):
a change to its code retrains every arm. What only the evaluation and the report
read, added since, lives in pipeline.evaluate.contracts instead.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core.errors import PipelineError
from pipeline.core.stats import Bootstrap, ClassDiff, McNemar, MeanCI, Power, Welch

CHECKPOINTS = {"last": "model.pt", "best": "best.pt"}  # which -> file name in a run's folder


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=Contract)


class CorruptFile(PipelineError):
    """A stage output that is missing, truncated or not what its contract says."""


def read_json(path: str | Path, cls: type[M], hint: str) -> M:
    """`path` as a `cls`, or one line naming the file and what to do."""
    path = Path(path)
    try:
        return cls.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise CorruptFile(f"{path} is missing; {hint}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "the file"
        raise CorruptFile(f"{path} is not a valid {cls.__name__} ({where}: {err['msg']}); {hint}") from None


def write_json_text(obj: Contract) -> str:
    return obj.model_dump_json(indent=1) + "\n"


def run_dir(runs: str | Path, arm: str, seed: int) -> Path:
    """Where one arm x seed's files live, under runs/ or evaluation/."""
    return Path(runs) / arm / f"seed={seed}"


# --------------------------------------------------------------------------- training


class HistoryRow(Contract):
    """One epoch of one run (history.csv, plots/curves.csv, MLflow step metrics)."""

    epoch: int
    train_loss: float  # running, over the (augmented) batches of the epoch
    train_acc: float  # running, in train mode: what the recipes' authors reported as train accuracy
    test_loss: float
    test_acc: float
    lr: float
    epoch_seconds: float
    images_per_second: float


HISTORY_FIELDS = tuple(HistoryRow.model_fields)


def write_history(path: str | Path, rows: list[HistoryRow]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(r.model_dump() for r in rows)


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
        out = [HistoryRow(**{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()}) for r in rows]
    except (TypeError, ValueError, ValidationError):
        raise CorruptFile(f"{path} is not a history of epochs ({', '.join(HISTORY_FIELDS)}); {hint}") from None
    if not out or [r.epoch for r in out] != list(range(1, len(out) + 1)):
        raise CorruptFile(f"{path} does not hold epochs 1..N in order; {hint}")
    return out


class RunMetrics(Contract):
    """One arm x seed's final numbers (runs/<arm>/seed=<k>/metrics.json)."""

    train_acc: float  # running, over the augmented batches of the last epoch
    train_loss: float
    test_acc: float  # last epoch
    test_loss: float
    gap: float  # train_acc - test_acc, both of the last epoch
    best_test_acc: float  # the best epoch's test accuracy: chosen on the test set, so optimistic
    best_epoch: int
    train_seconds: float  # every epoch's training, also across a kill and resume

    @classmethod
    def from_history(cls, history: list[HistoryRow]) -> "RunMetrics":
        last = history[-1]
        best = max(history, key=lambda r: r.test_acc)
        return cls(train_acc=last.train_acc, train_loss=last.train_loss, test_acc=last.test_acc,
                   test_loss=last.test_loss, gap=last.train_acc - last.test_acc, best_test_acc=best.test_acc,
                   best_epoch=best.epoch, train_seconds=sum(r.epoch_seconds for r in history))


@dataclass
class TrainState:
    """Everything needed to go on training after an epoch; `fit(resume=...)` takes it back.

    Saved with torch.save and loaded with `weights_only=True`: tensors, numbers,
    strings, lists and dicts only.
    """

    epoch: int
    model: dict  # state_dict, on the host
    optimizer: dict
    schedule: dict | None
    scaler: dict | None
    rng: dict  # {"init": ..., "data": ..., "cuda": ...} generator states
    history: list[dict]  # HistoryRow dicts
    best_epoch: int
    best_acc: float
    best_state: dict | None
    diagnostics: dict | None
    device: str  # device type it trained on: a CUDA state is not resumed on the CPU

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "TrainState":
        """Raises ValueError when `d` is not a complete state."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, dict) or set(d) != set(names):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a training state (keys {got}, expected {names})")
        if not isinstance(d["epoch"], int) or d["epoch"] < 1 or len(d["history"]) != d["epoch"]:
            raise ValueError(f"epoch {d['epoch']!r} does not match its {len(d['history'])} history rows")
        return cls(**d)


class ArmFiles(Contract):
    """A finished arm x seed in the arm cache: what made it and a checksum per file."""

    fingerprint: str
    files: dict[str, str]  # file name -> sha256
    trained_at: str  # UTC, ISO 8601
    device: str
    code_version: str
    tracking_key: str | None = None  # the run that trained it, which holds its logged models


class StudyRun(Contract):
    arm: str
    seed: int
    restored: bool  # from the arm cache, not trained by this execution
    wall_seconds: float = 0.0  # from start to finish in this execution (0 when restored)
    fingerprint: str
    trained_at: str
    code_version: str  # of the code that trained it
    tracking_key: str | None = None  # the run's key in the tracking journal
    model_key: str | None = None  # the run holding its logged models (the one that trained it)


class StudyRecord(Contract):
    """runs/study.json: what the train stage ran, for the stages after it."""

    study: str
    arms: list[str]
    seeds: list[int]
    seeds_reason: str  # why this many seeds
    runs: list[StudyRun]
    tracking_key: str | None = None  # the parent run's key in the tracking journal
    device: str


# --------------------------------------------------------------------------- evaluation


class Confusion(Contract):
    true: str
    pred: str
    count: int
    rate: float  # of the true class's images


class CheckpointEval(Contract):
    """One checkpoint of one arm x seed, evaluated (evaluation/<arm>/seed=<k>/<which>.json)."""

    arm: str
    seed: int
    checkpoint: Literal["last", "best"]
    epoch: int
    test_acc: float
    test_loss: float
    train_acc_clean: float  # eval mode, no augmentation, on the training images
    train_loss_clean: float
    train_acc_running: float  # over the augmented batches of the checkpoint's epoch
    gap_clean: float
    gap_running: float
    per_class_acc: list[float]
    confusion: list[list[int]]
    top_confusions: list[Confusion]


class ArmSummary(Contract):
    test_acc: MeanCI
    train_acc_clean: MeanCI
    train_acc_running: MeanCI
    gap_clean: MeanCI
    gap_running: MeanCI
    per_class_acc: list[float]  # mean over seeds
    confusion: list[list[int]]  # summed over seeds
    top_confusions: list[Confusion]


class Comparison(Contract):
    """One arm against the baseline."""

    welch: Welch  # test accuracy over seeds: does the recipe differ?
    p_adjusted: float | None  # Holm over the study's comparisons (= welch.p with one comparison)
    power: Power
    per_class: tuple[ClassDiff, ...]  # per-class accuracy over seeds, Holm over the classes
    # over test images (do these trained models differ?); the last checkpoint only
    paired_bootstrap: Bootstrap | None
    mcnemar_per_seed: list[McNemar]
    verdict: str


class CheckpointSummary(Contract):
    arms: dict[str, ArmSummary]
    comparisons: dict[str, Comparison]


class ModelFacts(Contract):
    model: str
    knobs: dict[str, Any]
    params: int
    trainable_params: int
    flops: int
    macs: int
    flops_convention: str
    receptive_field: int
    layers: list[dict]


class Summary(Contract):
    """The statistics across seeds and against the baseline; evaluation/summary.json
    holds them as a pipeline.evaluate.contracts.StudySummary."""

    baseline: str
    confidence: float
    correction: str  # how p-values of several comparisons are adjusted
    seeds: list[int]
    classes: list[str]
    checkpoints: dict[str, CheckpointSummary]
    model_facts: dict[str, ModelFacts]  # per arm
