"""What passes between the train stage's driver, its engines and a job: the job's
spec and data, and the events a job yields. Plain data, no torch: the driver
and the plan read them without loading it.

A job (pipeline.arm.job.run_job) yields an `Epoch` after every epoch, then one
`Finished`; an engine (pipeline.train.engine) adds `Placed` (a worker has the
job), `Usage` (after each epoch, of the machine that trained it), and ends a job
that did not finish with `Failed` (its own error) or `Lost` (its worker or node
died: the driver resubmits it from its last saved state).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pydantic import BaseModel, ConfigDict

from pipeline.core.config import TrainConfig


class HistoryRow(BaseModel):
    """One epoch of one run (history.csv, plots/curves.csv, MLflow step metrics)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epoch: int
    train_loss: float  # running, over the (augmented) batches of the epoch
    train_acc: float  # running, in train mode: what the recipes' authors reported as train accuracy
    # None with a validation split: then each epoch is evaluated on the held-out images
    # only, and the test set once, by the evaluate stage
    test_loss: float | None
    test_acc: float | None
    lr: float
    epoch_seconds: float
    images_per_second: float
    val_loss: float | None = None  # on the images held out of training (data.val_split); None without a split
    val_acc: float | None = None

    @property
    def held_out(self) -> tuple[str, float, float]:
        """(split, loss, accuracy) of what this epoch was evaluated on, and checkpoints
        and peaks are chosen on: validation where there is a split, else (the recipes'
        way, optimistic) test."""
        if self.val_acc is not None:
            return "val", self.val_loss, self.val_acc
        return "test", self.test_loss, self.test_acc

    @property
    def chosen_on(self) -> float:
        return self.held_out[2]


HISTORY_FIELDS = tuple(HistoryRow.model_fields)


@dataclass
class TrainState:
    """Everything needed to go on training after an epoch; the loop's `resume` takes it back."""

    epoch: int
    model: dict  # state_dict, on the host
    optimizer: dict
    schedule: dict | None
    scaler: dict | None
    rng: dict  # {"data": ..., "cpu": ..., "cuda": ...} generator states
    history: list[dict]  # HistoryRow dicts
    best_epoch: int
    best_acc: float
    best_state: dict | None
    diagnostics: dict | None  # DiagnosticsRecord, as a dict
    device: str  # device type it trained on: a CUDA state is not resumed on the CPU


@dataclass(frozen=True)
class JobSpec:
    arm: str
    seed: int
    cfg: TrainConfig  # precision concrete for the device (pipeline.core.config.resolve_precision)
    fp: str  # fingerprint: the arm cache's key
    device: str  # "cpu", "cuda", "cuda:1"
    eval_batch: int | str
    deterministic: bool = False
    threads: int | None = None  # CPU threads; the same count everywhere keeps CPU results bitwise equal

    @property
    def label(self) -> str:
        return f"{self.arm} seed={self.seed}"


@dataclass(frozen=True)
class Data:
    """The study's images and labels (numpy, uint8 / int64), identified by `digest`."""

    digest: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray | None = None  # images held out of training (data.val_split); None without a split
    val_y: np.ndarray | None = None


@dataclass
class Placed:
    """The job reached a worker: `where` it runs (host:node)."""

    where: str


@dataclass
class Epoch:
    row: HistoryRow
    state: TrainState | None  # everything needed to go on, on the host (when the loop is asked for it)


@dataclass
class Usage:
    """CPU, memory and GPU use of the machine that trained the last epoch (MLflow's
    system-metrics names)."""

    metrics: dict[str, float]


@dataclass
class Evaluated:
    """One checkpoint evaluated clean (eval mode, no augmentation) by the job that
    trained it, on every test image and on the images it trained on."""

    epoch: int
    test_pred: np.ndarray  # uint8 (N,): the predicted class of each test image
    test_confidence: np.ndarray  # float32 (N,): the softmax probability of that prediction
    test_loss: float
    train_acc: float  # clean
    train_loss: float


@dataclass
class Finished:
    """A trained arm x seed: the last weights, the best ones, what happened, and
    both checkpoints evaluated ("last", and "best" when kept)."""

    model: dict
    best_state: dict | None
    best_epoch: int
    history: list[HistoryRow]
    diagnostics: dict | None
    evaluated: dict[str, Evaluated]
    filters: np.ndarray  # float32: the first convolution's weights of the last checkpoint
    machine: str = ""  # what trained it (its CPU, and GPU): set by the engine, which knows where it ran


@dataclass
class Failed:
    error: BaseException


@dataclass
class Lost:
    """The job's worker process or node died; nothing is wrong with the job."""

    reason: str


Event = Placed | Epoch | Usage | Finished | Failed | Lost
