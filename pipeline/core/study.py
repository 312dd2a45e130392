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


class StudyFacts(Contract):
    """Where a study's results come from, as MLflow shows them (no secret, no local path)."""

    preset: str
    git_commit: str
    dvc_experiment: str
    data_name: str  # "CIFAR-10 (JPEG mirror)"
    data_source: str  # data.url
    data_sha256: str  # of the prepared arrays
    archive_sha256: str  # of the downloaded archive
    n_train: int
    n_test: int
    data_params: dict  # data.* of params.yaml, as `data.<key>`


class StudyRecord(Contract):
    """runs/study.json: what the train stage ran, for the stages after it."""

    study: str
    arms: list[str]
    seeds: list[int]
    seeds_reason: str  # why this many seeds
    runs: list[StudyRun]
    # whether its stages publish to MLflow (pipeline.tracking.publish; not with --no-mlflow), under
    # the parent run named by study_key (its name and first jobs' fingerprints), with these facts
    published: bool = False
    study_key: str = ""
    facts: StudyFacts | None = None
    device: str
    precision: dict[str, str] = {}  # arm -> what it trained in (precision: auto resolved for the device)
