"""The report as a model: a pure function from what the earlier stages wrote
(`Inputs`) to sections of blocks whose numbers are already in words. Rendering
(pipeline.report.render) and drawing (pipeline.report.figures) come after.

Every "significant" here comes from `stats.significant` on the p the summary
says to decide on (the Holm-adjusted one when there are several comparisons),
and every p is written by `stats.format_p`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core import stats
from pipeline.core.config import Params
from pipeline.core.contracts import DiagnosticsRecord
from pipeline.core.jobs import HistoryRow
from pipeline.core.study import StudyRecord
from pipeline.evaluate.contracts import LAST_CHECKPOINT, CheckpointEval, Predictions, StudySummary

SECTIONS = ("Headline", "Ablation table", "Learning curves", "Per-class accuracy", "Confusion matrices",
            "Diagnostics", "Galleries", "Model facts", "Provenance")
SINGLE_SEED_WARNING = "1 seed: no confidence interval; not a finding"
GALLERY_SIZE = 16
METRICS = (("train_acc_running", "Train acc (running)"), ("train_acc_clean", "Train acc (clean)"),
           ("test_acc", "Test acc"), ("gap_running", "Gap (running)"), ("gap_clean", "Gap (clean)"))


# --------------------------------------------------------------------------- blocks


@dataclass
class Para:
    parts: list[tuple[str, str]]  # (style, text): style "" plain, "b" bold, "code"
    tone: str | None = None  # good, bad, neutral: a verdict
    kind: str = "p"


@dataclass
class Warn:
    text: str
    kind: str = "warning"


@dataclass
class Heading:
    text: str
    kind: str = "h3"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    num: set[int] = field(default_factory=set)  # right-aligned (numeric) columns
    id: str | None = None
    caption: str | None = None
    kind: str = "table"


@dataclass
class Figure:
    name: str  # figures/<name>.png
    draw: str  # a function of pipeline.report.figures
    args: dict[str, Any]
    alt: str
    caption: str
    kind: str = "figure"


@dataclass
class Code:
    text: str
    lang: str = ""
    kind: str = "code"


@dataclass
class Details:
    summary: str
    blocks: list
    kind: str = "details"


@dataclass
class Section:
    title: str
    id: str
    blocks: list


@dataclass
class Report:
    title: str
    sections: list[Section]
    files: dict[str, str] = field(default_factory=dict)  # name -> text, written beside the pages

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in walk(s.blocks) if isinstance(b, Figure)]


def para(*parts, tone: str | None = None) -> Para:
    return Para([p if isinstance(p, tuple) else ("", p) for p in parts], tone)


def walk(blocks):
    """Every block, descending into details."""
    for b in blocks:
        yield b
        if isinstance(b, Details):
            yield from walk(b.blocks)


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Everything the report shows, as read by pipeline.report.stage."""

    params: Params
    params_text: str
    record: StudyRecord
    summary: StudySummary
    histories: dict[str, dict[int, list[HistoryRow]]]  # arm -> seed -> epochs
    diagnostics: dict[str, DiagnosticsRecord | None]  # arm -> diagnostics of its first seed
    predictions: dict[str, Predictions]  # arm -> its first seed's last checkpoint
    per_seed: list[CheckpointEval]  # every arm x seed x checkpoint evaluated
    filters: dict[str, np.ndarray]  # arm -> first-layer conv weights of its first seed
    test_images: np.ndarray  # the evaluated test images, uint8 (N, 3, 32, 32); may be memory-mapped
    data_name: str  # "CIFAR-10 (JPEG mirror)"
    data_sha256: str
    n_train: int
    tracking: dict[str, str]  # tracking URI, experiment, parent run
    code_version: str
    dvc_experiment: str
    generated: str
    data_encoding: str | None = None  # "JPEG quality 75, 4:2:0 chroma subsampling"; lossy data changes accuracies
    # whether the study's analysis plan came before its results (pipeline.core.analysis.precedence)
    precedence: tuple[str, str] = ("no plan", "no analysis plan")
    plan: str | None = None  # its path, e.g. reports/dropout/plan.yaml
    supersedes: str | None = None  # what earlier reports this one replaces (the plan says)
    withdrawn: str | None = None  # the plan was withdrawn: why, and which runs are void
    family: str | None = None  # the registered p is a larger family's, held by another study (analysis.family_elsewhere)


# --------------------------------------------------------------------------- formatting


def pct(x: float | None) -> str:
    """A fraction as % with 2 decimals: 0.98765 -> '98.77'."""
    return "n/a" if x is None else f"{x * 100:.2f}"


def mean_pm(m: stats.MeanCI) -> str:
    """'98.77 ± 1.02' (mean ± CI half-width, in %), '± n/a' without an interval."""
    return f"{pct(m.mean)} ± {pct(m.ci.half_width)}"


def diff_ci(iv: stats.Interval) -> str:
    """'-1.00 [-3.15, +1.15]' (difference and its CI, in points)."""
    ci = f"[{stats.points(iv.low)}, {stats.points(iv.high)}]" if iv.defined else "[n/a]"
    return f"{stats.points(iv.estimate)} {ci}"


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def si(n: float) -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}"
    return f"{n:g}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# --------------------------------------------------------------------------- the model


@dataclass
class _Ctx:
    inp: Inputs
    arms: list[str]
    baseline: str
    others: list[str]
    seeds: list[int]
    alpha: float
    clabel: str
    adjusted: str | None  # "Holm" when the study's family has several hypotheses

    @property
    def last(self):
        return self.inp.summary.checkpoints["last"]


def build_report(inp: Inputs) -> Report:
    """The report model. Pure: no I/O."""
    s = inp.summary
    arms = list(inp.record.arms)
    others = [a for a in arms if a in s.checkpoints["last"].comparisons]
    ctx = _Ctx(inp, arms, s.baseline, others, list(s.seeds), 1 - s.confidence,
               f"{s.confidence * 100:g}% CI", "Holm" if len(s.family) > 1 else None)
    builders = (_headline, _ablation, _curves, _per_class, _confusion, _diagnostics, _galleries,
                _model_facts, _provenance)
    sections = [Section(f"{i}. {title}", slug(title).lower(), build(ctx))
                for i, (title, build) in enumerate(zip(SECTIONS, builders), 1)]
    return Report(f"Ablation report: {inp.params.study}", sections,
                  {"results.csv": results_csv(inp), "data.json": data_json(inp)})


def data_json(inp: Inputs) -> str:
    """What the study trained and tested on, for an audit: the data, how it was encoded,
    its checksum and the subset the params chose."""
    d = inp.params.data
    return json.dumps({"name": inp.data_name, "encoding": inp.data_encoding, "data_sha256": inp.data_sha256,
                       "training_images": inp.n_train, "test_images": len(next(iter(inp.predictions.values())).label),
                       "train_limit": d.train_limit, "test_limit": d.test_limit, "subset_seed": d.subset_seed,
                       "val_split": d.val_split}, indent=2) + "\n"


RESULT_COLUMNS = ("epoch", "test_acc", "test_loss", "train_acc_clean", "train_loss_clean", "train_acc_running",
                  "gap_clean", "gap_running")


def results_csv(inp: Inputs) -> str:
    """Every evaluated run of the study, one row per arm x seed x checkpoint, with its
    per-class test accuracies and (last checkpoint) the accuracy its hypotheses are
    tested on: what an auditor recomputes the report's statistics from."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    s = inp.summary
    w.writerow(["arm", "seed", "checkpoint", *RESULT_COLUMNS, "tested_acc", *(f"acc_{c}" for c in s.classes)])
    for r in inp.per_seed:
        tested = s.estimates[r.arm][s.seeds.index(r.seed)] if r.checkpoint == "last" and s.estimates else ""
        w.writerow([r.arm, r.seed, r.checkpoint, *(getattr(r, k) for k in RESULT_COLUMNS), tested, *r.per_class_acc])
    return buf.getvalue()


def _budget(ctx: _Ctx) -> str:
    epochs = sorted({a.train.epochs for a in ctx.inp.params.arms})
    plural_s = "s" if epochs != [1] else ""
    return f"{'/'.join(map(str, epochs))} epoch{plural_s} on {count(ctx.inp.n_train)} training images"


def _headline(ctx: _Ctx) -> list:
    """The answer first: one line per arm against the baseline, or, in a study with
    several axes, a table of each factor's effects and their interactions with the
    interaction plot; then what the numbers do not show."""
    inp, base, n = ctx.inp, ctx.baseline, len(ctx.seeds)
    precisions = ", ".join(dict.fromkeys(inp.record.precision.values()
                                         or [a.train.precision for a in inp.params.arms]))
    blocks = [para("Study ", ("b", inp.params.study), f" (preset {inp.params.preset}) on ", ("b", inp.data_name),
                   f" ({inp.data_encoding})" if inp.data_encoding else "",
                   f": {plural(len(ctx.arms), 'arm')} x {plural(n, 'seed')} ({', '.join(map(str, ctx.seeds))}), "
                   "baseline ", ("b", base), f", each trained {_budget(ctx)} in {precisions} on "
                   f"{inp.record.device}. Each run's accuracy is "
                   f"{inp.summary.estimate}, on {count(len(inp.predictions[base].label))} test images; differences "
                   f"over seeds with {ctx.clabel.replace('CI', 'intervals')}. Seeds: {_seeds_reason(inp)}."),
              _plan_status(inp)]
    if inp.family:
        blocks.append(Warn(f"Provisional: {inp.family}."))
    if inp.params.rationale:
        blocks.append(para(("b", "The preset's choices."), " " + inp.params.rationale))
    if inp.params.variant:
        blocks.append(Warn(f"not the study {inp.params.study} itself ({', '.join(inp.params.variant)}): its own "
                           f"report is reports/{inp.params.study}/"))
    if n == 1:
        blocks.append(Warn(SINGLE_SEED_WARNING))
    if not ctx.others:
        blocks.append(para("Only one arm: there is nothing to compare with the baseline."))
    blocks.extend(_hypotheses(ctx))
    if inp.summary.effects:
        blocks.extend(_summary(ctx))
    else:
        blocks.extend(_answer(ctx, arm) for arm in ctx.others)
    if ctx.others:
        blocks.append(para(("b", "What this does not show."), " " + _limits(ctx)))
    return blocks


PLAN_WORDS = {
    "fixed before any result": "Fixed before any result",
    "plan written after results": "Not preregistered",
    "records not committed": "Preregistration not yet checkable",
    "no plan": "No analysis plan",
}


def _seeds_reason(inp: Inputs) -> str:
    """Why these seeds: a study's own run has those its plan registered."""
    if inp.plan and not inp.params.variant and inp.record.seeds_reason == "as listed in params.yaml":
        return f"as registered in {inp.plan}"
    return inp.record.seeds_reason


def _plan_status(inp: Inputs) -> Para:
    """Whether the hypotheses, estimator and seeds were fixed before the results (git
    ancestry of the plan and of every record, pipeline.core.analysis.precedence)."""
    word, why = inp.precedence
    if inp.withdrawn:
        return para(("b", "Abandoned."), f" The analysis plan {inp.plan} was withdrawn: {inp.withdrawn}. Nothing "
                    "here is a finding of the study it registered.", tone="bad")
    if word == "no plan":
        text = (f" This study's hypotheses, estimator and seeds were not registered before it ran ({why}): read "
                "its p-values as those of an exploratory analysis.")
    else:
        text = f" The analysis plan {inp.plan}: {why}."
    if inp.supersedes:
        text += f" This report supersedes {inp.supersedes}."
    return para(("b", f"{PLAN_WORDS[word]}."), text, tone="good" if word == "fixed before any result" else "neutral")


def _family_of(ctx: _Ctx, name: str | None):
    return next((f for f in ctx.inp.summary.families if f.name == name), None)


def _holm(ctx: _Ctx, name: str | None) -> str:
    """', Holm over the primary family's 3 hypotheses' (nothing for a family of one)."""
    f = _family_of(ctx, name)
    if f is None or len(f.hypotheses) < 2:
        return ""
    return f", Holm over the {f.name} family's {len(f.hypotheses)} hypotheses".replace("the the study's family's",
                                                                                      "the study's")


def _hypotheses(ctx: _Ctx) -> list:
    s = ctx.inp.summary
    blocks = []
    for f in s.families:
        title = (("The hypotheses" if len(f.hypotheses) > 1 else "The hypothesis") if f.name == "the study's"
                 else f"The {f.name} family")
        role = {"primary": "what the study answers", "secondary": "tested too, labelled secondary, with its "
                "own correction"}.get(f.name, "")
        blocks.append(para(("b", f"{title}."), (f" {role.capitalize()}: " if role else " ")
                           + f"{'; '.join(f.hypotheses)}. Each is tested once, on {s.estimate} (Welch's t over "
                           "seeds; an interaction, a Welch contrast of its four arms)"
                           + (f", and Holm adjusts within this family (the smallest p must pass "
                              f"{f.threshold:.3g}): the p quoted for a hypothesis is the same wherever it appears."
                              if len(f.hypotheses) > 1 else ".")))
    if s.equivalence_margin is not None:
        blocks.append(para(("b", "Equivalence."), f" Each tested difference is also tested for equivalence within "
                           f"+-{s.equivalence_margin:g} point (two one-sided Welch tests, Holm within the same "
                           "family): equivalent when that test passes, differs when it does not and the "
                           "difference is significant, inconclusive otherwise."))
    if s.effects and ctx.others:
        blocks.append(para("An arm that differs from the baseline in more than one factor is described, not "
                           "tested: its difference mixes the factors' effects, which the family tests one by one."))
    if ctx.others:
        blocks.append(para(("b", "Exploratory."), " The per-class tests, the per-image tests of these trained "
                           "models (paired bootstrap, McNemar), the best checkpoint, the learning curves and "
                           "everything after section 2 describe; none of them is a hypothesis of the study."))
    return blocks


def _equivalence_parts(ctx: _Ctx, t) -> list:
    """' Within +-1 point: equivalent (equivalence test p < 0.001; 90% CI ...; its power 88%).'"""
    e = t.equivalence
    if e is None:
        return []
    power = f"; its power at the margin, at the observed SDs, {e.power * 100:.0f}%" if e.power is not None else ""
    ci = (f"{stats.points(e.ci.estimate)} points, {e.ci.confidence * 100:g}% CI {stats.points(e.ci.low)} to "
          f"{stats.points(e.ci.high)}" if e.ci.defined else "no interval")
    holm = "Holm-adjusted " if _holm(ctx, t.family) else ""
    return [f" Within +-{100 * e.margin:g} point: ", ("b", t.answer),
            f" (two one-sided tests, {holm}{stats.p_phrase(t.equivalence_p_adjusted, ctx.alpha)}; {ci}{power})."]


def _answer(ctx: _Ctx, arm: str) -> Para:
    """One arm against the baseline, over seeds, in a line."""
    c = ctx.last.comparisons[arm]
    sig = stats.significant(c.p_adjusted, ctx.alpha)
    answer = _effect_word(c.welch, c.p_adjusted, ctx.alpha)
    tone = {"helped": "good", "hurt": "bad"}.get(answer, "neutral")
    parts = [("b", arm), " vs ", ("b", ctx.baseline), ": ", ("b", answer),
             f", {pct(ctx.inp.summary.accuracy(arm).mean)}% "
             f"vs {pct(ctx.inp.summary.accuracy(ctx.baseline).mean)}%: ", ("b", c.verdict), " (Welch's t over seeds"
             + _holm(ctx, c.family) + ")."]
    parts += _equivalence_parts(ctx, c)
    if c.welch.ci.defined and not sig:
        parts.append(" " + _power_sentence(c.power, ctx.alpha))
    if stats.significant(c.paired_bootstrap.p, ctx.alpha) and not sig:
        parts.append(" These trained models do differ on the test images (paired bootstrap, "
                     f"{stats.p_phrase(c.paired_bootstrap.p, ctx.alpha)}): that speaks for them, not for the recipe.")
    return para(*parts, tone=tone)


def _where(at: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in at.items()) or "(no other factor)"


def _summary(ctx: _Ctx) -> list:
    """A study with several axes: every factor's effect within the others, then every
    interaction, in one table; the interaction plot beside it."""
    s = ctx.inp.summary
    rows = [[f"{e.factor}={e.value} vs {e.reference}", _where(e.at), e.family or "-", diff_ci(e.test_acc.ci),
             stats.format_p(e.p_adjusted, ctx.alpha), _effect_word(e.test_acc, e.p_adjusted, ctx.alpha)
             + (f"; {e.answer} within +-{s.equivalence_margin:g}" if e.answer else "")]
            for e in s.effects]
    rows += [[f"interaction: {i.factor}={i.value} x {i.other}={i.other_value}", _where(i.at), i.family or "-",
              diff_ci(i.contrast.ci), stats.format_p(i.p_adjusted, ctx.alpha),
              "depends" if stats.significant(i.p_adjusted, ctx.alpha) else "no significant dependence"]
             for i in s.interactions]
    levels = {k: list(dict.fromkeys(str(a.axes[k]) for a in ctx.inp.params.arms)) for k in ctx.inp.params.arms[0].axes}
    means = {a.name: (100 * s.accuracy(a.name).mean, 100 * (s.accuracy(a.name).ci.half_width or 0.0))
             for a in ctx.inp.params.arms}
    sizes = "; ".join(f"{f.name}: {len(f.hypotheses)}" for f in s.families)
    return [Table(["Effect", "Other factors at", "Family", f"Δ test acc, points [unadjusted {ctx.clabel}]",
                   "p (Holm)", "Answer"], rows, {3, 4}, "summary-table",
                  "Each factor's value against the baseline's value of it, every other factor the same, and whether "
                  "one factor's effect depends on another (interaction: the effect at the other factor's value "
                  "minus at its reference), in points over seeds. Holm adjusts within each family "
                  f"({sizes}); the intervals are not adjusted, so one may exclude 0 where the adjusted p does "
                  "not pass. Section 2 has the tests' details."),
            Figure("interaction", "interaction_plot",
                   {"levels": levels, "axes": {a.name: {k: str(v) for k, v in a.axes.items()}
                                               for a in ctx.inp.params.arms}, "means": means},
                   "Mean test accuracy per level of each factor, one line per level of another",
                   f"Mean test accuracy over seeds with its {ctx.clabel}; lines that are not parallel show an "
                   "interaction.")]


def _effect_word(w: stats.Welch, p: float | None, alpha: float) -> str:
    """What a difference over seeds answers: no finding (no interval), no significant difference, helped or hurt."""
    if not w.ci.defined:
        return "no finding"
    if not stats.significant(p, alpha):
        return "no significant difference"
    return "helped" if w.diff > 0 else "hurt"


def _factor_tables(ctx: _Ctx) -> list:
    s = ctx.inp.summary
    if not s.effects:
        return []
    rows = [[e.factor, f"{e.value} vs {e.reference}", _where(e.at), diff_ci(e.test_acc.ci),
             stats.format_p(e.test_acc.p, ctx.alpha), stats.format_p(e.p_adjusted, ctx.alpha),
             "yes" if stats.significant(e.p_adjusted, ctx.alpha) else "no", diff_ci(e.gap_clean.ci)]
            for e in s.effects]
    blocks = [Heading("Each factor within the others"),
              Table(["Factor", "Value vs reference", "Other factors at", f"Δ test acc over seeds [{ctx.clabel}]",
                     "p (Welch)", "p (Holm)", "significant", f"Δ clean gap [{ctx.clabel}]"], rows,
                    {3, 4, 5, 6, 7}, "effects-table",
                    "The arm with the value minus the arm with the reference value, every other factor the same, "
                    "in points over seeds (Welch). Holm adjusts over the study's family. The reference is "
                    f"the baseline's value ({s.baseline}).")]
    if s.interactions:
        irows = [[f"{i.factor}={i.value} vs {i.reference}", f"{i.other}={i.other_value} vs {i.other_reference}",
                  _where(i.at), diff_ci(i.contrast.ci), stats.format_p(i.contrast.p, ctx.alpha),
                  stats.format_p(i.p_adjusted, ctx.alpha),
                  "yes" if stats.significant(i.p_adjusted, ctx.alpha) else "no"] for i in s.interactions]
        blocks.append(Table(["Effect of", "changes between", "Other factors at",
                             f"Δ of the effect [{ctx.clabel}]", "p", "p (Holm)", "significant"], irows,
                            {3, 4, 5, 6}, "interactions-table",
                            "Interaction: the effect of the first factor's value at the second factor's value minus "
                            "its effect at the second factor's reference, in points over seeds: a contrast of the "
                            "four arms' means with Welch-Satterthwaite degrees of freedom (each arm its own "
                            "variance). Holm adjusts over the study's family."))
    return blocks


def _power_sentence(p: stats.Power, alpha: float) -> str:
    if p.detectable is None:
        return ""
    need = (f"; a difference of {stats.points(p.target, signed=False)} points would need about "
            f"{p.seeds_for_target} seeds per arm" if p.seeds_for_target else "")
    faced = (f"at the threshold it faces, {p.alpha:.3g} (Holm's first over its family)" if p.alpha < alpha
             else f"alpha {p.alpha:g}")
    out = (f"Not detecting a difference is not evidence of none: with {p.n_per_arm} seeds per arm and the observed "
           f"seed SD of {stats.points(p.sd, signed=False)} points, this study could detect (power "
           f"{p.power * 100:g}%, {faced}, two-sample t-test) only differences of "
           f"{stats.points(p.detectable, signed=False)} points or more{need}.")
    if p.welch_power is not None:
        out += f" Welch's test, which the verdicts use, finds that difference in {p.welch_power * 100:.0f}% of studies "
        out += "(simulated)."
    if p.sd_ci is not None and p.sd_ci.defined:
        out += (f" The SD is itself uncertain: from {2 * p.n_per_arm - 2} degrees of freedom its 95% CI is "
                f"{stats.points(p.sd_ci.low, signed=False)} to {stats.points(p.sd_ci.high, signed=False)} points, "
                "and every figure here scales with it.")
    return out


def _limits(ctx: _Ctx) -> str:
    inp = ctx.inp
    parts = [f"These results are for {_budget(ctx)} of {inp.data_name}, {plural(len(ctx.seeds), 'seed')} per arm"]
    if len({a.train.epochs for a in inp.params.arms}) == 1:
        parts.append("a longer or shorter budget may rank the arms differently (see the learning curves)")
    parts.append("the checkpoint kept as best was chosen on the test set, so its numbers are optimistic and are "
                 "not used for any finding" if inp.summary.best_on == "test" else
                 "the checkpoint kept as best was chosen on validation images and is described, not tested")
    parts.append("a per-class difference is only claimed where it holds over seeds after correcting for the ten "
                 "classes; per-image tests speak for these trained models, not for the recipe")
    return "; ".join(parts) + "."


def _ablation(ctx: _Ctx) -> list:
    last, base, s = ctx.last, ctx.baseline, ctx.inp.summary
    own = s.estimate != LAST_CHECKPOINT  # the hypotheses are tested on another estimate (report.mean_of_last)
    rows = []
    for arm in ctx.arms:
        e = last.arms[arm]
        rows.append([arm + (" (baseline)" if arm == base else ""), str(e.test_acc.n)]
                    + [mean_pm(getattr(e, key)) for key, _ in METRICS] + ([mean_pm(s.accuracy(arm))] if own else []))
    cols = ["Arm", "n seeds"] + [f"{label} %" for _, label in METRICS] + (["Tested acc %"] if own else [])
    blocks = [Table(cols, rows, set(range(1, len(cols))), "acc-table",
                    f"Mean ± {ctx.clabel} half-width over seeds, in %, of the last checkpoint"
                    + (f" (tested acc: {s.estimate}, what the comparisons below test)" if own else "")
                    + ". Gap = train acc - test acc; "
                    "running = accuracy over the augmented batches of the last epoch (as the recipes' "
                    "authors reported it), clean = the trained model re-evaluated on the training "
                    "set in eval mode without augmentation.")]
    if ctx.others:
        crow, xrow = [], []
        margin = s.equivalence_margin
        for arm in ctx.others:
            c = last.comparisons[arm]
            w, b = c.welch, c.paired_bootstrap
            mc = "; ".join(f"s{s}: {m.b01}/{m.b10}, {stats.p_phrase(m.p, ctx.alpha)}"
                           for s, m in zip(ctx.seeds, c.mcnemar_per_seed))
            word = ("yes" if stats.significant(c.p_adjusted, ctx.alpha) else "no") if c.family else "not tested"
            detect = stats.points(c.power.detectable, signed=False) if c.power.detectable is not None else "n/a"
            crow.append([arm, diff_ci(w.ci), stats.format_p(w.p, ctx.alpha)]
                        + ([stats.format_p(c.p_adjusted, ctx.alpha)] if ctx.adjusted else [])
                        + [word, detect] + ([c.answer or "-"] if margin is not None else []))
            xrow.append([arm, diff_ci(b.diff), stats.format_p(b.p, ctx.alpha), mc])
        ccols = (["Arm", f"Δ {'tested' if own else 'test'} acc over seeds (Welch) [unadjusted {ctx.clabel}]",
                  "p (Welch)"] + (["p (Holm)"] if ctx.adjusted else [])
                 + ["significant", "detectable Δ (80% power, at the threshold faced)"]
                 + ([f"within +-{margin:g} (TOST)"] if margin is not None else []))
        blocks.append(Table(ccols, crow, set(range(1, len(ccols))), "delta-table",
                            f"Arm - baseline ({base}), in points (1 point = 1% accuracy). 'significant' applies "
                            f"p < {ctx.alpha:g} to the " + ("Holm-adjusted p (within the hypothesis' family)"
                                                           if ctx.adjusted else "Welch p")
                            + "; the interval is not adjusted. 'not tested': the arm differs from the baseline "
                            "in more than one factor."))
        blocks.append(Table(["Arm", f"Δ on these models' test images (bootstrap) [{ctx.clabel}]", "p (bootstrap)",
                             "McNemar per seed: b01/b10, p"], xrow, {1, 2}, "images-table",
                            "Exploratory, not adjusted for multiplicity, and not about the recipe: whether these "
                            "particular trained models differ on this test set. b01 = images the arm gets wrong and "
                            "the baseline right; b10 = the arm right and the baseline wrong."))
        resamples = next(iter(last.comparisons.values())).paired_bootstrap.n_resamples
        blocks.append(para(("b", "Methods."),
                           f" Per arm: mean over seeds with a Student-t {ctx.clabel}. Against the baseline: Welch's "
                           "unequal-variance t-test over the seeds' test accuracies (scipy)"
                           + (", with Holm-adjusted p over the study's family of hypotheses (statsmodels), which "
                              "decides the verdicts"
                              if ctx.adjusted else "")
                           + "; the smallest difference the comparison detects with 80% power (two-sample t-test on "
                           "the pooled seed SD, statsmodels). The seeds are the unit of these tests: they ask whether "
                           "training the recipe again would differ. A paired bootstrap over test images "
                           f"({count(resamples)} resamples, stratified by class) and an exact McNemar test per matched "
                           "seed ask whether these trained models differ on this test set. Significant means "
                           f"p < {ctx.alpha:g}." + _normality_note(ctx)))
    else:
        blocks.append(para(("b", "Methods."), f" Per arm: mean over seeds with a Student-t {ctx.clabel}. With one "
                           "arm there is no comparison, so no test."))
    blocks.extend(_factor_tables(ctx))
    best = ctx.inp.summary.checkpoints.get("best")
    if best:
        rows = [[arm, mean_pm(best.arms[arm].test_acc), best.comparisons[arm].verdict if arm in best.comparisons
                 else "(baseline)"] for arm in ctx.arms if arm in best.arms]
        chosen = ("by validation accuracy" if ctx.inp.summary.best_on == "validation"
                  else "by test accuracy: optimistic")
        blocks.append(Details(f"Best checkpoint (chosen {chosen}; described, never tested)",
                              [Table(["Arm", f"Test acc % (mean ± {ctx.clabel} half-width)", "vs baseline"],
                                     rows, {1}, "best-table")]))
    return blocks


def arm_colours(arms) -> dict[str, str]:
    """One fixed colour per arm, the same in every figure (matplotlib's tab10)."""
    cycle = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf")
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(arms)}


TREND_EPOCHS = 5  # the end of a run whose trend the report reads


def trend(test_acc: list[float], k: int = TREND_EPOCHS) -> tuple[int, float, float]:
    """Of one run's per-epoch accuracy (validation where there is a split, else test):
    the epoch it peaked (1-based, the first if tied), last minus peak, and the
    least-squares slope over the last `k` epochs (per epoch)."""
    acc = np.asarray(test_acc, dtype=float)
    best = int(np.argmax(acc))
    tail = acc[-min(k, len(acc)):]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) if len(tail) > 1 else 0.0
    return best + 1, float(acc[-1] - acc[best]), slope


def _curves(ctx: _Ctx) -> list:
    curves = {arm: {s: [r.model_dump() for r in rows] for s, rows in ctx.inp.histories[arm].items()}
              for arm in ctx.arms}
    on_val = ctx.inp.summary.best_on == "validation"
    blocks = [Figure("learning_curves", "learning_curves", {"curves": curves, "colours": arm_colours(ctx.arms)},
                     f"{'Validation' if on_val else 'Test'} accuracy and train loss per epoch, one colour per arm",
                     "Mean over seeds (line) and min-max over seeds (band). Train loss is the running loss over "
                     "the (augmented) training batches of each epoch.")]
    epochs = min(len(rows) for arm in ctx.arms for rows in ctx.inp.histories[arm].values())
    if epochs < 2:
        return blocks
    k = min(TREND_EPOCHS, epochs)
    rows, late, early = [], [], []
    for arm in ctx.arms:
        histories = [ctx.inp.histories[arm][s] for s in sorted(ctx.inp.histories[arm])]
        peaks, drops, slopes = zip(*(trend([r.chosen_on for r in h], k) for h in histories))
        drop = float(np.mean(drops))
        if all(peak > len(h) - k for peak, h in zip(peaks, histories)):
            late.append(arm)
        elif all(peak <= len(h) - k for peak, h in zip(peaks, histories)):
            early.append(f"{arm} ({stats.points(drop)} points)")
        rows.append([arm, ", ".join(map(str, peaks)), stats.points(drop),
                     f"{stats.points(float(np.mean(slopes)))} [{stats.points(min(slopes))}, "
                     f"{stats.points(max(slopes))}]"])
    blocks.append(Table(["Arm", "epoch of the peak, per seed", "last - peak (points, mean)",
                         f"slope over the last {k} epochs (points/epoch, mean [min, max] over seeds)"],
                        rows, {2, 3}, "trend-table",
                        "Validation accuracy per epoch (images held out of training): where a curve turned."
                        if on_val else "Test accuracy per epoch, read descriptively: the peak is chosen on the test "
                        "set (optimistic), so it says where a curve turned, not what the recipe reaches."))
    if late:
        blocks.append(para(f"Peaked in the last {k} epochs in every seed, so possibly still improving: ",
                           ("b", ", ".join(late)), ". A longer budget may change the comparison."))
    if early:
        blocks.append(para(f"Peaked before the last {k} epochs in every seed, then lost (last - peak, mean): ",
                           ("b", ", ".join(early)), ". Test accuracy falling while training goes on is the "
                           "sign of overfitting within the budget."))
    return blocks


def _normality_note(ctx: _Ctx) -> str:
    """With few seeds no test free of the normal assumption can pass Holm's first
    threshold (alpha over the family's size): say so."""
    n = len(ctx.seeds)
    if n < 2:
        return ""
    floor = 2 / math.comb(2 * n, n)  # the smallest two-sided p of an exact permutation test, n vs n seeds
    if floor < ctx.alpha / max(1, len(ctx.inp.summary.family)):
        return ""
    return (f" With {n} seeds per arm an exact permutation test cannot go below p = {floor:.2g}, so every "
            "significant verdict here rests on the t-test's assumption that seed accuracies are normal.")


PER_CLASS_EFFECT = 0.07  # the class difference whose chance of being starred the report states


def _per_class_power(ctx: _Ctx) -> str:
    """How often a 7-point difference in one class would be starred at this study's
    seeds and its own per-class seed SD (the baseline's, net of the test images'
    binomial noise), simulated."""
    rows = np.array([r.per_class_acc for r in ctx.inp.per_seed if r.arm == ctx.baseline and r.checkpoint == "last"])
    if len(rows) < 2:
        return ""
    per_class_images = len(ctx.inp.predictions[ctx.baseline].label) / len(ctx.inp.summary.classes)
    noise = rows.mean(0) * (1 - rows.mean(0)) / per_class_images
    seed_sd = float(np.sqrt(max(np.mean(rows.var(0, ddof=1) - noise), 0.0)))
    power = stats.per_class_power(seed_sd, len(rows), PER_CLASS_EFFECT, images=int(per_class_images),
                                  base=rows.mean(0), alpha=ctx.alpha)
    sd = stats.points(seed_sd, signed=False)
    return (f"With {len(rows)} seeds per arm and this study's per-class seed SD of {sd} "
            f"points (besides the test images' own noise), a {100 * PER_CLASS_EFFECT:g}-point difference in one class "
            f"is starred in about {power * 100:.0f}% of studies (simulated): an unstarred class is not evidence of "
            "no difference.")


def _per_class(ctx: _Ctx) -> list:
    classes, last = ctx.inp.summary.classes, ctx.last
    per_arm = {arm: last.arms[arm].per_class_acc for arm in ctx.arms}
    cols = (["Class"] + [f"{a} %" for a in ctx.arms]
            + [f"Δ {a} over seeds [{ctx.clabel}]" for a in ctx.others] + [f"p (Holm) {a}" for a in ctx.others])
    by_class = {a: last.comparisons[a].per_class for a in ctx.others}  # arm -> its difference per class
    marks = {a: [{"diff": cd.diff.estimate, "low": cd.diff.low, "high": cd.diff.high,
                  "significant": stats.significant(cd.p_adjusted, ctx.alpha)} for cd in by_class[a]]
             for a in ctx.others}
    rows = [[name] + [pct(per_arm[a][k]) for a in ctx.arms]
            + [diff_ci(by_class[a][k].diff) + (" *" if marks[a][k]["significant"] else "") for a in ctx.others]
            + [stats.format_p(by_class[a][k].p_adjusted, ctx.alpha) for a in ctx.others]
            for k, name in enumerate(classes)]
    blocks = [para(("b", "Exploratory."), f" Per class, {len(classes)} tests per comparison with their own "
                   "correction: a starred class is a lead for another study, not a finding of this one. "
                   + _per_class_power(ctx)),
              Figure("per_class", "per_class_bars", {"classes": classes, "per_arm": per_arm,
                                                    "colours": arm_colours(ctx.arms)},
                     "Per-class test accuracy per arm", "Per-class test accuracy, mean over seeds.")]
    if ctx.others:
        blocks.append(Figure("per_class_delta", "delta_heatmap",
                             {"classes": classes, "deltas": marks, "alpha": ctx.alpha},
                             "Per-class accuracy difference over seeds, arm minus baseline",
                             f"Arm - baseline per class, in points, mean over seeds; * marks the classes whose "
                             f"difference holds over seeds (t per class, Holm over the {len(classes)} classes, "
                             f"p < {ctx.alpha:g})."))
    blocks.append(Table(cols, rows, set(range(1, len(cols))), "class-table",
                        "Per-class test accuracy (mean over seeds, %) and the difference to the baseline in points "
                        f"over seeds with its {ctx.clabel} (a t-test per class whose seed variance is raised to the "
                        "classes' common one, by empirical Bayes, where it is below it, so that a class is not starred "
                        f"because its few seeds happen to agree; unadjusted) and its Holm-adjusted p over the "
                        f"{len(classes)} classes; * = significant after the correction."))
    for a in ctx.others:
        found = [classes[k] for k, m in enumerate(marks[a]) if m["significant"]]
        blocks.append(para(("b", a), ": ", (f"a per-class difference holds over seeds for {', '.join(found)}."
                                            if found else "no per-class difference holds over seeds after "
                                            f"correcting for the {len(classes)} classes.")))
    if ctx.others:
        brows = [[a, classes[int(g.group)], diff_ci(g.diff), stats.format_p(g.p, ctx.alpha)]
                 for a in ctx.others for g in last.comparisons[a].paired_bootstrap.groups]
        blocks.append(Details("Per class on these trained models' test images (bootstrap; not corrected, "
                              "not about the recipe)",
                              [Table(["Arm", "Class", f"Δ [{ctx.clabel}]", "p (bootstrap)"], brows, {2, 3},
                                     "class-bootstrap-table",
                                     "Predictions averaged over seeds, images resampled within their class: "
                                     "whether these particular models differ on this class's test images.")]))
    return blocks


def _confusion(ctx: _Ctx) -> list:
    last = ctx.last
    blocks = [Figure("confusion", "confusion_matrices",
                     {"classes": ctx.inp.summary.classes,
                      "matrices": {a: last.arms[a].confusion for a in ctx.arms}},
                     "Confusion matrices per arm, row-normalised",
                     "Summed over seeds, each row normalised to 100% of its true class; off-diagonal cells "
                     "are the mistakes.")]
    rows = []
    for arm in ctx.arms:
        top = last.arms[arm].top_confusions
        if not top:
            rows.append([arm, "(no mistakes)", "", "", ""])
        for t in top:
            rows.append([arm, t.true, t.pred, count(t.count), pct(t.rate)])
    blocks.append(Table(["Arm", "True class", "Predicted as", "Images (all seeds)", "% of true class"], rows,
                        {3, 4}, "confusion-table", "The most frequent confusions per arm."))
    return blocks


def _diagnostics(ctx: _Ctx) -> list:
    seed = ctx.seeds[0]
    blocks = [para(f"Seed {seed} of each arm, recorded during training: gradients at the middle step of each "
                   "epoch, update-to-weight ratio ||W_end - W_start|| / ||W_start|| over each epoch, and "
                   "weight histograms at the recorded epochs. Conv and linear weights only.")]
    for i, arm in enumerate(ctx.arms):
        d = ctx.inp.diagnostics.get(arm)
        blocks.append(Heading(arm))
        if not d or not d.layers:
            blocks.append(para("No diagnostics were recorded for this run."))
            continue
        s = f"{i:02d}_{slug(arm)}"
        layers = d.layers
        if d.gradients:
            blocks.append(Figure(f"grad_flow_{s}", "gradient_flow",
                                 {"layers": layers, "rows": [r.model_dump() for r in d.gradients], "arm": arm},
                                 f"Gradient flow per layer, {arm}",
                                 "Mean and max |grad| per layer, one line per epoch (log scale). Vanishing "
                                 "gradients show as a steep drop towards the input layers."))
        if d.update_ratio:
            blocks.append(Figure(f"update_ratio_{s}", "update_ratio",
                                 {"layers": layers, "rows": [r.model_dump() for r in d.update_ratio], "arm": arm},
                                 f"Update-to-weight ratio per layer, {arm}",
                                 "How far each layer's weights moved during each epoch, relative to their "
                                 "size (log scale): a layer stuck far below the others barely learns; one "
                                 "near 1 is rewritten every epoch."))
        if d.weights:
            blocks.append(Figure(f"weights_{s}", "weight_histograms",
                                 {"layers": layers, "rows": [r.model_dump() for r in d.weights], "arm": arm},
                                 f"Weight distributions per layer, {arm}",
                                 "One panel per layer; each recorded epoch's histogram overlaid (colour = epoch)."))
    return blocks


def _galleries(ctx: _Ctx) -> list:
    seed, classes = ctx.seeds[0], ctx.inp.summary.classes
    x = ctx.inp.test_images
    blocks = [para(f"Seed {seed}, last checkpoint. Green: correct; red: wrong (true class, then the "
                   "prediction and its softmax confidence).")]
    n = len(ctx.inp.predictions[ctx.arms[0]].label)
    sample = np.unique(np.linspace(0, n - 1, min(GALLERY_SIZE, n)).round().astype(int))
    for i, arm in enumerate(ctx.arms):
        p = ctx.inp.predictions[arm]
        s = f"{i:02d}_{slug(arm)}"
        blocks.append(Heading(arm))

        def grid(sel, title):
            return {"images": np.asarray(x[sel]), "true": [classes[k] for k in p.label[sel]],
                    "pred": [classes[k] for k in p.pred[sel]],
                    "confidence": [float(c) for c in p.confidence[sel]], "title": title}

        blocks.append(Figure(f"samples_{s}", "prediction_grid", grid(sample, f"{arm}: sample test images"),
                             f"Sample predictions, {arm}",
                             f"{len(sample)} test images spread over the test set, the same for every arm."))
        wrong = np.flatnonzero(~p.correct)
        if len(wrong):
            worst = wrong[np.argsort(-p.confidence[wrong], kind="stable")][:GALLERY_SIZE]
            blocks.append(Figure(f"mistakes_{s}", "prediction_grid", grid(worst, f"{arm}: most confident mistakes"),
                                 f"Most confident mistakes, {arm}",
                                 f"The {len(worst)} misclassified test images with the highest confidence "
                                 f"(of {count(len(wrong))} mistakes)."))
        else:
            blocks.append(para("No misclassified test images for this run."))
        w = ctx.inp.filters[arm]
        blocks.append(Figure(f"filters_{s}", "conv_filters", {"weight": w, "title": f"{arm}: first-layer filters"},
                             f"First-layer convolution filters, {arm}",
                             f"{w.shape[0]} filters of {w.shape[2]}x{w.shape[3]} pixels, each scaled to its own "
                             "range and shown as RGB."))
    return blocks


def _model_facts(ctx: _Ctx) -> list:
    facts = ctx.inp.summary.model_facts
    if not facts:
        return [para("No model facts in the evaluation summary.")]
    base = facts[ctx.baseline]
    rows = []
    for arm in ctx.arms:
        f = facts[arm]
        changed = {k: v for k, v in f.knobs.items() if base.model != f.model or base.knobs.get(k) != v}
        rows.append([arm, f.model, ", ".join(f"{k}={_value(v)}" for k, v in changed.items()) or "-",
                     count(f.params), si(f.flops), si(f.macs), f"{f.receptive_field} px"])
    blocks = [Table(["Arm", "Model", "Knobs that differ from the baseline", "Parameters", "FLOPs", "MACs",
                     "Receptive field"], rows, {3, 4, 5, 6}, "facts-table",
                    base.flops_convention + ". A recipe quoting \"FLOPs\" of half these numbers counts "
                    "multiply-accumulates (for ResNet-18: 557.889M MACs = 1.116 GFLOPs).")]
    seen = set()
    for arm in ctx.arms:
        f = facts[arm]
        key = (f.model, tuple(sorted(f.knobs.items())))
        if key in seen:
            continue
        seen.add(key)
        knobs = ", ".join(f"{k}={_value(v)}" for k, v in f.knobs.items())
        rows = [[r["layer"], r["type"], "x".join(map(str, r["output"])) if r.get("output") else "-",
                 count(r["params"])] for r in f.layers]
        blocks.append(Details(f"Layers of {f.model} ({knobs}; {len(rows)} layers)",
                              [Table(["Layer", "Type", "Output (C x H x W)", "Parameters"], rows, {3})]))
    return blocks


def _provenance(ctx: _Ctx) -> list:
    inp = ctx.inp
    params = inp.params
    trained = sorted({r.code_version for r in inp.record.runs if r.code_version})
    restored = sum(r.restored for r in inp.record.runs)
    d = params.data
    blocks = [Table(["Item", "Value"], [
        ["Data", f"{inp.data_name}{f', {inp.data_encoding}' if inp.data_encoding else ''}, sha256 {inp.data_sha256}"],
        ["Data subset", f"train_limit {_value(d.train_limit)}, test_limit {_value(d.test_limit)}, "
                        f"subset_seed {d.subset_seed}, val_split {d.val_split:g} (held out of training)"],
        ["Git commit (report)", inp.code_version],
        ["Git commit (training)", ", ".join(trained) or "unknown"],
        ["Runs restored from the arm cache", f"{restored} of {len(inp.record.runs)}"],
        ["DVC experiment", inp.dvc_experiment],
        ["Device (training)", inp.record.device],
        ["Generated", inp.generated],
    ], set(), "provenance-table")]
    keys = [k for k in params.arms[0].train.model_dump() if k != "knobs"]
    axes = {k for a in params.arms for k in a.axes}
    rows = [[k + (" (axis)" if k in axes else "")] + [_value(getattr(a.train, k)) for a in params.arms] for k in keys]
    knob_names = list(dict.fromkeys(k for a in params.arms for k in a.train.knobs))
    rows += [[f"knobs.{k}" + (" (axis)" if k in axes else "")] + [_value(a.train.knobs.get(k)) for a in params.arms]
             for k in knob_names]
    blocks.append(Heading("Resolved training configuration per arm"))
    blocks.append(Table(["Key"] + [a.name for a in params.arms], rows, set(), "config-table"))
    run = params.run
    blocks.append(para(f"Run settings: device {run.device}, eval_batch_size {run.eval_batch_size}, deterministic "
                       f"{_value(run.deterministic)}, parallel {run.parallel}."))
    blocks.append(Details("params.yaml (as read)", [Code(inp.params_text.rstrip("\n"), "yaml")]))
    blocks.append(Heading("MLflow"))
    if not inp.tracking:
        blocks.append(para("Not logged to MLflow (trained with --no-mlflow)."))
        return blocks
    blocks.append(Table(["Item", "Value"], [[k, v] for k, v in inp.tracking.items()], set(), "mlflow-table"))
    blocks.append(para("Each arm x seed is one run, found by its ", ("code", "fingerprint"), " tag (as in "
                       "runs/study.json); the parent by its ", ("code", "study_key"), " tag. This report is logged "
                       "to the parent run under ", ("code", "report/"), ". Browse with ", ("code", "make mlflow-ui"),
                       "."))
    return blocks
