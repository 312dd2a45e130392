"""runs/study.json: what the train stage ran, for the stages after it."""
from __future__ import annotations

from pipeline.core.schema import Contract


class StudyRun(Contract):
    arm: str
    seed: int
    restored: bool  # from the arm store (or its committed record), not trained by this execution
    weights: bool = True  # its checkpoints are on this machine (False: only its committed record)
    wall_seconds: float = 0.0  # from start to finish in this execution (0 when restored)
    fingerprint: str
    trained_at: str
    code_version: str  # of the code that trained it
    machine: str = ""  # the CPU (and GPU) that trained it
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
    precision: dict[str, str] = {}  # arm -> what it trained in (precision: auto resolved for the device)
