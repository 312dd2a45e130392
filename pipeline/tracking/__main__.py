"""python -m pipeline.tracking publish: publish this workspace's study to MLflow now
(runs/study.json, evaluation/ and the report, whatever the store lacks of them; see
pipeline.tracking.publish), then check that every file logged to a store on this
machine is as it was logged.

python -m pipeline.tracking urls [--base URL]: each study's runs table in the MLflow UI."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError, cli
from pipeline.core.study import StudyRecord
from pipeline.tracking.publish import Publisher, Unpublished, view_url


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.tracking", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["publish", "urls"])
    ap.add_argument("--base", default="http://127.0.0.1:5000", help="urls: where the MLflow UI serves")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--evaluation", default="evaluation")
    ap.add_argument("--reports", default="reports")
    args = ap.parse_args(argv)
    publisher = Publisher()
    if args.command == "urls":
        for line in study_urls(publisher.uri, args.base):
            print(line)
        return
    runs = Path(args.runs)
    if (runs / "study.json").exists():
        record = StudyRecord.model_validate_json((runs / "study.json").read_text())
        try:
            for line in publisher.publish(record, runs, **parts(record, args)):
                print(line)
        except Unpublished as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"study {record.study} published to {publisher.uri}")
    else:
        print(f"no study to publish ({runs / 'study.json'} is not there)")
    for line in publisher.changed_artifacts():
        print(f"warning: {line}", file=sys.stderr)


def parts(record: StudyRecord, args) -> dict:
    """The evaluation and report of `record` as the stages left them, where they are its own."""
    from pipeline.core.config import load_params
    from pipeline.core.contracts import read_history, run_dir
    from pipeline.evaluate.contracts import StudySummary
    from pipeline.evaluate.tracking import evaluation
    from pipeline.report.stage import winner_of

    out: dict = {}
    summary_path = Path(args.evaluation) / "summary.json"
    if not summary_path.exists():
        return out
    summary = StudySummary.model_validate_json(summary_path.read_text())
    if summary.seeds != record.seeds or sorted(summary.checkpoints["last"].arms) != sorted(record.arms):
        print(f"{summary_path} is of another study than {args.runs}/study.json: not published")
        return out
    try:
        params = load_params(args.params)
    except PipelineError:
        params = None
    name = params.report_name if params is not None else record.study
    out["evaluation"] = evaluation(record, Path(args.evaluation), f"reports/{name}/report.html")
    folder = Path(args.reports) / name
    if params is not None and (folder / "report.html").exists():
        from pipeline.report.stage import KEPT

        out["report"] = (folder, sorted(f for f in folder.rglob("*") if f.is_file()
                                        and f.relative_to(folder).parts[0] not in KEPT))
        if params.report.register_model:
            histories = {a: {s: read_history(run_dir(Path(args.runs), a, s) / "history.csv") for s in record.seeds}
                         for a in record.arms}
            out["register"] = (params.report.register_model, *winner_of(record.arms, summary, histories))
    return out


def study_urls(uri: str, base: str) -> list[str]:
    """One line per study: its runs table on the answer's columns (view_url)."""
    from mlflow.tracking import MlflowClient

    return [f"{e.name}: {view_url(base, e.experiment_id)}" for e in MlflowClient(uri).search_experiments()
            if e.name != "Default"]


if __name__ == "__main__":
    main()
