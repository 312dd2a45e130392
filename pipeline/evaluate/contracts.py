"""The evaluation's contracts added since pipeline.core.contracts: what a crossed
study (two or more axes) adds to evaluation/summary.json.

They live here, outside the code that is part of a trained arm's identity
(pipeline.core.provenance.ARM_CODE, which holds pipeline/core/contracts.py), so
that a change to what the evaluation reports never retrains an arm.
"""
from __future__ import annotations

from pipeline.core.contracts import Contract, Summary
from pipeline.core.stats import Contrast, Welch


class Effect(Contract):
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
    p_adjusted: float | None  # Holm over this factor's effects
    verdict: str


class Interaction(Contract):
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
    p_adjusted: float | None  # Holm over the study's interactions
    verdict: str


class StudySummary(Summary):
    """evaluation/summary.json: every statistic the report shows."""

    # a study with two or more axes: each factor within the others, and their interactions
    effects: list[Effect] = []
    interactions: list[Interaction] = []
