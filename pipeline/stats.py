"""Statistics for multi-seed ablation results: summaries, comparisons, verdicts.

Pure functions over plain numbers (numpy + scipy.stats only, no I/O). Every
result is a frozen dataclass whose `as_dict()` is JSON-able (floats, ints, str,
None), so stages can write it straight into metrics files and MLflow.

Conventions:
- accuracies are fractions in [0, 1]; a "point" is 100 x a fraction;
- every difference is `a - b` (candidate minus baseline): positive means a is better;
- an undefined quantity is None, never NaN, and comes with a reason in words;
- bad input (empty, NaN, wrong shape) raises `StatsError`, a ValueError whose
  message is one line (it is also a PipelineError, so stage `main()`s print it
  as `error: ...` and exit 2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as st

from pipeline.errors import PipelineError

SINGLE_SEED = "single seed: no confidence interval"
ZERO_VARIANCE = "zero variance in both groups: the t-test is undefined"
NEGLIGIBLE_SPREAD = "spread too small to represent next to the values: t is infinite, p = 0"
MINUS = "-"  # ASCII hyphen-minus, not U+2212: greppable, and safe in logs, CSV and terminals

# Bootstrap draws are made in chunks of at most this many indices (8 bytes each:
# 32 MiB), so 2000 resamples of a 10,000-image test set never need 160 MB at once.
_CHUNK_ELEMENTS = 1 << 22


class StatsError(PipelineError, ValueError):
    """Input the statistics cannot be computed from; the message is one line."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval; low/high are None when undefined."""

    estimate: float
    low: float | None
    high: float | None
    confidence: float

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    def contains(self, value: float) -> bool:
        return self.defined and self.low <= value <= self.high

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with its Student-t interval (`ci.estimate` is the mean)."""

    n: int
    mean: float
    std: float | None  # sample std (ddof=1); None for n = 1, where it is undefined
    ci: Interval
    warning: str | None = None

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "low": self.ci.low,
                "high": self.ci.high, "confidence": self.ci.confidence, "warning": self.warning}


@dataclass(frozen=True)
class Welch:
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
    def estimate(self) -> float:
        return self.ci.estimate

    def as_dict(self) -> dict:
        return {"n_a": self.n_a, "n_b": self.n_b, "mean_a": self.mean_a, "mean_b": self.mean_b,
                "diff": self.ci.estimate, "low": self.ci.low, "high": self.ci.high,
                "confidence": self.ci.confidence, "dof": self.dof, "t": self.t, "p": self.p,
                "reason": self.reason}


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on paired per-image correctness."""

    n: int  # images
    b01: int  # a wrong, b right
    b10: int  # a right, b wrong
    p: float  # two-sided exact binomial p on the discordant pairs

    @property
    def discordant(self) -> int:
        return self.b01 + self.b10

    def as_dict(self) -> dict:
        return {"n": self.n, "b01": self.b01, "b10": self.b10,
                "discordant": self.discordant, "p": self.p}


@dataclass(frozen=True)
class GroupDiff:
    """Accuracy difference a - b within one group (class) of images."""

    group: int | str
    n: int  # images in the group
    diff: Interval
    p: float

    def as_dict(self) -> dict:
        return {"group": self.group, "n": self.n, "diff": self.diff.estimate,
                "low": self.diff.low, "high": self.diff.high,
                "confidence": self.diff.confidence, "p": self.p}


@dataclass(frozen=True)
class Bootstrap:
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

    def as_dict(self) -> dict:
        return {"n_images": self.n_images, "n_seeds_a": self.n_seeds_a,
                "n_seeds_b": self.n_seeds_b, "acc_a": self.acc_a, "acc_b": self.acc_b,
                "diff": self.diff.estimate, "low": self.diff.low, "high": self.diff.high,
                "confidence": self.diff.confidence, "p": self.p,
                "n_resamples": self.n_resamples, "seed": self.seed,
                "stratified": self.stratified, "groups": [g.as_dict() for g in self.groups]}


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


def _pow2_scale(*arrays: np.ndarray) -> float:
    """A power of two near the largest |value|: dividing by it is exact and keeps
    variances away from underflow (values ~1e-188) and overflow (~1e300)."""
    top = max(float(np.max(np.abs(a))) for a in arrays)
    return math.ldexp(1.0, math.frexp(top)[1]) if top > 0 else 1.0


def _t_quantile(confidence: float, dof: float) -> float:
    """Two-sided Student-t critical value: t((1 + confidence) / 2, dof)."""
    return float(st.t.ppf(0.5 + confidence / 2.0, dof))


# --------------------------------------------------------------------------- one arm


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof=1) and Student-t CI of the mean over seeds.

    Method: mean +/- t((1+c)/2, n-1) * s / sqrt(n). With one seed the spread is
    unknown, so std and the interval are None and `warning` says so.
    """
    c = _check_confidence(confidence)
    x = _values(values)
    n, mean = int(x.size), _mean(x)
    if n == 1:
        return Summary(n, mean, None, Interval(mean, None, None, c), SINGLE_SEED)
    scale = _pow2_scale(x)  # std of x/scale, times scale: no underflow for tiny values
    std = 0.0 if np.ptp(x) == 0 else float((x / scale).std(ddof=1)) * scale
    half = _t_quantile(c, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, Interval(mean, mean - half, mean + half, c))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean (see `summarize`)."""
    return summarize(values, confidence).ci


# --------------------------------------------------------------------------- two arms, over seeds


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b) over seeds.

    Method: se = sqrt(va/na + vb/nb) (sample variances, ddof=1); t = diff / se;
    Welch-Satterthwaite dof = se^4 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1));
    two-sided p = 2 * sf(|t|, dof), the same p as
    `scipy.stats.ttest_ind(a, b, equal_var=False)`; CI = diff +/- t((1+c)/2, dof) * se.

    Degenerate cases, reported with `reason` rather than a made-up number:
    - a group with one value: no spread estimate, so dof, t, p and the CI are None.
    - every value identical within both groups (se = 0): t = diff/0. If the means
      are equal the observed difference is exactly 0, and p = 1 whatever the true
      spread is, so p = 1 and t = 0. If they differ, p could be anything between
      0 and 1 depending on the spread that the seeds failed to show (identical
      results usually mean the seed does not reach the run), so p is None rather
      than scipy's 0. The CI needs that spread in both cases, so it is None.
    - spreads so small next to the values (below ~1e-300 relative) that no
      variance is representable: the limit t = +/-inf, so p = 0, CI = [diff, diff].
    """
    c = _check_confidence(confidence)
    x, y = _values(a, "a"), _values(b, "b")
    na, nb = int(x.size), int(y.size)
    ma, mb = _mean(x), _mean(y)
    diff = ma - mb
    if na < 2 or nb < 2:
        return Welch(na, nb, ma, mb, Interval(diff, None, None, c), None, None, None, SINGLE_SEED)
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # exact test: np.var of equal floats may not be 0
        p, t = (1.0, 0.0) if x[0] == y[0] else (None, None)
        return Welch(na, nb, ma, mb, Interval(diff, None, None, c), None, t, p, ZERO_VARIANCE)
    # t and dof do not change when both groups are divided by the same number; a
    # power of two divides exactly and keeps the variances representable
    s = _pow2_scale(x, y)
    qa, qb = (x / s).var(ddof=1) / na, (y / s).var(ddof=1) / nb
    se = math.sqrt(qa + qb)  # in units of s
    if se == 0.0:  # spreads below 1e-300 of the values' size: no representable t
        return Welch(na, nb, ma, mb, Interval(diff, diff, diff, c), None, None, 0.0, NEGLIGIBLE_SPREAD)
    dof = float((qa + qb) ** 2 / (qa**2 / (na - 1) + qb**2 / (nb - 1)))
    t = (ma / s - mb / s) / se
    p = float(min(1.0, 2.0 * st.t.sf(abs(t), dof)))
    half = _t_quantile(c, dof) * se * s
    return Welch(na, nb, ma, mb, Interval(diff, diff - half, diff + half, c), dof, float(t), p)


# --------------------------------------------------------------------------- two arms, per image


def mcnemar(correct_a, correct_b) -> McNemar:
    """Exact McNemar test on paired per-image correctness of two models.

    Method: b01 = #(a wrong, b right), b10 = #(a right, b wrong); under H0 each
    discordant image is equally likely either way, so p is the exact two-sided
    binomial test `scipy.stats.binomtest(b10, b01 + b10, 0.5).pvalue`; with no
    discordant pairs there is no evidence of a difference and p = 1.
    """
    x = _correctness(correct_a, "correct_a", (1,))
    y = _correctness(correct_b, "correct_b", (1,))
    if x.shape != y.shape:
        raise StatsError(f"correct_a and correct_b must pair the same images, got {x.size} and {y.size}")
    b01 = int(np.count_nonzero(~x & y))
    b10 = int(np.count_nonzero(x & ~y))
    p = 1.0 if b01 + b10 == 0 else float(st.binomtest(b10, b01 + b10, 0.5).pvalue)
    return McNemar(int(x.size), b01, b10, p)


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
    return Interval(estimate, float(low), float(high), confidence)


def _bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided bootstrap p: 2 * min(P(diff <= 0), P(diff >= 0)), capped at 1."""
    return float(min(1.0, 2.0 * min(np.mean(draws <= 0), np.mean(draws >= 0))))


def _group_label(g) -> int | str:
    """JSON-able label: numpy ints become int, anything else str."""
    return int(g) if isinstance(g, (int, np.integer)) else str(g)


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
    has every class and per-class differences are always defined. The overall
    difference of a resample is then the size-weighted mean of its class means,
    and each class gets its own estimate, percentile CI and p from the same
    resamples. Stratifying holds the class sizes fixed, as they are in the
    CIFAR-10 test set (1000 per class), so the overall CI can differ a little
    from the unstratified one for the same seed.
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
    return Bootstrap(int(d.size), sa, sb, float(pa.mean()), float(pb.mean()),
                     _percentile_interval(estimate, draws, c), _bootstrap_p(draws),
                     n_resamples, int(seed), groups is not None, per_group)


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
        results.append(GroupDiff(_group_label(label), int(dg.size),
                                 _percentile_interval(est, draws, confidence), _bootstrap_p(draws)))
    return overall, tuple(results)


# --------------------------------------------------------------------------- decisions and words


def significant(interval_or_p: Interval | float | None, alpha: float = 0.05) -> bool:
    """Is the difference significant at level alpha?

    Method: a p-value is significant when p < alpha; an Interval when its
    (1 - alpha) confidence interval excludes 0. An undefined p or interval is
    never significant. An interval at another confidence level cannot answer
    for this alpha, so it is refused rather than silently misread.
    """
    if not 0.0 < alpha < 1.0:
        raise StatsError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if interval_or_p is None:
        return False
    if isinstance(interval_or_p, Interval):
        iv = interval_or_p
        if not math.isclose(iv.confidence, 1.0 - alpha, abs_tol=1e-9):
            raise StatsError(f"a {iv.confidence:g} interval cannot decide at alpha={alpha:g}; "
                             f"compute it at confidence {1 - alpha:g}")
        return iv.defined and (iv.low > 0.0 or iv.high < 0.0)
    p = float(interval_or_p)
    if math.isnan(p):
        raise StatsError("p is NaN")
    return p < alpha


def _points(fraction: float) -> str:
    """A fraction as signed points with 2 decimals: 0.0184 -> '+1.84', -0.002 -> '-0.20'."""
    x = round(100.0 * fraction, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    if x == 0.0:
        return "0.00"
    return f"{'+' if x > 0 else MINUS}{abs(x):.2f}"


def _p_text(p: float, alpha: float) -> str:
    """p with two significant digits; '< 0.001' below that; a third digit if rounding hits alpha."""
    if p < 0.001:
        return "< 0.001"
    s = f"{p:.2g}"
    if float(s) == alpha and p != alpha:  # 0.0496 must not read "0.05" next to "significant"
        s = f"{p:.3g}"
    return f"= {s}"


def verdict(diff: Interval, p: float | None, alpha: float = 0.05, reason: str = "single seed") -> str:
    """The comparison in plain words, e.g.
    "+1.84 points (95% CI +0.90 to +2.80), significant (p = 0.003)".

    Method: "points" are 100 x the accuracy fraction, signs always shown (ASCII
    '-'), two decimals. Significance is p < alpha when p is given, otherwise the
    CI excluding 0. Without an interval there is no finding:
    "<reason>: no interval; not a finding" (reason defaults to "single seed";
    pass `Welch.reason` for the zero-variance case).
    """
    if not diff.defined:
        why = reason.split(":")[0] if reason else "single seed"
        return f"{why}: no interval; not a finding"
    head = (f"{_points(diff.estimate)} points ({diff.confidence * 100:g}% CI "
            f"{_points(diff.low)} to {_points(diff.high)})")
    if p is None:
        word = "significant" if diff.low > 0 or diff.high < 0 else "not significant"
        return f"{head}, {word} (CI {'excludes' if word == 'significant' else 'includes'} 0)"
    word = "significant" if significant(p, alpha) else "not significant"
    return f"{head}, {word} (p {_p_text(float(p), alpha)})"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Method: sort the m p-values ascending, adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) * p_(j)) (1-based); the running max keeps them monotone.
    Use it for many arms against one baseline. A None (untestable comparison)
    stays None but still counts in m: it was a hypothesis of the study, and
    dropping it would make the correction less conservative than planned.
    """
    m = len(pvalues)
    known = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None]
    for _, p in known:
        if not 0.0 <= p <= 1.0:  # also refuses NaN
            raise StatsError(f"p-values must lie in [0, 1], got {p!r}")
    out: list[float | None] = [None] * m
    running = 0.0
    for rank, (i, p) in enumerate(sorted(known, key=lambda ip: ip[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
