"""Stage `evaluate`: every arm x seed that trained, on its last and its best checkpoint.

Per checkpoint: test accuracy and loss, per-class accuracy, the confusion
matrix, train accuracy measured clean (eval mode, no augmentation) beside the
running accuracy over the augmented batches of that checkpoint's epoch, both
generalization gaps, the top confusion pairs, and per-image predictions and
confidences (kept for paired tests). Then the statistics across seeds and
against the baseline (pipeline.evaluate.core), and model facts per arm.

Each run's record (runs/<arm>/seed=<k>/record.npz, pipeline.core.record) holds
both checkpoints' predictions and clean numbers, computed by the job that
trained it: nothing is evaluated again here, and a run whose weights are not on
this machine (its record committed) is evaluated like any other.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.core.config import fit_to_data, load_params
from pipeline.core.contracts import run_dir
from pipeline.core.dataset import load_manifest, load_subset
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, write_json
from pipeline.core.provenance import code_digest, repo_root
from pipeline.core.record import FILE as RECORD, WHICH, ArmRecord
from pipeline.core.schema import read_json, show
from pipeline.core.study import StudyRecord
from pipeline.evaluate import core
from pipeline.evaluate.contracts import ModelFacts, Predictions, StudySummary

CACHE = Path(".cache") / "facts"  # model facts, by model, knobs and the models code
_NOT_TRAINED = "run `dvc repro train` first"


def _facts(name: str, knobs: dict, cache: Path) -> ModelFacts:
    key = hashlib.sha256(json.dumps({"model": name, "knobs": knobs, "code": code_digest(("models",))},
                                    sort_keys=True).encode()).hexdigest()
    path = cache / f"facts-{key}.json"
    if path.exists():
        try:
            return ModelFacts.model_validate_json(path.read_bytes())
        except ValueError:
            pass
    from pipeline.evaluate.modelfacts import model_facts

    facts = model_facts(name, knobs)
    with atomic_path(path) as tmp:
        tmp.write_text(facts.model_dump_json())
    return facts


def last_epochs_estimates(records: dict[tuple[str, int], ArmRecord], record: StudyRecord, k: int) -> dict:
    """compare()'s `estimates`: each run's mean test accuracy over its last k epochs
    (its history: each epoch evaluated on the whole test subset), and their name."""
    out = {}
    for arm in record.arms:
        out[arm] = []
        for seed in record.seeds:
            tail = records[(arm, seed)].meta.history[-k:]
            if len(tail) < k or any(r.test_acc is None for r in tail):
                raise PipelineError(f"{arm} seed={seed} has no test accuracy for each of its last {k} epochs "
                                    f"(report.mean_of_last {k}); {_NOT_TRAINED}")
            out[arm].append(sum(r.test_acc for r in tail) / k)
    return {"estimates": out, "estimate": f"the mean test accuracy of the last {k} epochs"}


def read_records(runs: Path, record: StudyRecord) -> dict[tuple[str, int], ArmRecord]:
    """Every run's record, each checked whole and against the fingerprint it trained under."""
    fps = {(r.arm, r.seed): r.fingerprint for r in record.runs}
    return {(arm, seed): ArmRecord.load(run_dir(runs, arm, seed) / RECORD, fps.get((arm, seed)))
            for arm in record.arms for seed in record.seeds}


def evaluations(records: dict[tuple[str, int], ArmRecord], labels: np.ndarray, top_n: int):
    """{(arm, seed, which): (CheckpointEval, Predictions, first-layer filters)} from the records."""
    out = {}
    for (arm, seed), rec in records.items():
        history = rec.meta.history
        if len(rec.pred("last")) != len(labels):
            raise PipelineError(f"the record of {arm} seed={seed} has {len(rec.pred('last'))} test predictions, "
                                f"the test subset {len(labels)}; {_NOT_TRAINED}")
        for which in WHICH:
            numbers = rec.meta.checkpoints.get(which)
            if numbers is None:
                continue
            pred = rec.pred(which).astype(np.int64)
            ev = core.checkpoint_eval(arm=arm, seed=seed, which=which, epoch=numbers.epoch, test_preds=pred,
                                      test_y=labels, test_loss=numbers.test_loss, train_acc=numbers.train_acc_clean,
                                      train_loss=numbers.train_loss_clean,
                                      running_acc=history[numbers.epoch - 1].train_acc, top_n=top_n)
            out[(arm, seed, which)] = (ev, Predictions(pred, pred == labels, rec.confidence(which), labels),
                                       rec.arrays["filters"])
    return out


def dvc_metrics(summary: StudySummary) -> dict:
    """Per arm, the numbers of the last checkpoint (metrics/evaluate.json)."""
    last = summary.checkpoints["last"]
    out = {}
    for name, entry in last.arms.items():
        out[name] = {"test_acc": entry.test_acc.mean, "test_acc_ci_low": entry.test_acc.ci.low,
                     "test_acc_ci_high": entry.test_acc.ci.high, "gap_clean": entry.gap_clean.mean,
                     "gap_running": entry.gap_running.mean, "n_seeds": entry.test_acc.n}
        comp = last.comparisons.get(name)
        if comp:
            out[name]["delta_vs_baseline"] = comp.welch.diff
            out[name]["p_welch"] = comp.welch.p
            out[name]["p_adjusted"] = comp.p_adjusted
    return out


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="evaluation")
    ap.add_argument("--metrics", default="metrics/evaluate.json")
    ap.add_argument("--headline", default=None, help="the headline metrics for `dvc exp show`")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    runs, data = Path(args.runs), Path(args.data)
    counts = load_manifest(data).splits
    params = fit_to_data(params, counts["train"].count, counts["test"].count)
    record = read_json(runs / "study.json", StudyRecord, _NOT_TRAINED)
    if record.arms != [a.name for a in params.arms]:
        raise PipelineError(f"{runs / 'study.json'} has the arms {', '.join(record.arms)}, params.yaml asks for "
                            f"{', '.join(a.name for a in params.arms)}; {_NOT_TRAINED}")
    cache = repo_root() / CACHE
    records = read_records(runs, record)
    d = params.data
    _, labels, _ = load_subset(data, "test", d.test_limit, d.subset_seed)
    evals = evaluations(records, labels, params.report.top_confusions)
    print(f"{len(evals)} checkpoints of {len(records)} runs, from their records", flush=True)
    # statsmodels' Holm runs a full garbage collection per call: with what is loaded
    # so far frozen out of the collector, each takes milliseconds, not a tenth of a second
    gc.freeze()
    labels = next(iter(evals.values()))[1].label
    facts = {a.name: _facts(a.train.model, a.train.knobs, cache) for a in params.arms}
    last_k = params.report.mean_of_last
    summary = core.compare({k: (v[0], v[1]) for k, v in evals.items()}, record.arms, record.seeds,
                           params.baseline.name, params.report.confidence, params.report.bootstrap,
                           params.report.top_confusions, labels, facts,
                           {a.name: {k: show(v) for k, v in a.axes.items()} for a in params.arms},
                           best_on="validation" if params.data.val_split else "test",
                           primary=params.report.primary, margin=params.report.equivalence_margin,
                           **(last_epochs_estimates(records, record, last_k) if last_k > 1 else {}))
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for (arm, seed, which), (ev, predictions, filters) in evals.items():
            dest = run_dir(tmp, arm, seed)
            dest.mkdir(parents=True, exist_ok=True)
            (dest / f"{which}.json").write_text(ev.model_dump_json(indent=1) + "\n")
            predictions.save(dest / f"{which}_predictions.npz")
            if which == "last":
                np.save(dest / "filters.npy", filters)
        (tmp / "summary.json").write_text(summary.model_dump_json(indent=1) + "\n")
    write_json(args.metrics, dvc_metrics(summary))
    if args.headline:
        write_json(args.headline, core.headline(summary, record.arms))
    for arm in record.arms:
        m = summary.checkpoints["last"].arms[arm]
        print(f"{arm}: test {100 * m.test_acc.mean:.2f}%, train clean {100 * m.train_acc_clean.mean:.2f}%, "
              f"running {100 * m.train_acc_running.mean:.2f}% (mean of {m.test_acc.n} seed(s))", flush=True)
    if record.published:
        from pipeline.evaluate.tracking import evaluation
        from pipeline.tracking.publish import publish

        publish(record, Path(args.runs), evaluation=evaluation(record, Path(args.out),
                                                               f"reports/{params.report_name}/report.html"))


if __name__ == "__main__":
    main()
