"""Stage `evaluate`: every arm x seed that trained, on its last and its best checkpoint.

Per checkpoint: test accuracy and loss, per-class accuracy, the confusion
matrix, train accuracy measured clean (eval mode, no augmentation) beside the
running accuracy over the augmented batches of that checkpoint's epoch, both
generalization gaps, the top confusion pairs, and per-image predictions and
confidences (kept for paired tests). Then the statistics across seeds and
against the baseline (pipeline.evaluate.core), and model facts per arm.

A checkpoint is evaluated once: its result is kept in `.cache/evaluations/`
under the checkpoint's checksum, the data and the evaluation code, and reused
while none of them changes.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.core.config import Params, load_params
from pipeline.core.contracts import CHECKPOINTS, Checkpoint, read_history, read_json, run_dir
from pipeline.core.dataset import load_manifest, load_subset, load_training
from pipeline.core.errors import PipelineError, cli
from pipeline.core.io import atomic_path, sha256_file, write_json
from pipeline.core.provenance import code_digest, repo_root
from pipeline.core.schema import show
from pipeline.core.study import StudyRecord
from pipeline.evaluate import core
from pipeline.evaluate.contracts import CheckpointEval, ModelFacts, Predictions, StudySummary

CACHE = Path(".cache") / "evaluations"
EVAL_CODE = ("models", "pipeline/arm", "pipeline/evaluate")
_NOT_TRAINED = "run `dvc repro train` first"


class Evaluator:
    """Loads the data and the models only when a checkpoint is not in the cache."""

    def __init__(self, params: Params, data: Path):
        self.params, self.folder = params, Path(data)
        self._tensors = None
        self._device = None

    def tensors(self):
        if self._tensors is None:
            from pipeline.arm.loop import Tensors, resolve_device

            self._device = resolve_device(self.params.run.device)
            d = self.params.data
            (tx, ty, _), _ = load_training(self.folder, d.train_limit, d.val_split, d.subset_seed)  # trained on
            vx, vy, _ = load_subset(self.folder, "test", d.test_limit, d.subset_seed)
            self._tensors = (Tensors.from_numpy(tx, ty, self._device), Tensors.from_numpy(vx, vy, self._device))
        return self._tensors

    def evaluate(self, path: Path, arm: str, seed: int, which: str, history, top_n: int):
        """(CheckpointEval, Predictions, first-layer filters) of one checkpoint."""
        import torch

        import models
        from pipeline.arm.augment import Augmenter
        from pipeline.arm.loop import eval_batch_size, evaluate

        train, test = self.tensors()
        try:
            ckpt = Checkpoint.load(path)
            cfg = ckpt.config
            model = models.create_model(cfg["model"], **cfg["knobs"])
            model.load_state_dict(ckpt.model)
        except Exception as exc:  # noqa: BLE001  truncated, garbled or foreign
            raise PipelineError(f"cannot load the checkpoint {path} ({type(exc).__name__}); {_NOT_TRAINED}") from None
        model = model.to(self._device).to(memory_format=torch.channels_last)
        aug = Augmenter("none", cfg["norm"], self._device)
        bs = eval_batch_size(self.params.run.eval_batch_size, self._device)
        te = evaluate(model, test, aug, cfg["precision"], bs)
        tr = evaluate(model, train, aug, cfg["precision"], bs)
        y = test.y.cpu().numpy()
        ev = core.checkpoint_eval(
            arm=arm, seed=seed, which=which, epoch=ckpt.epoch, test_preds=te.preds.numpy(), test_y=y,
            test_loss=te.loss, train_acc=tr.acc, train_loss=tr.loss,
            running_acc=history[ckpt.epoch - 1].train_acc,  # the checkpoint's own epoch
            top_n=top_n)
        pred = te.preds.numpy().astype(np.int64)
        predictions = Predictions(pred, pred == y, te.probs.max(1).values.numpy().astype(np.float32), y)
        filters = models.first_conv(model).weight.detach().float().cpu().numpy()
        return ev, predictions, filters


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


def last_epochs_estimates(runs: Path, record: StudyRecord, k: int) -> dict:
    """compare()'s `estimates`: each run's mean test accuracy over its last k epochs
    (history.csv: each epoch evaluated on the whole test subset), and their name."""
    out = {}
    for arm in record.arms:
        out[arm] = []
        for seed in record.seeds:
            path = run_dir(runs, arm, seed) / "history.csv"
            tail = read_history(path)[-k:]
            if len(tail) < k or any(r.test_acc is None for r in tail):
                raise PipelineError(f"{path} has no test accuracy for each of its last {k} epochs "
                                    f"(report.mean_of_last {k}); {_NOT_TRAINED}")
            out[arm].append(sum(r.test_acc for r in tail) / k)
    return {"estimates": out, "estimate": f"the mean test accuracy of the last {k} epochs"}


def evaluate_study(params: Params, record: StudyRecord, runs: Path, data: Path, cache: Path):
    """{(arm, seed, which): (CheckpointEval, Predictions, filters)}, from the cache where it can."""
    evaluator = Evaluator(params, data)
    d = params.data
    # what decides an evaluation besides the checkpoint: data, code, and how it runs
    context = json.dumps({"data": load_manifest(data).data_sha256,
                          "subset": [d.train_limit, d.test_limit, d.subset_seed, d.val_split],
                          "code": code_digest(EVAL_CODE), "top_n": params.report.top_confusions,
                          "device": params.run.device, "eval_batch_size": params.run.eval_batch_size})
    top_n = params.report.top_confusions
    out = {}
    done, seconds, images = 0, 0.0, 0
    for arm in record.arms:
        for seed in record.seeds:
            src = run_dir(runs, arm, seed)
            if not (src / "model.pt").exists():
                raise PipelineError(f"no trained model in {src}; {_NOT_TRAINED}")
            history = read_history(src / "history.csv")
            for which, file in CHECKPOINTS.items():
                path = src / file
                if not path.exists():
                    continue
                key = hashlib.sha256(f"{sha256_file(path)}:{context}:{[r.train_acc for r in history]}"
                                     .encode()).hexdigest()
                hit = _load_cached(cache / key, arm, seed)
                if hit is None:
                    t0 = time.perf_counter()
                    hit = evaluator.evaluate(path, arm, seed, which, history, top_n)
                    seconds += time.perf_counter() - t0
                    done += 1
                    images += sum(len(t) for t in evaluator.tensors())
                    _store(cache / key, *hit)
                out[(arm, seed, which)] = hit
    print(f"evaluated {done} of {len(out)} checkpoints ({images:,} images, {seconds:.1f} s); "
          f"{len(out) - done} from the cache", flush=True)
    return out


def _load_cached(folder: Path, arm: str, seed: int):
    """A cached evaluation, or None; a damaged one is removed (with one line) and redone."""
    if not folder.exists():
        return None
    try:
        ev = CheckpointEval.model_validate_json((folder / "eval.json").read_bytes())
        predictions = Predictions.load(folder / "predictions.npz")
        filters = np.load(folder / "filters.npy")
    except Exception as exc:  # noqa: BLE001  truncated, garbled or partly missing
        print(f"warning: the cached evaluation {folder} is damaged ({type(exc).__name__}); evaluating again",
              file=sys.stderr, flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return ev.model_copy(update={"arm": arm, "seed": seed}), predictions, filters


def _store(folder: Path, ev: CheckpointEval, predictions: Predictions, filters: np.ndarray) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "eval.json").write_text(ev.model_dump_json())
        predictions.save(tmp / "predictions.npz")
        np.save(tmp / "filters.npy", filters)


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
    record = read_json(runs / "study.json", StudyRecord, _NOT_TRAINED)
    if record.arms != [a.name for a in params.arms]:
        raise PipelineError(f"{runs / 'study.json'} has the arms {', '.join(record.arms)}, params.yaml asks for "
                            f"{', '.join(a.name for a in params.arms)}; {_NOT_TRAINED}")
    cache = repo_root() / CACHE
    evals = evaluate_study(params, record, runs, data, cache)
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
                           **(last_epochs_estimates(runs, record, last_k) if last_k > 1 else {}))
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
        print(f"{arm}: test {m.test_acc.mean:.4f}, train clean {m.train_acc_clean.mean:.4f}, "
              f"running {m.train_acc_running.mean:.4f} (mean of {m.test_acc.n} seed(s))", flush=True)
    if record.tracking_key is not None:
        from pipeline.evaluate.tracking import log_evaluation

        log_evaluation(record, summary, evals, Path(args.out) / "summary.json",
                       f"reports/{params.report_name}/report.html")


if __name__ == "__main__":
    main()
