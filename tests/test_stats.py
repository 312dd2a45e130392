"""pipeline.core.stats: known answers worked out by hand (arithmetic in the comments),
the cases the libraries answer with NaN, the one significance rule and p format,
and simulations of the per-class claims: how often they are wrong, and how often
they find a real effect."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.core import stats
from pipeline.core.stats import (
    Interval,
    StatsError,
    adjust,
    format_p,
    mcnemar,
    mean_ci,
    paired_bootstrap,
    per_class_over_seeds,
    power,
    significant,
    verdict,
    welch,
)

T_975_3 = 3.182446305284263  # Student t, 0.975 quantile, 3 dof (tables)
T_975_4 = 2.7764451051977987  # Student t, 0.975 quantile, 4 dof (tables)


# --------------------------------------------------------------------------- one arm


def test_mean_ci_known_answer():
    s = mean_ci([1, 2, 3, 4])
    # mean = 10/4 = 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, ddof=1: std = sqrt(5/3)
    # half width = t(0.975, 3) * std / sqrt(4) = 3.182446 * 1.290994 / 2 = 2.054260
    half = T_975_3 * math.sqrt(5 / 3) / 2
    assert (s.n, s.mean, s.warning) == (4, 2.5, None)
    assert s.std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert s.ci.low == pytest.approx(2.5 - half, rel=1e-9) and s.ci.high == pytest.approx(2.5 + half, rel=1e-9)
    assert s.ci.half_width == pytest.approx(2.054260, abs=1e-6)
    # 90%: t(0.95, 3) = 2.353363
    assert mean_ci([1, 2, 3, 4], 0.90).ci.high - 2.5 == pytest.approx(2.353363435 * math.sqrt(5 / 3) / 2, rel=1e-8)


def test_mean_ci_single_seed_and_no_spread():
    s = mean_ci([0.91])
    assert (s.n, s.mean, s.std, s.ci.low, s.ci.high) == (1, 0.91, None, None, None)
    assert s.warning == "single seed: no confidence interval"
    assert json.loads(s.model_dump_json())["ci"]["low"] is None
    assert (mean_ci([0.8] * 3).std, mean_ci([0.8] * 3).ci.low, mean_ci([0.8] * 3).ci.high) == (0.0, 0.8, 0.8)


# --------------------------------------------------------------------------- welch


A3 = [0.80, 0.82, 0.81]
B3 = [0.78, 0.79, 0.77]


def test_welch_known_answer():
    w = welch(A3, B3)
    # means 0.81 and 0.78: diff = +0.03; both variances 0.0001
    # se = sqrt(0.0001/3 + 0.0001/3) = 0.0081650; t = 0.03 / se = 3 * sqrt(1.5); dof = 4
    # half = t(0.975, 4) * se = 0.0226696 -> CI [0.0073304, 0.0526696]
    # p, closed form of the t cdf with 4 dof: p = 0.0213116
    se = math.sqrt(0.0002 / 3)
    assert (w.n_a, w.n_b, w.reason) == (3, 3, None)
    assert w.diff == pytest.approx(0.03, abs=1e-12)
    assert w.dof == pytest.approx(4.0, rel=1e-9) and w.t == pytest.approx(3 * math.sqrt(1.5), rel=1e-9)
    assert w.ci.low == pytest.approx(0.03 - T_975_4 * se, rel=1e-9)
    assert w.ci.high == pytest.approx(0.03 + T_975_4 * se, rel=1e-9)
    t = 3 * math.sqrt(1.5)
    f = 0.5 + 3 / 8 * t / math.sqrt(1 + t * t / 4) * (1 - t * t / (12 * (1 + t * t / 4)))
    assert w.p == pytest.approx(2 * (1 - f), rel=1e-9)


def test_welch_sign_is_a_minus_b():
    w = welch(B3, A3)
    assert w.diff == pytest.approx(-0.03) and w.t < 0 and w.ci.high < 0


def test_welch_single_seed_reports_no_test():
    w = welch([0.81], [0.78, 0.79])
    assert (w.p, w.t, w.dof, w.ci.low, w.ci.high) == (None, None, None, None, None)
    assert w.diff == pytest.approx(0.81 - 0.785)  # the difference itself is still known
    assert w.reason == "single seed: no confidence interval"


def test_welch_zero_variance():
    # equal: the observed difference is exactly 0, so p = 1 whatever the (unseen) spread
    w = welch([0.8, 0.8, 0.8], [0.8, 0.8])
    assert (w.diff, w.p, w.t, w.ci.low) == (0.0, 1.0, 0.0, None)
    # different: scipy says t = inf, p = 0, certainty from seeds that showed no spread; undefined instead
    w = welch([0.8, 0.8], [0.7, 0.7])
    assert (w.p, w.t, w.ci.low, w.ci.high) == (None, None, None, None)
    assert w.reason == stats.ZERO_VARIANCE
    assert verdict(w.ci, w.p, 0.05, w.reason) == "zero variance in both groups: no interval; not a finding"


def test_welch_one_group_constant_is_an_ordinary_test():
    w = welch([0.8, 0.8, 0.8], [0.78, 0.79, 0.77])  # only b has spread: dof = nb - 1 = 2
    assert w.dof == pytest.approx(2.0) and 0 < w.p < 1


# --------------------------------------------------------------------------- power


def test_power_known_answer():
    # 3 seeds per arm, pooled SD 0.01: d at 80% power and alpha 0.05 with n = 3 is 3.0709
    # (two-sample t, noncentral t), so the detectable difference is 3.07 points
    a, b = [0.80, 0.81, 0.82], [0.70, 0.71, 0.72]
    p = power(a, b, alpha=0.05, target=0.01)
    assert p.sd == pytest.approx(0.01) and p.n_per_arm == 3
    assert p.detectable == pytest.approx(0.030709, abs=2e-5)
    # 1 point = 1 SD: d = 1 needs 16.71 -> 17 seeds per arm
    assert p.seeds_for_target == 17
    assert power([0.8], [0.7, 0.71], 0.05, 0.01).detectable is None


def test_power_states_the_sds_uncertainty_and_welchs_own_power():
    """3 seeds per arm: the pooled SD has 4 degrees of freedom, so its 95% interval is
    0.60 to 2.87 times the estimate (chi-square); Welch's test, with its fewer degrees
    of freedom, finds the t-test's 80%-power difference less often (simulated), and
    with 30 seeds per arm the two agree."""
    p = power([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], alpha=0.05, target=0.01)
    chi2 = pytest.importorskip("scipy.stats").chi2
    assert p.sd_ci.low == pytest.approx(0.01 * (4 / chi2.ppf(0.975, 4)) ** 0.5)
    assert p.sd_ci.high == pytest.approx(0.01 * (4 / chi2.ppf(0.025, 4)) ** 0.5)
    assert 0.005 < p.sd_ci.low < 0.0065 and 0.028 < p.sd_ci.high < 0.029
    assert 0.6 < p.welch_power < 0.75  # below the nominal 0.8
    assert p.welch_power == power([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 0.05, 0.01).welch_power  # fixed seed
    rng = np.random.default_rng(0)
    many = power(list(0.7 + rng.normal(0, 0.01, 30)), list(0.7 + rng.normal(0, 0.01, 30)), 0.05, 0.01)
    assert many.welch_power == pytest.approx(0.8, abs=0.015)


def test_power_with_seeds_far_more_alike_than_the_target():
    """Two seeds per arm 0.01 points apart against a 1-point target: statsmodels' root finder
    fails (it returned NaN and the evaluate stage crashed); 2 seeds already suffice."""
    p = power([0.7172, 0.7173], [0.7176, 0.7177], alpha=0.05, target=0.01)
    assert p.seeds_for_target == 2 and p.detectable is not None and 0 < p.detectable < 0.001
    p = power([0.70, 0.74], [0.70, 0.7001], alpha=0.05, target=0.01)  # wide spread: many seeds
    assert p.seeds_for_target > 2


# --------------------------------------------------------------------------- corrections


def test_holm_known_answer():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    assert adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert adjust([0.6, 0.5]) == [1.0, 1.0]  # capped at 1


def test_untestable_comparisons_still_count():
    # m = 2 even though one comparison has no p: 0.02 x 2 = 0.04
    assert adjust([0.02, None]) == [pytest.approx(0.04), None]
    assert adjust([]) == []
    with pytest.raises(StatsError, match=r"\[0, 1\]"):
        adjust([0.2, float("nan")])


def test_benjamini_hochberg_known_answer():
    # sorted 0.01, 0.02, 0.04: x 3/1, 3/2, 3/3 = 0.03, 0.03, 0.04 (running min from the top)
    assert adjust([0.04, 0.01, 0.02], "fdr_bh") == pytest.approx([0.04, 0.03, 0.03])


# --------------------------------------------------------------------------- per class, over seeds


BASE = np.linspace(0.55, 0.85, 10)  # a class accuracy per class, as CIFAR-10's spread


@pytest.fixture
def frozen_heap():
    """statsmodels' Holm runs a full garbage collection per call; with the heap
    frozen that is cheap, and thousands of simulated studies take seconds."""
    import gc

    per_class_over_seeds(np.random.rand(3, 10), np.random.rand(3, 10))  # scipy and statsmodels loaded first
    gc.freeze()
    yield
    gc.unfreeze()


def _class_study(rng, effect, seeds, sd_seed=0.01, images=1000, spread=1.0):
    """Per-seed per-class accuracies of two arms: each seed moves each class by
    N(0, sd), sd from sd_seed / spread to sd_seed * spread over the classes, then
    1000 test images per class are drawn (binomial)."""
    sd = sd_seed * np.linspace(1 / spread, spread, 10)

    def arm(shift):
        p = np.clip(BASE + shift + rng.normal(0, 1, (seeds, 10)) * sd, 0, 1)
        return rng.binomial(images, p) / images
    return arm(effect), arm(np.zeros(10))


def test_per_class_claims_from_noise_stay_below_alpha(frozen_heap):
    """Two identical recipes, 1000 simulated studies of 3 seeds: the chance that a
    study marks even one class (Holm over classes) stays at or below the nominal 5%,
    with the classes' seed SDs equal and ninefold apart."""
    rng = np.random.default_rng(0)
    for spread in (1, 3):
        marked = 0
        for _ in range(1000):
            a, b = _class_study(rng, np.zeros(10), seeds=3, spread=spread)
            marked += any(significant(c.p_adjusted, 0.05) for c in per_class_over_seeds(a, b))
        assert marked / 1000 <= 0.05, spread


def test_per_class_marks_would_come_from_noise_without_seeds_and_correction():
    """The same simulation through the image-level bootstrap of seed-averaged
    predictions, uncorrected: spurious marks in most studies, which the seed-level
    test above avoids."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 200)
    marked = 0
    for _ in range(40):
        p_seed_a = np.clip(BASE[labels] + np.repeat(rng.normal(0, 0.015, (3, 10)), 200, axis=1), 0, 1)
        p_seed_b = np.clip(BASE[labels] + np.repeat(rng.normal(0, 0.015, (3, 10)), 200, axis=1), 0, 1)
        a, b = rng.random((3, 2000)) < p_seed_a, rng.random((3, 2000)) < p_seed_b
        boot = paired_bootstrap(a, b, n_resamples=300, groups=labels)
        marked += any(g.diff.defined and (g.diff.low > 0 or g.diff.high < 0) for g in boot.groups)
    assert marked / 40 > 0.3


def test_per_class_finds_a_real_effect_of_stated_size(frozen_heap):
    """A 7-point gain on one class, 5 seeds per arm (per-seed class SD about 1.8
    points): found in at least 80% of 300 simulated studies; no other class marked
    in more than 5%. With 6 seeds per arm, as shipped, it is found in at least 95%;
    with 3, a 12-point gain in at least 80% (92% in 2000 studies)."""
    rng = np.random.default_rng(2)
    effect = np.zeros(10)
    effect[3] = 0.07
    found, other = 0, 0
    for _ in range(300):
        a, b = _class_study(rng, effect, seeds=5)
        res = per_class_over_seeds(a, b)
        found += significant(res[3].p_adjusted, 0.05)
        other += any(significant(c.p_adjusted, 0.05) for k, c in enumerate(res) if k != 3)
    assert found / 300 >= 0.8
    assert other / 300 <= 0.05
    found = sum(significant(per_class_over_seeds(*_class_study(rng, effect, seeds=6))[3].p_adjusted, 0.05)
                for _ in range(300))
    assert found / 300 >= 0.95
    effect[3] = 0.12
    found = sum(significant(per_class_over_seeds(*_class_study(rng, effect, seeds=3))[3].p_adjusted, 0.05)
                for _ in range(300))
    assert found / 300 >= 0.8


def test_per_class_discounts_lucky_agreement_and_never_explains_spread_away():
    """3 seeds per arm, as in a shipped study: a class with a 14-point gain whose seeds
    spread (deer) against one with a 5-point gain whose three seeds happen to agree
    (truck). Welch per class puts truck's evidence 1000 times above deer's. Here
    truck's variance is raised towards the classes' common one (a p at least 5 times
    larger, no longer significant after Holm), and deer keeps its own variance (the
    pooled t on its seeds: no smaller than its evidence, no larger either)."""
    rng = np.random.default_rng(5)
    b = 0.7 + rng.normal(0, 0.02, (3, 10))
    a = b.mean(0) + rng.normal(0, 0.02, (3, 10))
    a[:, 4] = b[:, 4].mean() + np.array([0.03, 0.14, 0.26])  # deer: +14.3, spread
    a[:, 9] = b[:, 9].mean() + np.array([0.044, 0.048, 0.052])  # truck: +4.8, agreeing
    b[:, 9] = b[:, 9].mean() + np.array([-0.004, 0.0, 0.004])
    w_deer, w_truck = welch(a[:, 4], b[:, 4]).p, welch(a[:, 9], b[:, 9]).p
    assert stats.adjust([welch(a[:, k], b[:, k]).p for k in range(10)])[9] < 0.05  # Welch stars truck
    res = per_class_over_seeds(a, b)
    assert res[9].p > 5 * w_truck and res[9].dof > 4
    assert res[4].dof == 4 and res[4].p == pytest.approx(_pooled_t_p(a[:, 4], b[:, 4]))
    assert res[4].p / res[9].p < (w_deer / w_truck) / 10
    assert res[4].diff.estimate == pytest.approx(a[:, 4].mean() - b[:, 4].mean())


def _pooled_t_p(x, y):
    return pytest.importorskip("scipy.stats").ttest_ind(x, y).pvalue  # equal variances: n_x + n_y - 2 dof


def test_a_class_whose_seeds_all_agree_exactly_leaves_the_others_alone():
    """Every seed of both arms at 0.7 on one class: numpy's variance is ~1e-32 there,
    not 0, and its log would drag the prior's scale towards 0, so that no class's
    lucky agreement were discounted any more."""
    rng = np.random.default_rng(0)
    a, b = 0.7 + rng.normal(0, 0.02, (3, 10)), 0.7 + rng.normal(0, 0.02, (3, 10))
    assert np.var([0.7] * 3) != 0  # the rounding this guards against
    alone = per_class_over_seeds(a, b)
    with_flat = per_class_over_seeds(np.c_[a, np.full(3, 0.7)], np.c_[b, np.full(3, 0.7)])
    assert [c.p for c in with_flat[:10]] == pytest.approx([c.p for c in alone], rel=1e-9)
    assert with_flat[10].p == 1.0


def test_per_class_variance_is_never_below_the_class_own():
    """Classes whose variances agree: those whose own variance is below the common one
    are raised to it and gain the prior's degrees of freedom (at most the classes'
    40 together); the others keep their own pooled t. With fewer than three classes
    with spread nothing is pooled."""
    rng = np.random.default_rng(3)
    a, b = 0.7 + rng.normal(0, 0.02, (3, 10)), 0.7 + rng.normal(0, 0.02, (3, 10))
    res = per_class_over_seeds(a, b)
    raised = [c for c in res if c.dof > 4]
    assert 0 < len(raised) < 10 and all(c.dof <= 40 for c in raised)
    scipy_stats = pytest.importorskip("scipy.stats")
    for c in res:
        own = scipy_stats.ttest_ind(a[:, c.group], b[:, c.group])
        if c.dof > 4:  # a larger variance: a smaller |t| than the class's own
            assert abs(c.t) < abs(own.statistic)
        else:
            assert c.t == pytest.approx(own.statistic) and c.p == pytest.approx(own.pvalue)
    two = np.c_[a[:, :2], np.full((3, 8), 0.5)], np.c_[b[:, :2], np.full((3, 8), 0.5)]
    res = per_class_over_seeds(*two)
    for k in (0, 1):
        assert res[k].dof == 4 and res[k].p == pytest.approx(_pooled_t_p(two[0][:, k], two[1][:, k]))
    assert res[5].p == 1.0 and res[5].reason == stats.ZERO_VARIANCE  # no spread, no difference


# --------------------------------------------------------------------------- mcnemar


def test_mcnemar_known_answer():
    # 2 images only b gets right (b01), 8 only a gets right (b10), 5 both right, 3 both wrong
    a = [0] * 2 + [1] * 8 + [1] * 5 + [0] * 3
    b = [1] * 2 + [0] * 8 + [1] * 5 + [0] * 3
    m = mcnemar(np.array(a, bool), np.array(b, bool))
    # exact two-sided binomial, n = 10, k = 2: 2 * (1 + 10 + 45) / 1024 = 0.109375
    assert (m.n, m.b01, m.b10) == (18, 2, 8)
    assert m.p == pytest.approx(0.109375, abs=1e-12)
    assert mcnemar(b, a).p == pytest.approx(0.109375)  # symmetric; 0/1 ints accepted too
    assert mcnemar([True, False, True], [True, False, True]).p == 1.0


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
    return rng.random((3, n)) < 0.80, rng.random((2, n)) < 0.75  # 3 and 2 seeds, same images


def test_bootstrap_identical_and_opposite_arms():
    a = np.random.default_rng(0).random(300) < 0.7
    r = paired_bootstrap(a, a.copy(), n_resamples=500)
    assert (r.diff.estimate, r.diff.low, r.diff.high, r.p) == (0.0, 0.0, 0.0, 1.0)
    r = paired_bootstrap(np.ones(50, bool), np.zeros(50, bool), n_resamples=200)
    assert (r.diff.estimate, r.diff.low, r.diff.high, r.acc_a, r.acc_b, r.p) == (1.0, 1.0, 1.0, 1.0, 0.0, 0.0)


def test_bootstrap_estimate_is_the_plain_accuracy_difference():
    a, b = _fixture()
    r = paired_bootstrap(a, b, n_resamples=300)
    assert r.diff.estimate == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert (r.n_images, r.n_seeds_a, r.n_seeds_b, r.stratified) == (400, 3, 2, False)
    assert r.diff.low < r.diff.estimate < r.diff.high


def test_bootstrap_same_seed_same_answer_and_chunking_changes_nothing(monkeypatch):
    a, b = _fixture(n=100)
    r1 = paired_bootstrap(a, b, n_resamples=250, seed=7)
    assert paired_bootstrap(a, b, n_resamples=250, seed=7) == r1
    assert paired_bootstrap(a, b, n_resamples=250, seed=8).diff != r1.diff
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 100 * 7)  # 7 resamples per chunk, uneven tail
    assert paired_bootstrap(a, b, n_resamples=250, seed=7) == r1


def test_bootstrap_per_class_hand_example():
    # class "cat": a 4/4, b 2/4 -> +0.5; class "dog": identical -> 0 with CI [0, 0], p 1
    a = [1, 1, 1, 1, 1, 0, 1, 0]
    b = [1, 1, 0, 0, 1, 0, 1, 0]
    r = paired_bootstrap(a, b, n_resamples=400, groups=["cat"] * 4 + ["dog"] * 4)
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


# --------------------------------------------------------------------------- the rule and the words


def test_one_rule_for_significance():
    assert significant(0.003, 0.05) and not significant(0.05, 0.05) and not significant(None, 0.05)
    with pytest.raises(StatsError, match="alpha"):
        significant(0.01, 5)


def test_one_p_format():
    assert [format_p(p) for p in (0.0004, 0.003, 0.2512, 0.0496, 1.0, None)] == \
           ["< 0.001", "0.003", "0.25", "0.0496", "1", "n/a"]  # 0.0496 must not read "0.05"


def test_verdicts():
    iv = Interval(estimate=0.0184, low=0.009, high=0.028, confidence=0.95)
    assert verdict(iv, 0.003, 0.05) == "+1.84 points (95% CI +0.90 to +2.80), significant (p = 0.003)"
    assert verdict(iv, 0.006, 0.05, adjusted="Holm") == \
        "+1.84 points (unadjusted 95% CI +0.90 to +2.80), significant (Holm-adjusted p = 0.006)"
    v = verdict(Interval(estimate=-0.002, low=-0.011, high=0.007, confidence=0.95), 0.61, 0.05)
    assert v == "-0.20 points (95% CI -1.10 to +0.70), not significant (p = 0.61)" and "\u2212" not in v
    w = welch([0.81], [0.78, 0.79])
    assert verdict(w.ci, w.p, 0.05, w.reason) == "single seed: no interval; not a finding"
    assert verdict(Interval(estimate=-1e-5, low=-0.01, high=0.01, confidence=0.95), 0.9, 0.05).startswith("0.00")
    # the words follow the p they are given: a Holm-adjusted p above alpha is "not significant"
    # even where the unadjusted interval excludes 0
    assert "not significant" in verdict(iv, 0.07, 0.05, adjusted="Holm")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call", [
    lambda: mean_ci([]),
    lambda: welch([], [0.8, 0.9]),
    lambda: mcnemar([], []),
    lambda: paired_bootstrap([], []),
    lambda: paired_bootstrap(np.zeros((3, 0), bool), np.zeros((3, 0), bool)),
], ids=["mean_ci", "welch", "mcnemar", "bootstrap", "bootstrap-2d"])
def test_empty_input_is_a_one_line_value_error(call):
    with pytest.raises(ValueError, match="empty") as exc:
        call()
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("call, needle", [
    (lambda: mean_ci([0.8, float("nan")]), "NaN or infinity"),
    (lambda: welch([0.8, float("inf")], [0.7, 0.8]), "NaN or infinity"),
    (lambda: mean_ci([0.8, 0.9], confidence=95), "confidence"),
    (lambda: mean_ci([[0.8, 0.9]]), "1-D"),
    (lambda: mean_ci(["a", "b"]), "numbers"),
    (lambda: per_class_over_seeds(np.zeros((3, 10)), np.zeros((3, 9))), "same classes"),
])
def test_bad_input_is_a_one_line_value_error(call, needle):
    with pytest.raises(ValueError, match=needle) as exc:
        call()
    assert "\n" not in str(exc.value)


def test_stats_error_is_a_pipeline_error():
    from pipeline.core.errors import PipelineError

    assert issubclass(StatsError, PipelineError) and issubclass(StatsError, ValueError)


def test_a_two_group_contrast_is_welchs_test_and_an_interaction_is_a_difference_of_differences():
    a, b = [0.70, 0.72, 0.69], [0.66, 0.67, 0.69, 0.65]
    w, c = stats.welch(a, b), stats.contrast([a, b], (1, -1))
    assert c.p == pytest.approx(w.p, rel=1e-12) and c.dof == pytest.approx(w.dof, rel=1e-12)
    assert (c.ci.low, c.ci.high) == pytest.approx((w.ci.low, w.ci.high), rel=1e-12)
    cells = [[0.76, 0.77, 0.76], [0.70, 0.71, 0.70], [0.72, 0.72, 0.73], [0.72, 0.73, 0.72]]
    inter = stats.contrast(cells, (1, -1, -1, 1))
    m = [np.mean(x) for x in cells]
    assert inter.ci.estimate == pytest.approx(m[0] - m[1] - m[2] + m[3])
    assert inter.ci.low < inter.ci.estimate < inter.ci.high and 0 < inter.p < 0.01
    one = stats.contrast([[0.7], [0.6, 0.61]], (1, -1))
    assert one.p is None and one.ci.low is None and one.reason == stats.SINGLE_SEED
    with pytest.raises(stats.StatsError, match="one weight per group"):
        stats.contrast([a, b], (1, -1, 1))
    with pytest.raises(stats.StatsError, match="not all zero"):
        stats.contrast([a, b], (0, 0))
    # identical seeds in every cell: no spread, so no test (rounding must not make one)
    flat = stats.contrast([[0.81] * 3, [0.7] * 3, [0.6] * 3, [0.5] * 3], (1, -1, -1, 1))
    assert flat.p is None and flat.ci.low is None and flat.reason == stats.ZERO_VARIANCE_ALL
    even = stats.contrast([[0.8] * 3, [0.7] * 3, [0.6] * 3, [0.5] * 3], (1, -1, -1, 1))  # cancels to 1e-16
    assert even.p == 1.0
    # a group with weight 0 does not count, even with one value
    assert stats.contrast([a, b, [0.5]], (1, -1, 0)).p == pytest.approx(w.p, rel=1e-12)


def test_factor_effects_compare_each_value_within_every_combination_of_the_others():
    from types import SimpleNamespace

    from pipeline.evaluate.core import factor_effects

    axes, rows = {}, {}
    rng = np.random.default_rng(1)
    for aug in ("none", "standard"):
        for d in ("0.0", "0.25", "0.5"):
            arm = f"aug={aug},dropout={d}"
            axes[arm] = {"aug": aug, "dropout": d}
            rows[arm] = [SimpleNamespace(test_acc=0.7 + x, gap_clean=0.1 + x) for x in rng.normal(0, 0.005, 3)]
    acc = {a: [r.test_acc for r in rows[a]] for a in rows}
    effects, interactions = factor_effects(rows, axes, "aug=none,dropout=0.0", 0.95, acc)
    assert [(e.factor, e.value, e.at["dropout" if e.factor == "aug" else "aug"]) for e in effects] == [
        ("aug", "standard", "0.0"), ("aug", "standard", "0.25"), ("aug", "standard", "0.5"),
        ("dropout", "0.25", "none"), ("dropout", "0.5", "none"), ("dropout", "0.25", "standard"),
        ("dropout", "0.5", "standard")]
    for e in effects:  # each is the plain Welch test of its two arms, adjusted later in the study's family
        assert e.test_acc == stats.welch([r.test_acc for r in rows[e.arm]], [r.test_acc for r in rows[e.reference_arm]])
        assert e.p_adjusted is None and e.verdict == ""
    assert [(i.value, i.other_value) for i in interactions] == [("standard", "0.25"), ("standard", "0.5")]
    one_axis = {a: {"aug": v["aug"]} for a, v in axes.items() if v["dropout"] == "0.0"}
    assert factor_effects({a: rows[a] for a in one_axis}, one_axis, "aug=none,dropout=0.0", 0.95, acc) == ([], [])


def test_the_per_class_power_simulation_runs_the_per_class_tests_own_arithmetic():
    """The fast path the power simulation takes (no result objects, Holm in numpy) gives
    the adjusted p-values per_class_over_seeds gives; the power falls as the per-class
    seed SD grows and rises with seeds."""
    from pipeline.core.stats import _class_tests, _holm, per_class_over_seeds, per_class_power

    rng = np.random.default_rng(5)
    for seeds in (3, 6, 12):
        a, b = rng.normal(0.7, 0.02, (seeds, 10)), rng.normal(0.7, 0.02, (seeds, 10))
        a[:, 4] += 0.05
        slow = [c.p_adjusted for c in per_class_over_seeds(a, b)]
        assert _holm(_class_tests(a, b)[3]) == pytest.approx(slow, rel=1e-12)
    at = {sd: per_class_power(sd, 6, 0.07, cached=False) for sd in (0.01, 0.03)}
    assert at[0.01] > 0.95 and at[0.03] < 0.75  # a 7-point class effect at realistic SDs
    assert per_class_power(0.03, 12, 0.07, cached=False) > at[0.03]
