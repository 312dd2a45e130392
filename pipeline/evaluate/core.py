"""The evaluate stage's pure core: one checkpoint's numbers from its predictions,
and every statistic across seeds and against the baseline (pipeline.core.stats)."""
from __future__ import annotations

import numpy as np

from pipeline.core import stats
from pipeline.core.dataset import CLASSES
from pipeline.evaluate.contracts import (
    LAST_CHECKPOINT,
    ArmSummary,
    CheckpointEval,
    CheckpointSummary,
    Comparison,
    Confusion,
    Effect,
    Family,
    Interaction,
    ModelFacts,
    Predictions,
    StudySummary,
)

CORRECTION = "holm"  # family-wise: no spurious claim in the study's family, nor among one arm's ten classes
TARGET_DIFFERENCE = 0.01  # the difference (1 point) whose seed count the power analysis states
BEST_UNTESTED = {"test": "the checkpoint was chosen on the test set",
                 "validation": "chosen on validation; the study's hypotheses are tested at the last checkpoint"}
NOT_A_HYPOTHESIS = ("not a hypothesis of the study: this arm differs from the baseline in more than one factor "
                    "(the effects within the other factors are tested)")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: rows are true classes, columns predictions."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def top_confusions(cm: np.ndarray, n: int) -> list[Confusion]:
    """The n largest off-diagonal cells: images of `true` predicted as `pred`."""
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    rows = []
    for flat in np.argsort(off, axis=None, kind="stable")[::-1][:n]:
        t, p = divmod(int(flat), off.shape[0])
        if off[t, p] == 0:
            break
        rows.append(Confusion(true=CLASSES[t], pred=CLASSES[p], count=int(off[t, p]),
                              rate=float(off[t, p] / max(np.asarray(cm)[t].sum(), 1))))
    return rows


def checkpoint_eval(*, arm: str, seed: int, which: str, epoch: int, test_preds: np.ndarray, test_y: np.ndarray,
                    test_loss: float, train_acc: float, train_loss: float, running_acc: float,
                    top_n: int) -> CheckpointEval:
    """The numbers of one evaluated checkpoint."""
    cm = confusion(test_y, test_preds, len(CLASSES))
    test_acc = float((test_preds == test_y).mean())
    return CheckpointEval(arm=arm, seed=seed, checkpoint=which, epoch=epoch, test_acc=test_acc, test_loss=test_loss,
                        train_acc_clean=train_acc, train_loss_clean=train_loss, train_acc_running=running_acc,
                        gap_clean=train_acc - test_acc, gap_running=running_acc - test_acc,
                        per_class_acc=(np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist(), confusion=cm.tolist(),
                        top_confusions=top_confusions(cm, top_n))


def _arm_summary(rows: list[CheckpointEval], conf: float, top_n: int) -> ArmSummary:
    cm = np.sum([r.confusion for r in rows], axis=0)
    return ArmSummary(
        **{key: stats.mean_ci([getattr(r, key) for r in rows], conf)
           for key in ("test_acc", "train_acc_clean", "train_acc_running", "gap_clean", "gap_running")},
        per_class_acc=np.mean([r.per_class_acc for r in rows], axis=0).tolist(),
        confusion=cm.tolist(), top_confusions=top_confusions(cm, top_n))


def factors(axes: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The axes that vary across the arms, each with its values in the arms' order."""
    out: dict[str, list[str]] = {}
    for values in axes.values():
        for k, v in values.items():
            out.setdefault(k, [])
            if v not in out[k]:
                out[k].append(v)
    return {k: v for k, v in out.items() if len(v) > 1}


def factor_effects(rows: dict[str, list[CheckpointEval]], axes: dict[str, dict[str, str]], baseline: str,
                   confidence: float, acc: dict[str, list[float]]) -> tuple[list[Effect], list[Interaction]]:
    """In a study with two or more axes: each factor's values against the baseline's
    value of it, within every combination of the other factors (Welch over seeds,
    `acc` and clean gap), and for every two factors whether one's effect
    differs between the other's values (a Welch contrast of four cells). Their p
    are adjusted as members of the study's one family (`compare`): here p_adjusted
    is None and the verdict empty. With one axis the comparisons with the baseline
    already say it all: nothing here."""
    varying = factors(axes)
    if len(varying) < 2:
        return [], []
    cell = {tuple(sorted((k, axes[a][k]) for k in varying)): a for a in axes}

    def arm_at(values: dict[str, str]) -> str | None:
        return cell.get(tuple(sorted(values.items())))

    gap = {a: [r.gap_clean for r in rows[a]] for a in rows}
    ref = {k: axes[baseline][k] for k in varying}
    effects: list[Effect] = []
    for factor, values in varying.items():
        for at_combo in _combinations({o: vs for o, vs in varying.items() if o != factor}):
            ref_arm = arm_at({**at_combo, factor: ref[factor]})
            for v in values:
                arm = arm_at({**at_combo, factor: v})
                if v == ref[factor] or arm is None or ref_arm is None:
                    continue
                effects.append(Effect(factor=factor, value=v, reference=ref[factor], at=at_combo, arm=arm,
                                      reference_arm=ref_arm, test_acc=stats.welch(acc[arm], acc[ref_arm], confidence),
                                      gap_clean=stats.welch(gap[arm], gap[ref_arm], confidence)))
    interactions: list[Interaction] = []
    names = list(varying)
    for i, factor in enumerate(names):
        for other in names[i + 1:]:
            rest = {o: varying[o] for o in names if o not in (factor, other)}
            for at_combo in _combinations(rest):
                for v in varying[factor]:
                    for ov in varying[other]:
                        if v == ref[factor] or ov == ref[other]:
                            continue
                        four = [arm_at({**at_combo, factor: fv, other: ow})
                                for fv, ow in ((v, ov), (ref[factor], ov), (v, ref[other]), (ref[factor], ref[other]))]
                        if None in four:
                            continue
                        c = stats.contrast([acc[a] for a in four], (1, -1, -1, 1), confidence)
                        interactions.append(Interaction(factor=factor, value=v, reference=ref[factor], other=other,
                                                        other_value=ov, other_reference=ref[other], at=at_combo,
                                                        contrast=c))
    return effects, interactions


def _combinations(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    import itertools

    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def interaction_label(i: Interaction) -> str:
    at = "".join(f", {k}={v}" for k, v in i.at.items())
    return (f"{i.factor}={i.value} vs {i.reference}, by {i.other}={i.other_value} vs {i.other_reference}"
            f"{at} (interaction)")


def families(keys: list, effects: list[Effect], primary: str | None) -> dict[str, list]:
    """The study's hypotheses in their families: with a primary factor (a crossed study's
    report.primary), its effects within the others are the primary family and every
    other effect and interaction the secondary one; otherwise one family."""
    if primary is None or not effects:
        return {"the study's": keys}
    factor = {(e.arm, e.reference_arm): e.factor for e in effects}
    first = [k for k in keys if factor.get(k) == primary]
    return {"primary": first, "secondary": [k for k in keys if k not in first]}


def compare(evals: dict[tuple[str, int, str], tuple[CheckpointEval, Predictions]], arms: list[str], seeds: list[int],
            baseline: str, confidence: float, bootstrap: int, top_n: int, labels: np.ndarray,
            facts: dict[str, ModelFacts], axes: dict[str, dict[str, str]] | None = None,
            best_on: str = "test", estimates: dict[str, list[float]] | None = None,
            estimate: str = LAST_CHECKPOINT, primary: str | None = None,
            margin: float | None = None) -> StudySummary:
    """Statistics across seeds per arm, and each arm against the baseline.

    The hypotheses are tested at the last checkpoint, the one fixed before training,
    on each run's `estimate` (`estimates`: arm -> its seeds' values, e.g. the mean test
    accuracy of the last k epochs; None: the last checkpoint's test accuracy).
    The best checkpoint's differences are described (with intervals) and never
    tested: chosen on the test set (`best_on` "test") they are optimistic; chosen on
    validation ("validation"), a second p for the same hypothesis would still
    double its chances. The study's hypotheses are fixed by its design and params
    before any result is seen: with one axis, every arm against the baseline; with
    several, every factor's effect within each combination of the others and every
    interaction (an arm that differs from the baseline in more than one factor is
    described, not tested: nobody asks that question). Welch's t over seeds on the
    estimate, Holm within each family (`families`): one adjusted p per hypothesis,
    quoted wherever it appears. With `margin` (points), each tested difference is
    also tested for equivalence (TOST), its p adjusted with Holm within the same
    family. Power is stated at the threshold a comparison faces: Holm's first, alpha
    over its family's size. Exploratory, each set apart: per class (a t over seeds
    whose variance is raised to the classes' common one where below it, Holm over the
    classes), and over test images (do these trained models differ?) the stratified
    paired bootstrap and McNemar per seed.
    """
    alpha = 1 - confidence
    last = {a: [evals[(a, s, "last")][0] for s in seeds] for a in arms}
    acc = estimates or {a: [r.test_acc for r in last[a]] for a in arms}
    others = [a for a in arms if a != baseline]
    effects, interactions = factor_effects(last, axes or {}, baseline, confidence, acc)
    # the hypotheses: each pair of arms once (an effect whose reference is the baseline is that arm's comparison)
    if effects or interactions:
        pairs = {}
        for e in effects:
            pairs.setdefault((e.arm, e.reference_arm), e.test_acc)
    else:
        pairs = {(a, baseline): stats.welch(acc[a], acc[baseline], confidence) for a in others}
    keys = list(pairs) + list(range(len(interactions)))  # a pair of arms, or an interaction's index
    label = {k: (interaction_label(interactions[k]) if isinstance(k, int) else
                 next((e.label for e in effects if (e.arm, e.reference_arm) == k), f"{k[0]} vs {k[1]}"))
             for k in keys}
    grouped = {name: ks for name, ks in families(keys, effects, primary).items() if ks}
    fam = {k: name for name, ks in grouped.items() for k in ks}
    size = {name: len(ks) for name, ks in grouped.items()}
    q, qe, tost = {}, {}, {}
    for name, ks in grouped.items():
        q.update(zip(ks, stats.adjust([pairs[k].p if isinstance(k, tuple) else interactions[k].contrast.p
                                       for k in ks], CORRECTION)))
        if margin is not None:
            for k in ks:
                if isinstance(k, tuple):
                    tost[k] = stats.tost(acc[k[0]], acc[k[1]], margin / 100, alpha)
            tested = [k for k in ks if k in tost]
            qe.update(zip(tested, stats.adjust([tost[k].p for k in tested], CORRECTION)))

    def decided(interval, reason, key):
        word = "Holm" if size[fam[key]] > 1 else None
        out = {"family": fam[key], "p_adjusted": q[key],
               "verdict": stats.verdict(interval, q[key], alpha, reason, word)}
        if key in tost:
            out.update(equivalence=tost[key], equivalence_p_adjusted=qe[key],
                       answer=stats.equivalence_verdict(qe[key], q[key], alpha))
        return out

    effects = [e.model_copy(update=decided(e.test_acc.ci, e.test_acc.reason, (e.arm, e.reference_arm)))
               for e in effects]
    interactions = [i.model_copy(update=decided(i.contrast.ci, i.contrast.reason, n))
                    for n, i in enumerate(interactions)]
    out = {}
    for which in ("last", "best"):
        if not all((a, s, which) in evals for a in arms for s in seeds):
            continue
        rows = {a: [evals[(a, s, which)][0] for s in seeds] for a in arms}
        base_correct = np.stack([evals[(baseline, s, which)][1].correct for s in seeds])
        base_class = np.array([r.per_class_acc for r in rows[baseline]])
        tested = which == "last"
        at = acc if tested else {a: [r.test_acc for r in rows[a]] for a in arms}
        comparisons = {}
        for a in others:
            correct = np.stack([evals[(a, s, which)][1].correct for s in seeds])
            key = (a, baseline)
            w = pairs[key] if tested and key in pairs else stats.welch(at[a], at[baseline], confidence)
            if tested and key in pairs:
                said = decided(w.ci, w.reason, key)
            else:
                said = {"verdict": stats.described(w.ci, w.reason, BEST_UNTESTED[best_on] if not tested
                                                   else NOT_A_HYPOTHESIS)}
            faced = alpha / size[fam[key]] if key in fam else alpha
            comparisons[a] = Comparison(
                welch=w, **said,
                power=stats.power(at[a], at[baseline], faced, TARGET_DIFFERENCE),
                per_class=stats.per_class_over_seeds(np.array([r.per_class_acc for r in rows[a]]), base_class,
                                                     confidence, CORRECTION) if tested else (),
                paired_bootstrap=stats.paired_bootstrap(correct, base_correct, n_resamples=bootstrap,
                                                        confidence=confidence, seed=0,
                                                        groups=labels) if tested else None,
                mcnemar_per_seed=[stats.mcnemar(correct[i], base_correct[i]) for i in range(len(seeds))]
                if tested else [])
        out[which] = CheckpointSummary(arms={a: _arm_summary(rows[a], confidence, top_n) for a in arms},
                                       comparisons=comparisons)
    fams = [Family(name=name, hypotheses=[label[k] for k in ks], threshold=alpha / len(ks))
            for name, ks in grouped.items()]
    described = "; ".join(f"{f.name} family of {len(f.hypotheses)}" for f in fams)
    return StudySummary(baseline=baseline, confidence=confidence, family=[h for f in fams for h in f.hypotheses],
                        families=fams, equivalence_margin=margin, best_on=best_on, estimate=estimate,
                        estimates=acc, tested={a: stats.mean_ci(acc[a], confidence) for a in arms},
                        correction=f"{CORRECTION} within each family ({described}), tested on {estimate}; "
                                   f"per class (exploratory), {CORRECTION} over the {len(CLASSES)} classes of each "
                                   f"comparison",
                        seeds=list(seeds), classes=list(CLASSES), checkpoints=out, model_facts=facts,
                        effects=effects, interactions=interactions)


def headline(summary: StudySummary, arms: list[str], intervals: bool = False) -> dict[str, float | int]:
    """The study's answer as flat metrics named by arm, so that a name means the same
    arm in every experiment (metrics/study.json, which `dvc exp show` lists, and the
    MLflow parent run): per arm `<arm>/test_acc` (mean over seeds of the tested accuracy),
    and per arm compared with the baseline `<arm>/delta` (arm - baseline, in points:
    accuracies are in %) and `<arm>/p_adj`, the p the verdict decides on
    (Holm-adjusted within its family), and with an equivalence margin `<arm>/p_equiv`,
    the equivalence test's adjusted p; with `intervals`, the difference's `ci_low` and
    `ci_high` too (kept out of `dvc exp show`'s few columns). A crossed study adds each
    tested effect and interaction under its own name (`aug=standard@dropout=0.5/p_adj`,
    `aug=standard x dropout=0.5/p_adj`): every hypothesis' p, as the report quotes it."""
    last = summary.checkpoints["last"]
    out: dict[str, float | int] = {}

    def tested(name: str, diff, t) -> None:
        out[f"{name}/delta"] = round(100 * diff.estimate, 2)
        if intervals and diff.defined:
            out[f"{name}/ci_low"] = round(100 * diff.low, 2)
            out[f"{name}/ci_high"] = round(100 * diff.high, 2)
        if t.p_adjusted is not None:
            out[f"{name}/p_adj"] = float(f"{t.p_adjusted:.4g}")
        if t.equivalence_p_adjusted is not None:
            out[f"{name}/p_equiv"] = float(f"{t.equivalence_p_adjusted:.4g}")

    for arm in arms:
        out[f"{arm}/test_acc"] = round(100 * summary.accuracy(arm).mean, 2)
        c = last.comparisons.get(arm)
        if c is not None:
            tested(arm, c.welch.ci, c)
    for e in summary.effects:
        tested(f"{e.factor}={e.value}@" + ",".join(f"{k}={v}" for k, v in e.at.items()), e.test_acc.ci, e)
    for i in summary.interactions:
        at = "".join(f"@{k}={v}" for k, v in i.at.items())
        tested(f"{i.factor}={i.value} x {i.other}={i.other_value}{at}", i.contrast.ci, i)
    out["n_seeds"] = len(summary.seeds)
    return out
