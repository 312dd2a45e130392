"""The evaluate stage's files, defined once (the report reads them back validated).

    evaluation/<arm>/seed=<k>/<last|best>.json               CheckpointEval
    evaluation/<arm>/seed=<k>/<last|best>_predictions.npz    Predictions
    evaluation/summary.json                                  StudySummary

They are not part of a trained arm's identity: a change here retrains nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.core.schema import Contract
from pipeline.core.stats import Bootstrap, ClassDiff, Contrast, Equivalence, McNemar, MeanCI, Power, Welch


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


class Tested(Contract):
    """What a hypothesis of the study was decided by: its family (None: described, not
    tested), the p adjusted within that family, and with an equivalence margin the
    equivalence test (TOST), its own adjusted p and the three-way answer."""

    family: str | None = None
    p_adjusted: float | None = None  # Holm within its family (= the p alone in a family of one)
    verdict: str = ""
    equivalence: Equivalence | None = None
    equivalence_p_adjusted: float | None = None
    answer: str | None = None  # equivalent, differs or inconclusive (with report.equivalence_margin)


class Comparison(Tested):
    """One arm against the baseline."""

    welch: Welch  # test accuracy over seeds: does the recipe differ?
    power: Power  # at the threshold the comparison faces (Holm's first over its family)
    per_class: tuple[ClassDiff, ...]  # per-class accuracy over seeds (t, variance moderated), Holm over the classes
    # over test images (do these trained models differ?); the last checkpoint only
    paired_bootstrap: Bootstrap | None
    mcnemar_per_seed: list[McNemar]


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


class Effect(Tested):
    """One factor's value against its reference value, the other factors held at `at`
    (a study with several axes): arm - reference_arm, over seeds, last checkpoint."""

    factor: str  # the axis, e.g. "aug"
    value: str
    reference: str  # the baseline arm's value of this axis
    at: dict[str, str]  # the other axes' values
    arm: str
    reference_arm: str
    test_acc: Welch
    gap_clean: Welch  # clean train-test gap, arm - reference arm

    @property
    def label(self) -> str:
        at = ", ".join(f"{k}={v}" for k, v in self.at.items())
        return f"{self.factor}={self.value} vs {self.factor}={self.reference}" + (f" at {at}" if at else "")


class Interaction(Tested):
    """Whether `factor`'s effect (value vs reference) differs between two values of
    `other`: (a1 b1 - a0 b1) - (a1 b0 - a0 b0) over seeds, test accuracy."""

    factor: str
    value: str
    reference: str
    other: str
    other_value: str
    other_reference: str
    at: dict[str, str]  # any further axes' values
    contrast: Contrast


LAST_CHECKPOINT = "the last checkpoint's test accuracy"


class Family(Contract):
    """Hypotheses adjusted together (Holm), fixed by the study's design and params."""

    name: str  # "primary", "secondary", or "the study's" (one family)
    hypotheses: list[str]
    threshold: float  # Holm's first: what the smallest p of the family must pass (alpha / its size)


class StudySummary(Contract):
    """evaluation/summary.json: every statistic the report shows, across seeds and
    against the baseline."""

    baseline: str
    confidence: float
    correction: str  # how p-values of several comparisons are adjusted
    family: list[str] = []  # every hypothesis of the study, family by family
    families: list[Family] = []
    equivalence_margin: float | None = None  # points (report.equivalence_margin)
    best_on: Literal["test", "validation"] = "test"  # what the best checkpoint was chosen on
    # each run's accuracy the hypotheses are tested on (report.mean_of_last): per arm its
    # values in the seeds' order, and their mean over seeds
    estimate: str = LAST_CHECKPOINT
    estimates: dict[str, list[float]] = {}
    tested: dict[str, MeanCI] = {}
    seeds: list[int]
    classes: list[str]
    checkpoints: dict[str, CheckpointSummary]
    model_facts: dict[str, ModelFacts]  # per arm
    # a study with two or more axes: each factor within the others, and their interactions
    effects: list[Effect] = []
    interactions: list[Interaction] = []

    def accuracy(self, arm: str) -> MeanCI:
        """The arm's accuracy as its hypotheses are tested (mean over seeds)."""
        return self.tested.get(arm) or self.checkpoints["last"].arms[arm].test_acc


@dataclass(frozen=True)
class Predictions:
    """One checkpoint's per-image results on the test subset, in its order: the
    predicted class, whether it is right, the softmax confidence, the true class."""

    pred: np.ndarray  # int64
    correct: np.ndarray  # bool
    confidence: np.ndarray  # float32
    label: np.ndarray  # int64

    def __post_init__(self):
        if not len(self.pred) == len(self.correct) == len(self.confidence) == len(self.label):
            raise ValueError("per-image arrays of different lengths")

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, pred=self.pred, correct=self.correct, confidence=self.confidence,
                            label=self.label)

    @classmethod
    def load(cls, path: str | Path) -> "Predictions":
        """Raises OSError, KeyError or ValueError when the file is missing or not one of these."""
        with np.load(path) as z:
            return cls(z["pred"], z["correct"].astype(bool), z["confidence"], z["label"])
