"""Stage `report`: the study's results as reports/<study>/report.md and one self-contained report.html.

Reads what the earlier stages wrote (runs/study.json, evaluation/summary.json
and the per-run predictions and filters, runs/*/history.csv, the first seed's
diagnostics from its record, the prepared test images) and answers at a glance: did each arm help, by how
much, how sure are we, and on which classes.

`load_inputs()` reads the files; `build_report()` (pipeline.report.build) is a
pure function from them to the report model; the figures are drawn
(pipeline.report.figures) unless an identical one was drawn before
(`.cache/figures/`); the templates (pipeline.report.render) write both pages.
The folder is written atomically; the report is then logged to the MLflow
parent run of the training.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np

from pipeline.core import analysis
from pipeline.core.config import fit_to_data, load_params
from pipeline.core.contracts import read_history, run_dir
from pipeline.core.dataset import load_manifest, load_split, stratified_subset
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path
from pipeline.core.provenance import code_version, dvc_experiment, public, repo_root
from pipeline.core.record import FILE as RECORD, ArmRecord
from pipeline.core.schema import read_json
from pipeline.core.study import StudyRecord
from pipeline.core.workspace import changed_under_run, params_for_run
from pipeline.evaluate.contracts import CheckpointEval, Predictions, StudySummary
from pipeline.evaluate.core import interaction_label
from pipeline.report.build import Inputs, Report, build_report

FIGURE_CACHE = Path(".cache") / "figures"
_NOT_EVALUATED = "run `dvc repro evaluate` first"


def load_inputs(params_path, data, runs, evaluation) -> Inputs:
    """Everything the report shows, read from the stages' outputs (one-line errors if missing)."""
    params_path, data, runs, evaluation = map(Path, (params_path, data, runs, evaluation))
    counts = load_manifest(data).splits
    params = fit_to_data(load_params(params_path), counts["train"].count, counts["test"].count)
    record = read_json(runs / "study.json", StudyRecord, "run `dvc repro train` first")
    if not evaluation.is_dir():
        raise PipelineError(f"no evaluation at {evaluation}: the folder does not exist; {_NOT_EVALUATED}")
    summary = read_json(evaluation / "summary.json", StudySummary, _NOT_EVALUATED)
    if "last" not in summary.checkpoints or set(summary.checkpoints["last"].arms) != set(record.arms) \
            or summary.seeds != record.seeds or summary.baseline != params.baseline.name:
        raise PipelineError(f"{evaluation / 'summary.json'} was computed for other arms, seeds or baseline than "
                            f"{runs / 'study.json'} and params.yaml hold; {_NOT_EVALUATED}")
    first = record.seeds[0]
    per_seed = [read_json(run_dir(evaluation, arm, s) / f"{which}.json", CheckpointEval, _NOT_EVALUATED)
                for which in summary.checkpoints for arm in record.arms for s in record.seeds]
    histories, diagnostics, predictions, filters = {}, {}, {}, {}
    for arm in record.arms:
        histories[arm] = {s: read_history(run_dir(runs, arm, s) / "history.csv") for s in record.seeds}
        diagnostics[arm] = ArmRecord.load(run_dir(runs, arm, first) / RECORD).meta.diagnostics
        src = run_dir(evaluation, arm, first)
        try:
            predictions[arm] = Predictions.load(src / "last_predictions.npz")
            filters[arm] = np.load(src / "filters.npy")
        except (OSError, KeyError, ValueError):
            raise PipelineError(f"the predictions or filters in {src} are missing or damaged; "
                                f"{_NOT_EVALUATED}") from None
    manifest = load_manifest(data)
    x, y = load_split(data, "test")
    idx = stratified_subset(y, params.data.test_limit, params.data.subset_seed)
    labels = next(iter(predictions.values())).label
    if len(idx) != len(labels) or not np.array_equal(y[idx], labels):
        raise PipelineError(f"the test images in {data} are not the ones {evaluation} was computed on; "
                            f"{_NOT_EVALUATED}")
    n_train = manifest.splits["train"].count
    if params.data.train_limit is not None:
        n_train = min(n_train, params.data.train_limit)
    n_train -= round(params.data.val_split * n_train)  # held out for validation
    root = repo_root()
    if params.variant:
        precedence = ("no plan", f"this run is not the study {params.study} itself, which its plan registers")
    else:
        precedence = analysis.precedence(root, params.study, [(a, s) for a in record.arms for s in record.seeds])
    plan = root / "reports" / params.study / analysis.FILE
    registered = analysis.read(plan) if plan.exists() and not params.variant else None
    supersedes = registered.supersedes if registered else None
    family = analysis.family_elsewhere(root, registered) if registered is not None else None
    withdrawn = None
    if registered is not None and registered.status == "withdrawn":
        void = [k for k in registered.fingerprints if k not in analysis.recorded(root, registered)]
        withdrawn = (f"{registered.withdrawn_because or 'no reason given'}; "
                     f"{len(void)} of its {len(registered.fingerprints)} runs are void (never recorded"
                     + (f", e.g. {void[0]})" if void else ")"))
    return Inputs(
        params=params, params_text=public(params_for_run(params_path).read_text()), record=record, summary=summary,
        histories=histories, diagnostics=diagnostics, predictions=predictions, per_seed=per_seed, filters=filters,
        test_images=_Indexed(x, idx), data_name=manifest.name, data_sha256=manifest.data_sha256, n_train=n_train,
        data_encoding=manifest.encoding,
        tracking=_tracking(params.study, record),
        code_version=code_version(), dvc_experiment=dvc_experiment(),
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        precedence=precedence, plan=f"reports/{params.study}/{analysis.FILE}" if plan.exists() else None,
        supersedes=supersedes, withdrawn=withdrawn, family=family)


class _Indexed:
    """The evaluated test images, as positions 0..N-1 of the subset (memory-mapped: a
    gallery reads only the few images it shows)."""

    def __init__(self, x, idx):
        self.x, self.idx = x, idx

    def __getitem__(self, sel):
        return self.x[self.idx[sel]]


def _tracking(study: str, record: StudyRecord) -> dict[str, str]:
    if not record.published:
        return {}
    from pipeline.tracking.publish import tracking_uri

    return {"Tracking URI": public(tracking_uri()), "Experiment": study,
            "Parent run (tag study_key)": record.study_key}


def draw_figures(report: Report, cache: Path | None) -> dict[str, bytes]:
    """{figure name: PNG}, each drawn only if no identical figure was drawn before.

    A cached figure is `<key of its inputs>.<sha256 of the PNG>.png`: one that no
    longer matches its checksum is removed, with one line, and drawn again."""
    from pipeline.report import figures

    out = {}
    for fig in report.figures():
        key = hashlib.sha256(pickle.dumps((fig.draw, _canonical(fig.args)), protocol=4)).hexdigest()
        png = _cached_png(cache, key) if cache is not None else None
        if png is None:
            png = getattr(figures, fig.draw)(**fig.args)
            if cache is not None:
                with atomic_path(cache / f"{key}.{hashlib.sha256(png).hexdigest()}.png") as tmp:
                    tmp.write_bytes(png)
        out[fig.name] = png
    return out


def _cached_png(cache: Path, key: str) -> bytes | None:
    for path in cache.glob(f"{key}.*.png"):
        png = path.read_bytes()
        if hashlib.sha256(png).hexdigest() == path.name.split(".")[1]:
            return png
        print(f"warning: the cached figure {path} is damaged; drawing it again", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
    return None


def _canonical(v):
    """Figure arguments in a form whose pickle depends on the values only."""
    if isinstance(v, dict):
        return tuple((k, _canonical(x)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return tuple(_canonical(x) for x in v)
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, np.ascontiguousarray(v).tobytes())
    if isinstance(v, np.generic):
        return v.item()
    return v


# what a study's folder holds besides its report, which a new report keeps: the study's
# analysis plan and its runs' committed records
KEPT = (analysis.FILE, "records")


def _link_or_copy(src, dest) -> None:
    import os
    import shutil

    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def write_report(report: Report, out: Path, cache: Path | None = None) -> None:
    """reports/{report.md, report.html, results.csv, figures/*.png}, atomically: all of it
    or the previous folder; the study's plan and records (KEPT) stay as they were."""
    import shutil

    from pipeline.report.render import render_html, render_markdown

    images = draw_figures(report, cache)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name in KEPT:  # linked (copied where the file system cannot), into the folder that replaces this one
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name, copy_function=_link_or_copy)
            elif (out / name).is_file():
                _link_or_copy(out / name, tmp / name)
        (tmp / "figures").mkdir()
        for name, png in images.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report, images), encoding="utf-8")
        for name, text in report.files.items():
            (tmp / name).write_text(text, encoding="utf-8")


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--evaluation", default="evaluation")
    ap.add_argument("--out", default="reports", help="each study's report goes in a folder of its name here")
    args = ap.parse_args(argv)

    inputs = load_inputs(args.params, args.data, args.runs, args.evaluation)
    report = build_report(inputs)
    # a study's report stays beside those of earlier studies; a quick or partial run of it beside them
    out = Path(args.out) / inputs.params.report_name
    write_report(report, out, repo_root() / FIGURE_CACHE)
    print(answer(inputs, out / "report.html"), flush=True)
    if inputs.record.published:
        from pipeline.tracking.publish import publish

        name = inputs.params.report.register_model
        files = [out / f for f in ("report.md", "report.html", *report.files)]
        publish(inputs.record, Path(args.runs), report=(out, files + sorted((out / "figures").glob("*.png"))),
                register=(name, *winner(inputs)) if name else None)
    moved = changed_under_run(args.params)
    if moved:
        back = " ".join(f"'{k}={v}'" for k, v in moved.items())
        print(f"warning: {args.params} changed while this run went on ({', '.join(moved)}: another `dvc exp run` "
              f"wrote it and was refused); this run used the values it started with. DVC may then fail to record "
              f"this experiment ('NoneType' object is not subscriptable): put the file back with `python -m "
              f"pipeline.params set {back}` and record it with `dvc exp save`", file=sys.stderr)


def answer(inputs: Inputs, report: Path) -> str:
    """The study's answer where a run ends: each arm against the baseline (the
    difference, its interval and the p the verdict decides on), and the report."""
    s = inputs.summary
    last = s.checkpoints["last"]
    if not s.effects:
        lines = [f"{arm}: test accuracy {100 * s.accuracy(arm).mean:.2f}% (baseline, {len(s.seeds)} seed(s))"
                 if arm == s.baseline else f"{arm} vs {s.baseline}: {last.comparisons[arm].verdict}"
                 + (f"; {last.comparisons[arm].answer} within +-{s.equivalence_margin:g} point(s)"
                    if last.comparisons[arm].answer else "")
                 for arm in inputs.record.arms]
    else:  # a crossed study: its hypotheses, family by family
        lines = [f"{arm}: test accuracy {100 * s.accuracy(arm).mean:.2f}% ({len(s.seeds)} seed(s))"
                 for arm in inputs.record.arms]
        tested = [(e.label, e) for e in s.effects] + [(interaction_label(i), i) for i in s.interactions]
        for f in s.families:
            lines.append(f"{f.name} family ({len(f.hypotheses)} hypotheses, Holm):")
            lines += [f"  {label}: {t.verdict}" + (f"; {t.answer} within +-{s.equivalence_margin:g}" if t.answer
                                                   else "") for label, t in tested if t.family == f.name]
    if inputs.family:
        lines.append(f"provisional: {inputs.family}")
    return "\n".join(lines + [f"report: {report}"])


def winner(inputs: Inputs) -> tuple[str, int]:
    return winner_of(inputs.record.arms, inputs.summary, inputs.histories)


def winner_of(arms: list[str], summary: StudySummary, histories: dict) -> tuple[str, int]:
    """The arm with the highest mean test accuracy (as tested), and its median seed by
    its histories ({arm: {seed: history}}): a representative model, not the luckiest one."""
    arm = max(arms, key=lambda a: summary.accuracy(a).mean)
    accs = sorted((h[-1].chosen_on, s) for s, h in histories[arm].items())
    return arm, accs[(len(accs) - 1) // 2][1]


if __name__ == "__main__":
    main()
