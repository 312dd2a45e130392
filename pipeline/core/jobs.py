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

from pipeline.core.config import TrainConfig
from pipeline.core.contracts import HistoryRow, TrainState


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
class Finished:
    """A trained arm x seed: the last weights, the best ones, what happened."""

    model: dict
    best_state: dict | None
    best_epoch: int
    history: list[HistoryRow]
    diagnostics: dict | None


@dataclass
class Failed:
    error: BaseException


@dataclass
class Lost:
    """The job's worker process or node died; nothing is wrong with the job."""

    reason: str


Event = Placed | Epoch | Usage | Finished | Failed | Lost
