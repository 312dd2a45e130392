"""Statistics for multi-seed ablation results: summaries, comparisons, corrections,
power, and the one rule that turns them into words.

The tests and corrections are scipy's and statsmodels' (Student-t intervals,
Welch's t-test, the exact McNemar test, Holm, the power of a two-sample t-test);
what is written here is the handling of the cases those libraries answer with
NaN (one seed, no spread), the stratified paired bootstrap over test images
(which no library offers), and the significance rule and number formats, each
in one place. Every result is a frozen pydantic model: the evaluation summary
that the stages exchange is built from them (pipeline.core.contracts).

Conventions:
- accuracies are fractions in [0, 1]; a "point" is 100 x a fraction;
- every difference is `a - b` (candidate minus baseline): positive means a is better;
- an undefined quantity is None, never NaN, and comes with a reason in words;
- bad input (empty, NaN, wrong shape) raises `StatsError`, one line (a
  PipelineError, so stage `main()`s print it as `error: ...` and exit 2).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.core.errors import PipelineError

SINGLE_SEED = "single seed: no confidence interval"
ZERO_VARIANCE = "zero variance in both groups: the t-test is undefined"
ZERO_VARIANCE_ALL = "zero variance in every group: the test is undefined"
MINUS = "-"  # ASCII hyphen-minus, not U+2212: greppable, and safe in logs, CSV and terminals
POWER = 0.8  # the power at which a "detectable difference" is stated

# Bootstrap draws are made in chunks of at most this many indices (8 bytes each:
# 32 MiB), so 2000 resamples of a 10,000-image test set never need 160 MB at once.
_CHUNK_ELEMENTS = 1 << 22


class StatsError(PipelineError, ValueError):
    """Input the statistics cannot be computed from; the message is one line."""


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- results


class Interval(_Result):
    """An estimate with a two-sided confidence interval; low/high are None when undefined."""

    estimate: float
    low: float | None
    high: float | None
    confidence: float

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def half_width(self) -> float | None:
        return (self.high - self.low) / 2 if self.defined else None


class MeanCI(_Result):
    """Mean over seeds with its Student-t interval (`ci.estimate` is the mean)."""

    n: int
    mean: float
    std: float | None  # sample std (ddof=1); None for n = 1, where it is undefined
    ci: Interval
    warning: str | None = None


class Welch(_Result):
    """Welch's unequal-variance t-test of mean(a) - mean(b); `ci.estimate` is the difference."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    ci: Interval
    dof: float | None  # Welch-Satterthwaite degrees of freedom
    t: float | None
    p: float | None  # two-sided
    reason: str | None = None  # why dof/t/p/CI are missing, when they are

    @property
    def diff(self) -> float:
        return self.ci.estimate


class McNemar(_Result):
    """Exact McNemar test on paired per-image correctness."""

    n: int  # images
    b01: int  # a wrong, b right
    b10: int  # a right, b wrong
    p: float  # two-sided exact binomial p on the discordant pairs


class GroupDiff(_Result):
    """Accuracy difference a - b within one group (class) of images."""

    group: int | str
    n: int  # images in the group
    diff: Interval
    p: float


class Bootstrap(_Result):
    """Paired bootstrap of the accuracy difference a - b over test images."""

    n_images: int
    n_seeds_a: int
    n_seeds_b: int
    acc_a: float
    acc_b: float
    diff: Interval
    p: float  # two-sided; 0 means below the 1/n_resamples resolution
    n_resamples: int
    seed: int
    stratified: bool  # resampled within groups (True when groups were given)
    groups: tuple[GroupDiff, ...] = ()


class Power(_Result):
    """What a two-arm comparison over seeds could detect (two-sample t-test)."""

    n_per_arm: int
    sd: float | None  # pooled seed SD of the two arms, as a fraction
    alpha: float
    power: float
    detectable: float | None  # smallest |difference| detected with this power (fraction)
    target: float  # a stated difference of interest (fraction)
    seeds_for_target: int | None  # seeds per arm that would detect `target` with this power
    sd_ci: Interval | None = None  # the pooled SD's own 95% interval (chi-square, 2n - 2 degrees of freedom)
    welch_power: float | None = None  # Welch's test's power at `detectable`, by simulation


# --------------------------------------------------------------------------- input checks


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise StatsError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return c


def _values(values: Sequence[float], name: str = "values") -> np.ndarray:
    """A non-empty 1-D float array of finite numbers."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise StatsError(f"{name}: expected a sequence of numbers") from None
    if x.ndim != 1:
        raise StatsError(f"{name}: expected a 1-D sequence, got shape {x.shape}")
    if x.size == 0:
        raise StatsError(f"{name}: empty, need at least one value")
    if not np.all(np.isfinite(x)):
        raise StatsError(f"{name}: contains NaN or infinity")
    return x


def _correctness(values, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    """Per-image correctness as a bool array; accepts bools or exact 0/1 numbers."""
    x = np.asarray(values)
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise StatsError(f"{name}: expected a {want} array of per-image correctness, got shape {x.shape}")
    if x.size == 0:
        raise StatsError(f"{name}: empty, need at least one image")
    if x.dtype != bool:
        if not np.issubdtype(x.dtype, np.number) or not np.all((x == 0) | (x == 1)):
            raise StatsError(f"{name}: per-image correctness must be booleans or 0/1")
        x = x.astype(bool)
    return x


def _mean(x: np.ndarray) -> float:
    """Mean, exact when every value is equal (np.mean of [0.8] * 3 is 0.8000000000000002)."""
    return float(x[0]) if np.ptp(x) == 0 else float(x.mean())


def _scipy():
    from scipy import stats

    return stats


# --------------------------------------------------------------------------- one arm


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean, sample std (ddof=1) and Student-t CI of the mean over seeds
    (`scipy.stats.ttest_1samp(...).confidence_interval`).

    With one seed the spread is unknown, so std and the interval are None and
    `warning` says so; with no spread the interval is [mean, mean].
    """
    c = _check_confidence(confidence)
    x = _values(values)
    n, mean = int(x.size), _mean(x)
    if n == 1:
        return MeanCI(n=1, mean=mean, std=None, ci=Interval(estimate=mean, low=None, high=None, confidence=c),
                      warning=SINGLE_SEED)
    if np.ptp(x) == 0:
        return MeanCI(n=n, mean=mean, std=0.0, ci=Interval(estimate=mean, low=mean, high=mean, confidence=c))
    ci = _scipy().ttest_1samp(x, 0.0).confidence_interval(c)
    return MeanCI(n=n, mean=mean, std=float(x.std(ddof=1)),
                  ci=Interval(estimate=mean, low=float(ci.low), high=float(ci.high), confidence=c))


# --------------------------------------------------------------------------- two arms, over seeds


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b) over seeds:
    `scipy.stats.ttest_ind(a, b, equal_var=False)`, its p, dof and confidence interval.

    Where scipy would answer NaN, the reason is given instead of a made-up number:
    - a group with one value: no spread estimate, so dof, t, p and the CI are None.
    - every value identical within both groups: if the means are equal the observed
      difference is exactly 0 and p = 1 whatever the true spread; if they differ,
      p could be anything (identical results usually mean the seed does not reach
      the run), so p is None. The CI needs the spread in both cases: None.
    """
    c = _check_confidence(confidence)
    x, y = _values(a, "a"), _values(b, "b")
    na, nb, ma, mb = int(x.size), int(y.size), _mean(x), _mean(y)
    diff = ma - mb
    none = Interval(estimate=diff, low=None, high=None, confidence=c)
    if na < 2 or nb < 2:
        return Welch(n_a=na, n_b=nb, mean_a=ma, mean_b=mb, ci=none, dof=None, t=None, p=None, reason=SINGLE_SEED)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        p, t = (1.0, 0.0) if x[0] == y[0] else (None, None)
        return Welch(n_a=na, n_b=nb, mean_a=ma, mean_b=mb, ci=none, dof=None, t=t, p=p, reason=ZERO_VARIANCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-identical values: scipy's own caveat
        r = _scipy().ttest_ind(x, y, equal_var=False)
        ci = r.confidence_interval(c)
    return Welch(n_a=na, n_b=nb, mean_a=ma, mean_b=mb, dof=float(r.df), t=float(r.statistic),
                 p=float(min(1.0, r.pvalue)),
                 ci=Interval(estimate=diff, low=float(ci.low), high=float(ci.high), confidence=c))


class Contrast(_Result):
    """A linear contrast of group means over seeds, sum(w_i * mean_i), with
    Welch-Satterthwaite degrees of freedom (unequal variances); `ci.estimate` is
    the contrast. Weights (1, -1) give Welch's t-test of two groups."""

    weights: tuple[float, ...]
    n: tuple[int, ...]
    means: tuple[float, ...]
    ci: Interval
    dof: float | None
    t: float | None
    p: float | None  # two-sided
    reason: str | None = None


def contrast(groups: Sequence[Sequence[float]], weights: Sequence[float], confidence: float = 0.95) -> Contrast:
    """Test sum(w_i * mean(group_i)) = 0 over seeds, each group with its own
    variance (standard error sqrt(sum w_i^2 s_i^2 / n_i), Welch-Satterthwaite dof).

    With weights (1, -1, -1, 1) on the cells (a1 b1, a0 b1, a1 b0, a0 b0) of two
    factors, it asks whether a1's effect over a0 differs between b1 and b0: their
    interaction. Missing spread is treated as in `welch`."""
    c = _check_confidence(confidence)
    if len(groups) != len(weights) or not groups:
        raise StatsError(f"contrast needs one weight per group, got {len(groups)} groups and {len(weights)} weights")
    w = np.asarray(weights, dtype=float)
    if not np.all(np.isfinite(w)) or not np.any(w):
        raise StatsError(f"contrast weights must be finite and not all zero, got {list(weights)}")
    xs = [_values(g, f"group {i}") for i, g in enumerate(groups)]
    n = tuple(int(x.size) for x in xs)
    means = tuple(_mean(x) for x in xs)
    est = float(sum(wi * m for wi, m in zip(w, means)))
    none = Interval(estimate=est, low=None, high=None, confidence=c)
    base = {"weights": tuple(float(v) for v in w), "n": n, "means": means}
    used = [(wi, x) for wi, x in zip(w, xs) if wi != 0.0]
    if min(x.size for _, x in used) < 2:
        return Contrast(**base, ci=none, dof=None, t=None, p=None, reason=SINGLE_SEED)
    # identical values have no spread, whatever rounding leaves in var(): as in `welch`
    terms = np.array([0.0 if np.ptp(x) == 0 else wi * wi * x.var(ddof=1) / x.size for wi, x in used])
    var = float(terms.sum())
    if var == 0.0:
        scale = max(1.0, float(sum(abs(wi * _mean(x)) for wi, x in used)))
        p, t = (1.0, 0.0) if abs(est) <= 1e-12 * scale else (None, None)
        return Contrast(**base, ci=none, dof=None, t=t, p=p, reason=ZERO_VARIANCE_ALL)
    dof = var ** 2 / float(sum(tv ** 2 / (x.size - 1) for tv, (_, x) in zip(terms, used) if tv > 0))
    se = math.sqrt(var)
    t_dist = _scipy().t
    t = est / se
    half = float(t_dist.ppf(0.5 + c / 2, dof)) * se
    return Contrast(**base, ci=Interval(estimate=est, low=est - half, high=est + half, confidence=c), dof=dof,
                    t=t, p=float(min(1.0, 2 * t_dist.sf(abs(t), dof))))


def power(a: Sequence[float], b: Sequence[float], alpha: float, target: float) -> Power:
    """The smallest difference a two-sample t-test over these seeds detects with
    power `POWER` at level `alpha` (from the pooled seed SD, as Cohen's d times the SD:
    statsmodels' TTestIndPower), and the seeds per arm `target` would need."""
    from statsmodels.stats.power import TTestIndPower

    x, y = _values(a, "a"), _values(b, "b")
    n = min(x.size, y.size)
    if n < 2:
        return Power(n_per_arm=int(n), sd=None, alpha=alpha, power=POWER, detectable=None, target=target,
                     seeds_for_target=None)
    sd = math.sqrt((x.var(ddof=1) * (x.size - 1) + y.var(ddof=1) * (y.size - 1)) / (x.size + y.size - 2))
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        sd = 0.0  # not the ~1e-16 rounding leaves
    solver = TTestIndPower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns, then returns NaN, where its root finder fails
        d = float(solver.solve_power(nobs1=n, alpha=alpha, power=POWER, ratio=1.0))
        needed = None
        if sd > 0 and target > 0:
            effect = target / sd
            if solver.power(effect_size=effect, nobs1=2, alpha=alpha, ratio=1.0) >= POWER:
                needed = 2  # seeds this alike: the fewest seeds a t-test can use already suffice
            else:
                solved = float(solver.solve_power(effect_size=effect, alpha=alpha, power=POWER, ratio=1.0))
                needed = max(math.ceil(solved), 2) if math.isfinite(solved) else None
    detectable = (d * sd if sd > 0 else 0.0) if math.isfinite(d) else None
    dof = x.size + y.size - 2
    chi2 = _scipy().chi2
    sd_ci = Interval(estimate=float(sd), low=float(sd * math.sqrt(dof / chi2.ppf(0.975, dof))),
                     high=float(sd * math.sqrt(dof / chi2.ppf(0.025, dof))), confidence=0.95)
    return Power(n_per_arm=int(n), sd=float(sd), alpha=alpha, power=POWER, detectable=detectable,
                 target=target, seeds_for_target=needed, sd_ci=sd_ci,
                 welch_power=welch_power(x.size, y.size, detectable / sd, alpha) if detectable and sd > 0 else None)


def welch_power(n_a: int, n_b: int, effect: float, alpha: float, studies: int = 20_000, seed: int = 0) -> float:
    """The chance that Welch's test, the one the verdicts use, finds a difference of
    `effect` seed SDs between two normal arms of n_a and n_b seeds at level `alpha`:
    simulated (`studies` draws, a fixed seed, so the same every time). With few seeds
    it is below the two-sample t-test's power: Welch estimates each arm's variance on
    its own, with fewer degrees of freedom."""
    rng = np.random.default_rng(seed)
    a = rng.normal(effect, 1.0, (studies, n_a))
    b = rng.normal(0.0, 1.0, (studies, n_b))
    p = _scipy().ttest_ind(a, b, axis=1, equal_var=False).pvalue
    return float(np.mean(p < alpha))


def welch_power_sds(sd_a: float, sd_b: float, n: int, effect: float, alpha: float, studies: int = 20_000,
                    seed: int = 0) -> float:
    """The chance that Welch's test at level `alpha` finds a true difference `effect`
    between arms of seed SDs `sd_a` and `sd_b`, `n` seeds each (all in the same unit):
    simulated, a fixed seed, so the same every time. What an analysis plan states
    for each hypothesis at the threshold it faces."""
    rng = np.random.default_rng(seed)
    a = rng.normal(effect, sd_a, (studies, n))
    b = rng.normal(0.0, sd_b, (studies, n))
    p = _scipy().ttest_ind(a, b, axis=1, equal_var=False).pvalue
    return float(np.mean(p < alpha))


# --------------------------------------------------------------------------- equivalence


EQUIVALENCE_VERDICTS = ("equivalent", "differs", "inconclusive")


class Equivalence(_Result):
    """Two one-sided Welch tests (TOST) of |mean(a) - mean(b)| < margin: does the
    difference lie within +-margin (a fraction)? `ci` is the (1 - 2 alpha) interval
    whose lying inside the margin is the same decision."""

    margin: float
    ci: Interval
    p: float | None  # the larger of the two one-sided p-values
    power: float | None  # the chance the test says "equivalent" when the arms are equal, at the observed SDs


def tost(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05,
         studies: int = 20_000) -> Equivalence:
    """TOST with Welch's degrees of freedom (statsmodels' ttost_ind, usevar='unequal'),
    and its power at the margin: simulated with the observed SDs and these seed
    counts, the true difference 0 (a fixed seed: the same figure every time)."""
    x, y = _values(a, "a"), _values(b, "b")
    if not margin > 0:
        raise StatsError(f"an equivalence margin must be > 0, got {margin!r}")
    diff = float(x.mean() - y.mean())
    if min(x.size, y.size) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return Equivalence(margin=margin, ci=Interval(estimate=diff, low=None, high=None, confidence=1 - 2 * alpha),
                           p=None, power=None)
    from statsmodels.stats.weightstats import ttost_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttost_ind(x, y, -margin, margin, usevar="unequal")[0])
    w = welch(x, y, 1 - 2 * alpha)
    sims = _tost_power(float(x.std(ddof=1)), float(y.std(ddof=1)), x.size, y.size, margin, alpha, studies)
    return Equivalence(margin=margin, ci=w.ci, p=p, power=sims)


def _tost_power(sd_a: float, sd_b: float, n_a: int, n_b: int, margin: float, alpha: float, studies: int,
                seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, sd_a, (studies, n_a))
    b = rng.normal(0.0, sd_b, (studies, n_b))
    va, vb = a.var(axis=1, ddof=1) / n_a, b.var(axis=1, ddof=1) / n_b
    se = np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    d = a.mean(axis=1) - b.mean(axis=1)
    t = _scipy().t
    p = np.maximum(t.sf((d + margin) / se, dof), t.cdf((d - margin) / se, dof))
    return float(np.mean(p < alpha))


def equivalence_verdict(p_equivalent: float | None, p_differs: float | None, alpha: float) -> str:
    """Three answers, each from its own (adjusted) p: equivalent (within the margin),
    differs (not equivalent, and the difference is significant), else inconclusive."""
    if significant(p_equivalent, alpha):
        return "equivalent"
    if significant(p_differs, alpha):
        return "differs"
    return "inconclusive"


# --------------------------------------------------------------------------- corrections


def adjust(pvalues: Sequence[float | None], method: str = "holm") -> list[float | None]:
    """Adjusted p-values (statsmodels' multipletests), in the input order.

    `method`: "holm" (family-wise error, for arms against one baseline and for the
    ten classes of one comparison) or "fdr_bh" (Benjamini-Hochberg). A None (an
    untestable comparison) stays None but still counts in the family: it was a
    hypothesis of the study, and dropping it would correct less than planned.
    """
    for p in pvalues:
        if p is not None and not 0.0 <= p <= 1.0:  # also refuses NaN
            raise StatsError(f"p-values must lie in [0, 1], got {p!r}")
    if not pvalues:
        return []
    from statsmodels.stats.multitest import multipletests

    filled = [1.0 if p is None else float(p) for p in pvalues]
    adjusted = multipletests(filled, method=method)[1]
    return [None if p is None else float(q) for p, q in zip(pvalues, adjusted)]


# --------------------------------------------------------------------------- per class, over seeds


class ClassDiff(_Result):
    """One class's accuracy difference over seeds (a t with a moderated variance), with its adjusted p."""

    group: int
    diff: Interval
    dof: float | None  # the class's own (n_a + n_b - 2), or with the prior's added where its variance was raised
    t: float | None
    p: float | None
    p_adjusted: float | None
    reason: str | None = None


def per_class_over_seeds(acc_a, acc_b, confidence: float = 0.95, method: str = "holm") -> tuple[ClassDiff, ...]:
    """Each class's per-seed accuracies of arm a against arm b ((seeds, classes)
    arrays): a t-test per class over the seeds whose variance never falls below the
    classes' common one, then `method` across the classes.

    The seeds are the unit: what varies when the recipe is run again. With a few
    seeds a class's own variance is a poor estimate (2 degrees of freedom per arm at
    3 seeds), and a Welch test per class rewards agreement over size: a class whose
    three seeds happen to agree is starred for a small gain. So a class's pooled
    two-sample variance is moderated by empirical Bayes, as in limma (Smyth 2004,
    Stat. Appl. Genet. Mol. Biol. 3:3): shrunk towards a prior fitted to all the
    classes' variances, the prior's degrees of freedom added (at most the k classes'
    own together, as limma caps them). Shrinking also pulls a truly noisy class's
    variance down, which made limma's test claim too much when the classes' seed
    SDs differ up to ninefold (a family-wise error of 7.6% at 3 seeds in simulation), so
    a class keeps its own variance and degrees of freedom where they are the larger:
    lucky agreement is discounted, spread is never explained away. Simulated on null
    arms (`python bench/per_class_error.py`: 1000 images per class, seed SDs equal or
    up to ninefold apart, 3 or 6 seeds, 10,000 studies each), the chance of even one
    spurious per-class claim stayed at 3.0-4.1%, and a 10-point gain on one class was
    found in 80-82% of studies at 3 seeds (a 7-point gain: 99% at 6) when the classes'
    seed SD is about 1 point; at 2 and 3 points a 7-point gain at 6 seeds is found in 88%
    and 59% (`per_class_power`, which each report runs at its own SD). Holm over the
    classes keeps that chance at alpha, which is what a reader of "augmentation
    helped cat, deer and frog" assumes."""
    a, b = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise StatsError(f"per-class accuracies must be (seeds, classes) arrays with the same classes, "
                         f"got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise StatsError("per-class accuracies must be finite")
    c = _check_confidence(confidence)
    k = a.shape[1]
    diff = a.mean(0) - b.mean(0)
    if min(len(a), len(b)) < 2:
        return tuple(ClassDiff(group=g, diff=Interval(estimate=float(diff[g]), low=None, high=None, confidence=c),
                               dof=None, t=None, p=None, p_adjusted=None, reason=SINGLE_SEED) for g in range(k))
    se, dof, t, p = _class_tests(a, b)
    half = _scipy().t.ppf(0.5 + c / 2, dof) * se
    out = []
    for g in range(k):
        if se[g] == 0:  # no spread anywhere: as welch() says it
            p0 = 1.0 if diff[g] == 0 else None
            out.append(dict(group=g, diff=Interval(estimate=float(diff[g]), low=None, high=None, confidence=c),
                            dof=None, t=0.0 if p0 else None, p=p0, reason=ZERO_VARIANCE))
        else:
            out.append(dict(group=g, diff=Interval(estimate=float(diff[g]), low=float(diff[g] - half[g]),
                                                   high=float(diff[g] + half[g]), confidence=c),
                            dof=float(dof[g]), t=float(t[g]), p=float(p[g])))
    adjusted = adjust([r["p"] for r in out], method)
    return tuple(ClassDiff(**r, p_adjusted=q) for r, q in zip(out, adjusted))


def _class_tests(a: np.ndarray, b: np.ndarray):
    """The per-class test's arithmetic: (se, dof, t, p) per class, variance moderated."""
    na, nb, k = len(a), len(b), a.shape[1]
    diff = a.mean(0) - b.mean(0)
    d = na + nb - 2
    s2 = ((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / d
    s2[(np.ptp(a, 0) == 0) & (np.ptp(b, 0) == 0)] = 0.0  # rounding leaves ~1e-32, which would skew the prior
    d0, s0 = _variance_prior(s2, d)
    moderated = s2 if d0 == 0 else np.full(k, s0) if math.isinf(d0) else (d0 * s0 + d * s2) / (d0 + d)
    own = s2 >= moderated  # these classes keep their own variance and degrees of freedom
    # the prior is itself estimated from the k classes: no more than their k * d degrees of freedom
    dof = np.where(own, d, min(d + d0, k * d))
    se = np.sqrt(np.where(own, s2, moderated) * (1 / na + 1 / nb))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se
    return se, dof, t, np.minimum(1.0, 2 * _scipy().t.sf(np.abs(t), dof))


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (what statsmodels' multipletests gives), in numpy."""
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


@functools.lru_cache(maxsize=64)
def _per_class_power(seed_sd: float, seeds: int, effect: float, images: int, studies: int, base: tuple,
                     alpha: float, seed: int) -> float:
    return per_class_power(seed_sd, seeds, effect, images, studies, base, alpha, seed, cached=False)


def per_class_power(seed_sd: float, seeds: int, effect: float, images: int = 1000, studies: int = 1000,
                    base: Sequence[float] | None = None, alpha: float = 0.05, seed: int = 0,
                    cached: bool = True) -> float:
    """The chance that `per_class_over_seeds` stars one class `effect` better (a
    fraction), simulated: 10 classes of `images` test images, each seed moving each
    class's accuracy by N(0, seed_sd), then the images drawn (binomial); Holm over the
    classes. bench/per_class_error.py runs the same model on null arms."""
    base = np.asarray(base if base is not None else np.linspace(0.55, 0.85, 10))
    if cached:  # the same study renders its report more than once: inputs rounded, the figure kept
        return _per_class_power(round(seed_sd, 3), seeds, effect, images, studies, tuple(np.round(base, 2)), alpha,
                                seed)
    rng = np.random.default_rng(seed)
    lift = np.zeros(base.size)
    lift[base.size // 2] = effect

    def arm(shift):
        p = np.clip(base + shift + rng.normal(0, seed_sd, (seeds, base.size)), 0, 1)
        return rng.binomial(images, p) / images

    hits = 0
    for _ in range(studies):  # per_class_over_seeds' own arithmetic, without building its results
        p = np.nan_to_num(_class_tests(arm(lift), arm(0.0))[3], nan=1.0)
        hits += _holm(p)[base.size // 2] < alpha
    return hits / studies


def _variance_prior(s2: np.ndarray, d: int) -> tuple[float, float]:
    """The prior (degrees of freedom d0, scale s0^2) of the classes' variances, each
    with d degrees of freedom: Smyth's (2004) moment estimates on log variances. d0
    is 0 (no pooling) with fewer than 3 classes with spread, inf where the variances
    vary no more than chance alone would make them."""
    from scipy.special import digamma, polygamma

    s2 = s2[s2 > 0]
    if len(s2) < 3:
        return 0.0, 0.0
    e = np.log(s2) - digamma(d / 2) + math.log(d / 2)
    excess = float(e.var(ddof=1) - polygamma(1, d / 2))
    if excess <= 0:
        return math.inf, float(np.exp(e.mean()))
    d0 = 2 * _trigamma_inverse(excess)
    return d0, float(np.exp(e.mean() + digamma(d0 / 2) - math.log(d0 / 2)))


def _trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x (Smyth's Newton iteration, as limma's trigammaInverse)."""
    from scipy.special import polygamma

    if x > 1e7:
        return 1 / math.sqrt(x)
    if x < 1e-6:
        return 1 / x
    y = 0.5 + 1 / x
    for _ in range(50):
        tri = float(polygamma(1, y))
        step = tri * (1 - tri / x) / float(polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


# --------------------------------------------------------------------------- two arms, per image


def mcnemar(correct_a, correct_b) -> McNemar:
    """Exact McNemar test on paired per-image correctness of two models
    (statsmodels' `mcnemar(table, exact=True)`: the binomial test on the
    discordant images); with no discordant images, p = 1."""
    from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

    x = _correctness(correct_a, "correct_a", (1,))
    y = _correctness(correct_b, "correct_b", (1,))
    if x.shape != y.shape:
        raise StatsError(f"correct_a and correct_b must pair the same images, got {x.size} and {y.size}")
    b01 = int(np.count_nonzero(~x & y))
    b10 = int(np.count_nonzero(x & ~y))
    p = 1.0 if b01 + b10 == 0 else float(_mcnemar([[0, b10], [b01, 0]], exact=True).pvalue)
    return McNemar(n=int(x.size), b01=b01, b10=b10, p=min(1.0, p))


def _per_image(correct, name: str) -> tuple[np.ndarray, int]:
    """Per-image accuracy averaged over seeds (rows), and the number of seeds."""
    x = _correctness(correct, name, (1, 2))
    x = x[None, :] if x.ndim == 1 else x
    return x.mean(axis=0), int(x.shape[0])


def _resample_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `d` over n_resamples draws of len(d) indices with replacement, in chunks."""
    n = d.size
    chunk = max(1, _CHUNK_ELEMENTS // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = d[idx].mean(axis=1)
    return out


def _percentile_interval(estimate: float, draws: np.ndarray, confidence: float) -> Interval:
    low, high = np.quantile(draws, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    return Interval(estimate=estimate, low=float(low), high=float(high), confidence=confidence)


def _bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p: 2 * min(P(diff <= 0), P(diff >= 0)), capped at 1."""
    return float(min(1.0, 2.0 * min(np.mean(draws <= 0), np.mean(draws >= 0))))


def paired_bootstrap(correct_a, correct_b, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0, groups=None) -> Bootstrap:
    """Paired bootstrap over test images of the accuracy difference a - b.

    Method: correctness may be 1-D (images) or 2-D (seeds x images); each arm is
    first averaged over its seeds per image, d_i = acc_a(i) - acc_b(i). Images are
    resampled with replacement (numpy default_rng(seed)), keeping a and b paired;
    the estimate is mean(d), the plain accuracy difference. CI: percentile
    interval of the resampled means. p: 2 * min(P(diff <= 0), P(diff >= 0)),
    capped at 1; p = 0 only says p < 1/n_resamples.

    With `groups` (one class label per image) the resampling is stratified:
    each class is resampled within itself, keeping its size, so every resample
    has every class. The overall difference of a resample is the size-weighted
    mean of its class means; each class also gets its own estimate, CI and p.

    What it answers: whether these trained models differ on this test set. The
    seeds are averaged away, so it says nothing about training the recipe again
    (that is `welch` and `per_class_over_seeds`).
    """
    c = _check_confidence(confidence)
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise StatsError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    n_resamples = int(n_resamples)
    pa, sa = _per_image(correct_a, "correct_a")
    pb, sb = _per_image(correct_b, "correct_b")
    if pa.size != pb.size:
        raise StatsError(f"correct_a and correct_b must pair the same images, got {pa.size} and {pb.size}")
    d = pa - pb
    estimate = float(d.mean())
    rng = np.random.default_rng(seed)
    if groups is None:
        draws, per_group = _resample_means(d, n_resamples, rng), ()
    else:
        draws, per_group = _stratified(d, groups, n_resamples, c, rng)
    return Bootstrap(n_images=int(d.size), n_seeds_a=sa, n_seeds_b=sb, acc_a=float(pa.mean()),
                     acc_b=float(pb.mean()), diff=_percentile_interval(estimate, draws, c), p=_bootstrap_p(draws),
                     n_resamples=n_resamples, seed=int(seed), stratified=groups is not None, groups=per_group)


def _stratified(d: np.ndarray, groups, n_resamples: int, confidence: float,
                rng: np.random.Generator) -> tuple[np.ndarray, tuple[GroupDiff, ...]]:
    """Resample within each group; overall draws and one GroupDiff per group (sorted labels)."""
    g = np.asarray(groups)
    if g.shape != d.shape:
        raise StatsError(f"groups must give one label per image: {d.size} images, got shape {g.shape}")
    overall = np.zeros(n_resamples)
    results = []
    for label in np.unique(g):
        dg = d[g == label]
        draws = _resample_means(dg, n_resamples, rng)
        overall += draws * (dg.size / d.size)  # size-weighted mean of the class means
        est = float(dg.mean())
        json_label = int(label) if isinstance(label, (int, np.integer)) else str(label)  # numpy ints as int
        results.append(GroupDiff(group=json_label, n=int(dg.size),
                                 diff=_percentile_interval(est, draws, confidence), p=_bootstrap_p(draws)))
    return overall, tuple(results)


# --------------------------------------------------------------------------- the rule and the words


def significant(p: float | None, alpha: float) -> bool:
    """The one significance rule: p < alpha, with p the adjusted p whenever a
    comparison is one of several. An undefined p is never significant."""
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if p is None:
        return False
    if math.isnan(p):
        raise StatsError("p is NaN")
    return p < alpha


def format_p(p: float | None, alpha: float = 0.05) -> str:
    """The one p format: '< 0.001', else two significant digits ('0.003', '0.25'),
    three where two would round onto alpha (0.0496 must not read '0.05' beside
    'significant'); 'n/a' when undefined."""
    if p is None:
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    s = f"{p:.2g}"
    if float(s) == alpha and p != alpha:
        s = f"{p:.3g}"
    return s


def p_phrase(p: float | None, alpha: float = 0.05) -> str:
    """'p = 0.003', 'p < 0.001', 'p n/a'."""
    text = format_p(p, alpha)
    return f"p {text}" if text.startswith("<") or text == "n/a" else f"p = {text}"


def points(fraction: float | None, signed: bool = True) -> str:
    """A fraction as points with 2 decimals: 0.0184 -> '+1.84', -0.002 -> '-0.20'."""
    if fraction is None:
        return "n/a"
    x = round(100.0 * fraction, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not signed:
        return f"{x:.2f}"
    if x == 0.0:
        return "0.00"
    return f"{'+' if x > 0 else MINUS}{abs(x):.2f}"


def _with_interval(diff: Interval, unadjusted: bool = False) -> str:
    """'+1.84 points (95% CI +0.90 to +2.80)'; 'unadjusted 95% CI' beside an adjusted p."""
    which = "unadjusted " if unadjusted else ""
    return (f"{points(diff.estimate)} points ({which}{diff.confidence * 100:g}% CI {points(diff.low)} to "
            f"{points(diff.high)})")


def described(diff: Interval, reason: str | None, why: str) -> str:
    """A difference that is shown, never tested, e.g. "+1.84 points (95% CI +0.90 to
    +2.80), descriptive only: the checkpoint was chosen on the test set"."""
    if not diff.defined:
        why = (reason or SINGLE_SEED).split(":")[0]
        return f"{points(diff.estimate)} points, no interval ({why}); descriptive only"
    return f"{_with_interval(diff)}, descriptive only: {why}"


def verdict(diff: Interval, p: float | None, alpha: float, reason: str | None = None,
            adjusted: str | None = None) -> str:
    """The comparison in plain words, e.g.
    "+1.84 points (95% CI +0.90 to +2.80), significant (Holm-adjusted p = 0.006)".

    `p` is the p the rule decides on (`adjusted` names the correction, if any).
    Without an interval there is no finding: "<reason>: no interval; not a finding".
    """
    if not diff.defined:
        why = (reason or SINGLE_SEED).split(":")[0]
        return f"{why}: no interval; not a finding"
    word = "significant" if significant(p, alpha) else "not significant"
    which = f"{adjusted}-adjusted " if adjusted else ""
    return f"{_with_interval(diff, bool(adjusted))}, {word} ({which}{p_phrase(p, alpha)})"
