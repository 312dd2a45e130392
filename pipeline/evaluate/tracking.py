"""The evaluation as MLflow shows it (pipeline.tracking.publish): each arm x seed's numbers
on its run, the study's headline on the parent run (metrics and tags the runs table can sort by)."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.stats import format_p
from pipeline.core.study import StudyRecord
from pipeline.core.contracts import run_dir
from pipeline.evaluate.contracts import CheckpointEval, StudySummary
from pipeline.evaluate.core import headline
from pipeline.tracking.publish import Evaluation, mlflow_name


DESCRIPTION_MAX = 5000  # characters of a tag's value every MLflow store keeps


def parent_headline(summary: StudySummary, arms: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """The study's answer on its parent run, named by arm as in metrics/study.json
    (`aug:standard/delta`), in percent; the verdicts as tags."""
    last = summary.checkpoints["last"]
    metrics = {mlflow_name(k): v for k, v in headline(summary, arms, intervals=True).items()}
    for arm in arms:
        metrics[f"{mlflow_name(arm)}/gap_clean"] = round(100 * last.arms[arm].gap_clean.mean, 2)
    tags = {f"verdict/{mlflow_name(arm)}": c.verdict for arm, c in last.comparisons.items()}
    tags.update({f"equivalence/{mlflow_name(arm)}": c.answer for arm, c in last.comparisons.items() if c.answer})
    return metrics, tags


def parent_name(summary: StudySummary, study: str) -> str:
    """The parent run's name, the first thing the runs table shows: the study and its answer."""
    last = summary.checkpoints["last"]
    alpha = 1 - summary.confidence
    answers = [f"{arm} {100 * c.welch.diff:+.2f} pts (p {format_p(c.p_adjusted, alpha)})"
               for arm, c in last.comparisons.items()]
    return f"{study}: {'; '.join(answers) or 'one arm'}"[:240]


def parent_description(summary: StudySummary, record: StudyRecord, report: str) -> str:
    """The parent run's description (the MLflow UI's note): the study's answer in a paragraph."""
    last = summary.checkpoints["last"]
    n = len(summary.seeds)
    conf = f"{summary.confidence * 100:g}% CI"

    def pm(stat, scale=100.0, unit="%"):
        half = stat.ci.half_width
        return f"{stat.mean * scale:.2f}{'' if half is None else f' ± {half * scale:.2f}'}{unit}"

    arms = record.arms
    text = [f"Ablation study {record.study}: {len(arms)} arm(s) x {n} seed(s), baseline {summary.baseline}. "
            f"Tested: {summary.estimate} (mean ± {conf} half-width over {n} seeds): "
            + ", ".join(f"{a} {pm(summary.accuracy(a))}" for a in arms) + "."]
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
    report = f" The report: {report}."
    body = " ".join(text)
    if len(body) + len(report) > DESCRIPTION_MAX:  # MLflow cuts a tag's value there: keep the pointer
        body = body[:DESCRIPTION_MAX - len(report) - 40].rsplit(" ", 1)[0] + " ... (the rest is in the report)."
    return body + report


def evaluation(record: StudyRecord, out: Path, report: str) -> Evaluation:
    """What MLflow shows of the evaluation in `out` (evaluation/): each run's numbers
    (evaluation/<arm>/seed=<k>/<which>.json), the headline on the parent."""
    summary = StudySummary.model_validate_json((out / "summary.json").read_text())
    per_run: dict[str, dict[str, float]] = {}
    for r in record.runs:
        for which in summary.checkpoints:
            ev = CheckpointEval.model_validate_json((run_dir(out, r.arm, r.seed) / f"{which}.json").read_text())
            per_run.setdefault(r.fingerprint, {}).update({f"eval_{which}_{k}": getattr(ev, k) for k in (
                "test_acc", "test_loss", "train_acc_clean", "gap_clean", "gap_running")})
    metrics, tags = parent_headline(summary, record.arms)
    tags.update({"mlflow.runName": parent_name(summary, record.study),
                 "mlflow.note.content": parent_description(summary, record, report)})
    return Evaluation(metrics=metrics, tags=tags, summary=out / "summary.json", runs=per_run)
