"""pipeline.stats: known answers worked out by hand (arithmetic in the comments),
degenerate inputs, and one property test against scipy."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as hst

from pipeline import stats
from pipeline.stats import (
    Interval, StatsError, holm, mcnemar, mean_ci, paired_bootstrap, significant, summarize,
    verdict, welch,
)

T_975_3 = 3.182446305284263  # Student t, 0.975 quantile, 3 dof (tables)
T_975_4 = 2.7764451051977987  # Student t, 0.975 quantile, 4 dof (tables)
# scipy warns when a group is (nearly) constant; the comparison is still the point
SCIPY_NEAR_CONSTANT = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")


# --------------------------------------------------------------------------- summarize


def test_table_constants_match_scipy():
    # the hardcoded constants are the ones scipy computes (tables vs. ppf agree to ~1e-12)
    assert T_975_3 == pytest.approx(scipy.stats.t.ppf(0.975, 3), abs=1e-9)
    assert T_975_4 == pytest.approx(scipy.stats.t.ppf(0.975, 4), abs=1e-9)


def test_summarize_known_answer():
    s = summarize([1, 2, 3, 4])
    # mean = 10/4 = 2.5
    # squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, ddof=1: var = 5/3, std = sqrt(5/3) = 1.29099...
    # half width = t(0.975, 3) * std / sqrt(4) = 3.182446 * 1.290994 / 2 = 2.054260
    # CI = 2.5 -/+ 2.054260 = [0.445740, 4.554260]
    half = T_975_3 * math.sqrt(5 / 3) / 2
    assert (s.n, s.mean, s.warning) == (4, 2.5, None)
    assert s.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert s.ci.low == pytest.approx(2.5 - half, rel=1e-9)
    assert s.ci.high == pytest.approx(2.5 + half, rel=1e-9)
    assert s.ci.low == pytest.approx(0.445739743, abs=1e-8)
    assert (s.ci.estimate, s.ci.confidence) == (2.5, 0.95)
    assert mean_ci([1, 2, 3, 4]) == s.ci


def test_summarize_confidence_level_changes_width():
    # 90%: t(0.95, 3) = 2.353363; half = 2.353363 * 1.290994 / 2 = 1.519060
    s = summarize([1, 2, 3, 4], confidence=0.90)
    assert s.ci.high - 2.5 == pytest.approx(2.353363435 * math.sqrt(5 / 3) / 2, rel=1e-8)


def test_summarize_single_seed_has_no_interval():
    s = summarize([0.91])
    assert (s.n, s.mean, s.std, s.ci.low, s.ci.high) == (1, 0.91, None, None, None)
    assert s.warning == "single seed: no confidence interval"
    assert json.loads(json.dumps(s.as_dict()))["low"] is None


def test_summarize_zero_variance_gives_a_zero_width_interval():
    # every seed gave 0.8: std 0, CI [0.8, 0.8] - the data show no spread at all
    s = summarize([0.8, 0.8, 0.8])
    assert (s.std, s.ci.low, s.ci.high) == (0.0, 0.8, 0.8)


def test_summary_as_dict_is_json_of_plain_types():
    d = summarize([0.8, 0.82]).as_dict()
    assert set(d) == {"n", "mean", "std", "low", "high", "confidence", "warning"}
    assert all(isinstance(v, (int, float, str, type(None))) for v in d.values())
    json.dumps(d)


# --------------------------------------------------------------------------- welch


A3 = [0.80, 0.82, 0.81]
B3 = [0.78, 0.79, 0.77]


def test_welch_known_answer():
    w = welch(A3, B3)
    # means 0.81 and 0.78: diff = +0.03
    # deviations a: -0.01, +0.01, 0 ; b: 0, +0.01, -0.01 -> both var = 0.0002 / 2 = 0.0001
    # se = sqrt(0.0001/3 + 0.0001/3) = sqrt(0.0002/3) = 0.0081650
    # t = 0.03 / 0.0081650 = 3 * sqrt(1.5) = 3.674235
    # dof = (2q)^2 / (q^2/2 + q^2/2) with q = 0.0001/3 -> 4q^2 / q^2 = 4
    # half = t(0.975, 4) * se = 2.776445 * 0.0081650 = 0.0226696 -> CI [0.0073304, 0.0526696]
    # p, closed form of the t cdf with 4 dof: F(t) = 1/2 + 3/8 * u * (1 - u^2/12 * 4/4...),
    #   u = t / sqrt(1 + t^2/4) = 3.674235 / sqrt(4.375) = 1.756620,
    #   F = 1/2 + (3/8) u (1 - t^2 / (12 (1 + t^2/4))) = 1/2 + 0.658732 * (1 - 13.5/52.5) = 0.989344
    #   p = 2 (1 - F) = 0.0213116
    se = math.sqrt(0.0002 / 3)
    assert (w.n_a, w.n_b, w.reason) == (3, 3, None)
    assert w.estimate == pytest.approx(0.03, abs=1e-12)
    assert w.dof == pytest.approx(4.0, rel=1e-9)
    assert w.t == pytest.approx(3 * math.sqrt(1.5), rel=1e-9)
    assert w.ci.low == pytest.approx(0.03 - T_975_4 * se, rel=1e-9)
    assert w.ci.high == pytest.approx(0.03 + T_975_4 * se, rel=1e-9)
    assert w.ci.low == pytest.approx(0.0073304206, abs=1e-9)
    t = 3 * math.sqrt(1.5)
    f = 0.5 + 3 / 8 * t / math.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert w.p == pytest.approx(2 * (1 - f), rel=1e-9)
    assert w.p == pytest.approx(0.0213116411, abs=1e-9)
    # and it is exactly scipy's Welch test
    ref = scipy.stats.ttest_ind(A3, B3, equal_var=False)
    assert w.p == pytest.approx(ref.pvalue, abs=1e-12)
    assert w.dof == pytest.approx(ref.df, rel=1e-12)


def test_welch_sign_is_a_minus_b():
    w = welch(B3, A3)
    assert w.estimate == pytest.approx(-0.03) and w.t < 0 and w.ci.high < 0


def test_welch_unequal_sizes_and_variances_match_scipy():
    a, b = [0.71, 0.74, 0.69, 0.75, 0.72], [0.70, 0.70, 0.66]
    w, ref = welch(a, b), scipy.stats.ttest_ind(a, b, equal_var=False)
    assert w.p == pytest.approx(ref.pvalue, abs=1e-12)
    assert w.t == pytest.approx(ref.statistic, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (w.ci.low, w.ci.high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_welch_single_seed_reports_no_test():
    w = welch([0.81], [0.78, 0.79])
    assert (w.p, w.t, w.dof, w.ci.low, w.ci.high) == (None, None, None, None, None)
    assert w.estimate == pytest.approx(0.81 - 0.785)  # the difference itself is still known
    assert w.reason == "single seed: no confidence interval"


def test_welch_zero_variance_equal_means_is_p_one():
    # observed difference is exactly 0, so p = 1 whatever the (unseen) spread; no CI
    w = welch([0.8, 0.8, 0.8], [0.8, 0.8])
    assert (w.estimate, w.p, w.t, w.ci.low) == (0.0, 1.0, 0.0, None)
    assert w.reason == stats.ZERO_VARIANCE


def test_welch_zero_variance_different_means_has_no_p():
    # scipy says t = inf, p = 0; that claims certainty from two seeds that showed no spread,
    # so the honest answer is "undefined" with the reason
    w = welch([0.8, 0.8], [0.7, 0.7])
    assert w.estimate == pytest.approx(0.1)
    assert (w.p, w.t, w.ci.low, w.ci.high) == (None, None, None, None)
    assert w.reason == "zero variance in both groups: the t-test is undefined"
    assert verdict(w.ci, w.p, reason=w.reason) == "zero variance in both groups: no interval; not a finding"


@SCIPY_NEAR_CONSTANT
def test_welch_one_group_constant_is_an_ordinary_test():
    # only b has spread: dof = nb - 1 = 2, and it still equals scipy
    w = welch([0.8, 0.8, 0.8], [0.78, 0.79, 0.77])
    assert w.dof == pytest.approx(2.0)
    assert w.p == pytest.approx(scipy.stats.ttest_ind([0.8] * 3, [0.78, 0.79, 0.77], equal_var=False).pvalue)


# Finite values on a 1e-6 grid: scipy itself underflows on spreads like 1e-188 (where
# welch rescales and stays right, see test_welch_survives_tiny_and_huge_values), so the
# comparison is made where scipy's own arithmetic is sound.
finite = hst.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda v: round(v, 6))


@SCIPY_NEAR_CONSTANT
@settings(max_examples=200, deadline=None)
@given(hst.lists(finite, min_size=2, max_size=12), hst.lists(finite, min_size=2, max_size=12))
def test_welch_matches_scipy_property(a, b):
    assume(np.ptp(a) > 0 or np.ptp(b) > 0)  # both constant: our documented special case
    w = welch(a, b)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert w.p == pytest.approx(float(ref.pvalue), abs=1e-9)
    assert w.ci.contains(w.estimate)
    assert 0.0 <= w.p <= 1.0


# --------------------------------------------------------------------------- mcnemar


def test_mcnemar_known_answer():
    # 2 images only b gets right (b01), 8 only a gets right (b10), 5 both right, 3 both wrong
    a = [0] * 2 + [1] * 8 + [1] * 5 + [0] * 3
    b = [1] * 2 + [0] * 8 + [1] * 5 + [0] * 3
    m = mcnemar(np.array(a, bool), np.array(b, bool))
    # exact two-sided binomial, n = 10, k = 2: 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10
    #   = 2 * (1 + 10 + 45) / 1024 = 112 / 1024 = 0.109375
    assert (m.n, m.b01, m.b10, m.discordant) == (18, 2, 8, 10)
    assert m.p == pytest.approx(0.109375, abs=1e-12)
    assert mcnemar(b, a).p == pytest.approx(0.109375)  # symmetric; 0/1 ints accepted too


def test_mcnemar_no_discordant_pairs_is_p_one():
    m = mcnemar([True, False, True], [True, False, True])
    assert (m.b01, m.b10, m.p) == (0, 0, 1.0)


def test_mcnemar_rejects_unpaired_or_non_boolean_input():
    with pytest.raises(StatsError, match="same images"):
        mcnemar([True, False], [True])
    with pytest.raises(StatsError, match="booleans or 0/1"):
        mcnemar([0.5, 1.0], [1, 1])
    with pytest.raises(StatsError, match="1-D"):
        mcnemar([[True]], [[True]])


# --------------------------------------------------------------------------- paired bootstrap


def _fixture(n=400, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.random((3, n)) < 0.80  # 3 seeds x n images
    b = rng.random((2, n)) < 0.75  # 2 seeds, same images
    return a, b


def test_bootstrap_identical_arms():
    a = np.random.default_rng(0).random(300) < 0.7
    r = paired_bootstrap(a, a.copy(), n_resamples=500)
    assert (r.diff.estimate, r.diff.low, r.diff.high, r.p) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_a_always_right_b_always_wrong():
    r = paired_bootstrap(np.ones(50, bool), np.zeros(50, bool), n_resamples=200)
    assert (r.diff.estimate, r.diff.low, r.diff.high) == (1.0, 1.0, 1.0)
    assert (r.acc_a, r.acc_b, r.p) == (1.0, 0.0, 0.0)


def test_bootstrap_estimate_is_the_plain_accuracy_difference():
    a, b = _fixture()
    r = paired_bootstrap(a, b, n_resamples=300)
    # mean over seeds of each arm's accuracy, then a - b (the per-image seed average keeps this)
    assert r.diff.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert (r.n_images, r.n_seeds_a, r.n_seeds_b, r.stratified) == (400, 3, 2, False)
    assert r.diff.contains(r.diff.estimate)
    assert r.diff.low < r.diff.high


def test_bootstrap_small_hand_example():
    # per image d = a - b: [1, 0, 0, -1] -> estimate 0; a one-image "set" is a point mass
    r = paired_bootstrap([1, 1, 0, 0], [0, 1, 0, 1], n_resamples=100)
    assert r.diff.estimate == 0.0 and r.acc_a == 0.5 and r.acc_b == 0.5
    r1 = paired_bootstrap([1], [0], n_resamples=10)
    assert (r1.diff.low, r1.diff.high, r1.p) == (1.0, 1.0, 0.0)


def test_bootstrap_same_seed_same_answer_other_seed_other_answer():
    a, b = _fixture()
    r1, r2 = paired_bootstrap(a, b, n_resamples=300, seed=7), paired_bootstrap(a, b, n_resamples=300, seed=7)
    r3 = paired_bootstrap(a, b, n_resamples=300, seed=8)
    assert r1 == r2
    assert (r1.diff.low, r1.diff.high) != (r3.diff.low, r3.diff.high)


def test_bootstrap_chunking_does_not_change_the_answer(monkeypatch):
    a, b = _fixture(n=100)
    whole = paired_bootstrap(a, b, n_resamples=250, seed=3)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 100 * 7)  # 7 resamples per chunk, uneven tail
    assert paired_bootstrap(a, b, n_resamples=250, seed=3) == whole


def test_bootstrap_p_agrees_with_a_clear_difference():
    rng = np.random.default_rng(5)
    a = rng.random(2000) < 0.85
    b = a & (rng.random(2000) < 0.9)  # b loses ~8.5 points, never gains
    r = paired_bootstrap(a, b, n_resamples=1000)
    assert r.p == 0.0 and r.diff.low > 0


def test_bootstrap_per_class_results_for_every_class():
    a, b = _fixture(n=500)
    labels = np.arange(500) % 10
    r = paired_bootstrap(a, b, n_resamples=300, groups=labels)
    assert r.stratified and [g.group for g in r.groups] == list(range(10))
    for g in r.groups:
        mask = labels == g.group
        assert g.n == 50
        assert g.diff.estimate == pytest.approx(a[:, mask].mean() - b[:, mask].mean(), abs=1e-12)
        assert g.diff.low <= g.diff.high and 0.0 <= g.p <= 1.0
    assert r.diff.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert r.diff.contains(r.diff.estimate)
    d = json.loads(json.dumps(r.as_dict()))
    assert len(d["groups"]) == 10 and d["groups"][3]["group"] == 3


def test_bootstrap_per_class_hand_example():
    # class "cat": a 4/4, b 2/4 -> +0.5; class "dog": identical -> 0 with CI [0, 0], p 1
    a = [1, 1, 1, 1, 1, 0, 1, 0]
    b = [1, 1, 0, 0, 1, 0, 1, 0]
    groups = ["cat"] * 4 + ["dog"] * 4
    r = paired_bootstrap(a, b, n_resamples=400, groups=groups)
    cat, dog = r.groups
    assert (cat.group, cat.diff.estimate) == ("cat", 0.5)
    assert (dog.group, dog.diff.estimate, dog.diff.low, dog.diff.high, dog.p) == ("dog", 0.0, 0.0, 0.0, 1.0)
    # stratified: the overall draw is (cat draw + dog draw) / 2 and the dog draw is always 0
    assert r.diff.estimate == 0.25
    assert r.diff.low == pytest.approx(cat.diff.low / 2) and r.diff.high == pytest.approx(cat.diff.high / 2)


def test_bootstrap_rejects_bad_shapes():
    with pytest.raises(StatsError, match="same images"):
        paired_bootstrap(np.ones((2, 5), bool), np.ones((2, 6), bool))
    with pytest.raises(StatsError, match="one label per image"):
        paired_bootstrap(np.ones(5, bool), np.ones(5, bool), groups=[0, 1])
    with pytest.raises(StatsError, match="n_resamples"):
        paired_bootstrap(np.ones(5, bool), np.ones(5, bool), n_resamples=0)


# --------------------------------------------------------------------------- significance and words


def test_significant_by_p_and_by_interval():
    assert significant(0.003, 0.05) and not significant(0.05, 0.05) and not significant(None, 0.05)
    assert significant(Interval(0.02, 0.01, 0.03, 0.95), 0.05)
    assert significant(Interval(-0.02, -0.03, -0.01, 0.95), 0.05)
    assert not significant(Interval(0.01, -0.01, 0.03, 0.95), 0.05)
    assert not significant(Interval(0.01, None, None, 0.95), 0.05)
    with pytest.raises(StatsError, match="cannot decide"):
        significant(Interval(0.02, 0.01, 0.03, 0.95), 0.01)  # a 95% CI says nothing at alpha 0.01


def test_verdict_significant():
    v = verdict(Interval(0.0184, 0.009, 0.028, 0.95), 0.003, 0.05)
    assert v == "+1.84 points (95% CI +0.90 to +2.80), significant (p = 0.003)"


def test_verdict_not_significant_uses_ascii_minus():
    v = verdict(Interval(-0.002, -0.011, 0.007, 0.95), 0.61, 0.05)
    assert v == "-0.20 points (95% CI -1.10 to +0.70), not significant (p = 0.61)"
    assert "\u2212" not in v


def test_verdict_single_seed():
    w = welch([0.81], [0.78, 0.79])
    assert verdict(w.ci, w.p, 0.05, reason=w.reason) == "single seed: no interval; not a finding"
    assert verdict(summarize([0.8]).ci, None) == "single seed: no interval; not a finding"


def test_verdict_from_a_real_welch():
    w = welch(A3, B3)
    # diff +3.00 points, CI [0.733, 5.267] points, p = 0.0213 -> "0.021"
    assert verdict(w.ci, w.p) == "+3.00 points (95% CI +0.73 to +5.27), significant (p = 0.021)"


def test_verdict_p_formatting_edges():
    iv = Interval(0.01, 0.001, 0.02, 0.95)
    assert verdict(iv, 0.0001).endswith("significant (p < 0.001)")
    assert verdict(iv, 0.0496).endswith("significant (p = 0.0496)")  # not "p = 0.05"
    assert verdict(Interval(-0.00001, -0.01, 0.01, 0.95), 0.9).startswith("0.00 points")  # no "-0.00"
    assert verdict(iv, None).endswith("significant (CI excludes 0)")


# --------------------------------------------------------------------------- holm


def test_holm_known_answer():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    # back in input order [0.01, 0.04, 0.03] -> [0.03, 0.06, 0.06]
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_caps_at_one_and_is_monotone():
    # 0.5 x 2 = 1.0 (capped), 0.6 x 1 = 0.6 -> running max 1.0
    assert holm([0.6, 0.5]) == [1.0, 1.0]
    ps = [0.001, 0.2, 0.01, 0.04, 0.03]
    adj = holm(ps)
    order = np.argsort(ps)
    assert all(np.diff(np.array(adj)[order]) >= 0) and all(a >= p for a, p in zip(adj, ps))


def test_holm_untestable_comparisons_still_count():
    # m = 2 even though one comparison has no p: 0.02 x 2 = 0.04
    assert holm([0.02, None]) == [pytest.approx(0.04), None]
    assert holm([]) == []
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        holm([0.2, float("nan")])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call", [
    lambda: summarize([]),
    lambda: mean_ci([]),
    lambda: welch([], [0.8, 0.9]),
    lambda: welch([0.8, 0.9], []),
    lambda: mcnemar([], []),
    lambda: paired_bootstrap([], []),
    lambda: paired_bootstrap(np.zeros((3, 0), bool), np.zeros((3, 0), bool)),
], ids=["summarize", "mean_ci", "welch-a", "welch-b", "mcnemar", "bootstrap", "bootstrap-2d"])
def test_empty_input_is_a_one_line_value_error(call):
    with pytest.raises(ValueError, match="empty") as exc:
        call()
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("call, needle", [
    (lambda: summarize([0.8, float("nan")]), "NaN or infinity"),
    (lambda: welch([0.8, float("inf")], [0.7, 0.8]), "NaN or infinity"),
    (lambda: summarize([0.8, 0.9], confidence=95), "confidence"),
    (lambda: summarize([[0.8, 0.9]]), "1-D"),
    (lambda: summarize(["a", "b"]), "numbers"),
])
def test_bad_input_is_a_one_line_value_error(call, needle):
    with pytest.raises(ValueError, match=needle) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_stats_error_is_a_pipeline_error():
    # so a stage's cli() wrapper prints it as one line and exits 2
    from pipeline.errors import PipelineError
    assert issubclass(StatsError, PipelineError) and issubclass(StatsError, ValueError)


def test_welch_survives_tiny_and_huge_values():
    # scaling by a power of two keeps the variances representable: same p as at ordinary scale
    tiny = welch([0.0, 2e-188, 1e-188], [3e-188, 4e-188, 5e-188])
    plain = welch([0.0, 2.0, 1.0], [3.0, 4.0, 5.0])
    assert tiny.p == pytest.approx(plain.p, rel=1e-12) and tiny.dof == pytest.approx(plain.dof)
    assert tiny.ci.low == pytest.approx(plain.ci.low * 1e-188, rel=1e-9)
    huge = welch([0.0, 2e300, 1e300], [3e300, 4e300, 5e300])
    assert huge.p == pytest.approx(plain.p, rel=1e-12)
    # spread 1e-300 next to a difference of 1000: no representable variance, the limit p = 0
    w = welch([1000.0, 1000.0], [0.0, 1e-300])
    assert (w.p, w.t, w.ci.low, w.ci.high) == (0.0, None, w.estimate, w.estimate)
    assert w.reason == stats.NEGLIGIBLE_SPREAD
