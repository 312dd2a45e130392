"""The evaluation in MLflow: each arm x seed's numbers on its run, the study's
headline on the parent run (metrics and tags the runs table can sort by)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core import stats
from pipeline.core.study import StudyRecord
from pipeline.evaluate.contracts import StudySummary
from pipeline.tracking.journal import Journal


DESCRIPTION_MAX = 5000  # characters of a tag's value every MLflow store keeps


def parent_headline(summary: StudySummary, arms: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Positional names, the same for every study of the same shape: a0 is the
    baseline, then the other arms in params.yaml's order."""
    last = summary.checkpoints["last"]
    order = [summary.baseline] + [a for a in arms if a != summary.baseline]
    alpha = 1 - summary.confidence
    metrics, tags = {"n_seeds": len(summary.seeds)}, {}
    for i, arm in enumerate(order):
        a, entry = f"a{i}", last.arms[arm]
        tags[f"arm.{a}"] = arm
        metrics[f"{a}.test_acc"] = entry.test_acc.mean
        metrics[f"{a}.gap_clean"] = entry.gap_clean.mean
        for name, value in ((f"{a}.test_acc_ci_half", entry.test_acc.ci.half_width),
                            (f"{a}.gap_clean_ci_half", entry.gap_clean.ci.half_width)):
            if value is not None:
                metrics[name] = value
        c = last.comparisons.get(arm)
        if c is not None:
            metrics[f"{a}.diff"] = c.welch.diff
            if c.welch.ci.half_width is not None:
                metrics[f"{a}.diff_ci_half"] = c.welch.ci.half_width
            if c.p_adjusted is not None:
                metrics[f"{a}.p_adjusted"] = c.p_adjusted
            tags[f"verdict.{a}"] = c.verdict
            tags[f"finding.{a}"] = ("significant" if stats.significant(c.p_adjusted, alpha) else "not significant")
    return metrics, tags


def parent_description(summary: StudySummary, record: StudyRecord) -> str:
    """The parent run's description (the MLflow UI's note): the study's answer in a paragraph."""
    last = summary.checkpoints["last"]
    n = len(summary.seeds)
    conf = f"{summary.confidence * 100:g}% CI"

    def pm(stat, scale=100.0, unit="%"):
        half = stat.ci.half_width
        return f"{stat.mean * scale:.2f}{'' if half is None else f' ± {half * scale:.2f}'}{unit}"

    arms = record.arms
    text = [f"Ablation study {record.study}: {len(arms)} arm(s) x {n} seed(s), baseline {summary.baseline}. "
            f"Test accuracy at the last checkpoint (mean ± {conf} half-width over {n} seeds): "
            + ", ".join(f"{a} {pm(last.arms[a].test_acc)}" for a in arms) + "."]
    for arm in arms:
        c = last.comparisons.get(arm)
        if c is not None:
            text.append(f"{arm} vs {summary.baseline}: {c.verdict}.")
    for e in summary.effects:  # a crossed study: each factor within the others
        where = ", ".join(f"{k}={v}" for k, v in e.at.items())
        text.append(f"{e.factor}={e.value} vs {e.reference} at {where}: {e.verdict}.")
    for i in summary.interactions:
        rest = "".join(f", {k}={v}" for k, v in i.at.items())
        text.append(f"Interaction: the effect of {i.factor}={i.value} (vs {i.reference}) at {i.other}={i.other_value} "
                    f"minus at {i.other}={i.other_reference}{rest}: {i.verdict}.")
    text.append("Clean train-test gap: " + ", ".join(f"{a} {pm(last.arms[a].gap_clean, unit=' points')}"
                                                    for a in arms) + ".")
    report = f" The report: reports/{record.study}/report.html."
    body = " ".join(text)
    if len(body) + len(report) > DESCRIPTION_MAX:  # MLflow cuts a tag's value there: keep the pointer
        body = body[:DESCRIPTION_MAX - len(report) - 40].rsplit(" ", 1)[0] + " ... (the rest is in the report)."
    return body + report


def log_evaluation(record: StudyRecord, summary: StudySummary, evals: dict, summary_path: Path) -> None:
    journal = Journal()
    keys = {(r.arm, r.seed): r.tracking_key for r in record.runs}
    for (arm, seed, which), (ev, _, _) in evals.items():
        key = keys.get((arm, seed))
        if key:
            journal.metrics(key, {f"eval_{which}_{k}": getattr(ev, k) for k in (
                "test_acc", "test_loss", "train_acc_clean", "gap_clean", "gap_running")})
    metrics, tags = parent_headline(summary, record.arms)
    journal.metrics(record.tracking_key, metrics)
    journal.tags(record.tracking_key, {**tags, "mlflow.note.content": parent_description(summary, record)})
    journal.artifact(record.tracking_key, summary_path, "evaluation")
    journal.flush_in_background()
    journal.warn_if_unavailable()
