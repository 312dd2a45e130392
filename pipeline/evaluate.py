"""Stage `evaluate`: every arm x seed, on its last and its best checkpoint.

Per checkpoint: test accuracy and loss, per-class accuracy, the confusion
matrix, train accuracy measured clean (eval mode, no augmentation) beside the
running accuracy over the augmented batches of the last epoch, both
generalization gaps, the top confusion pairs, and per-image predictions and
confidences (kept for paired tests). Then statistics across seeds and against
the baseline arm (pipeline.stats), and model facts per architecture.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

import models
from pipeline import data as datamod
from pipeline import stats
from pipeline.config import Arm, Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_path, write_json
from pipeline.modelfacts import model_facts
from pipeline.train import load_tensors, run_dir
from pipeline.trainer import Tensors, evaluate, resolve_device

CHECKPOINTS = ("last", "best")
_FILES = {"last": "model.pt", "best": "best.pt"}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts: rows are true classes, columns predictions."""
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def top_confusions(cm: np.ndarray, n: int, classes=datamod.CLASSES) -> list[dict]:
    """The n largest off-diagonal cells: images of `true` predicted as `pred`."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:n]
    rows = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[0])
        if off[t, p] == 0:
            break
        rows.append({"true": classes[t], "pred": classes[p], "count": int(off[t, p]),
                     "rate": float(off[t, p] / max(cm[t].sum(), 1))})
    return rows


def per_class_accuracy(cm: np.ndarray) -> list[float]:
    return (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()


def load_checkpoint(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = models.create_model(ckpt["model_name"])
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def running_train_acc(history_csv: Path) -> float:
    with open(history_csv) as f:
        return float(list(csv.DictReader(f))[-1]["train_acc"])


def evaluate_run(arm: Arm, seed: int, runs: Path, train: Tensors, test: Tensors,
                 top_n: int) -> dict[str, tuple[dict, dict]]:
    """{checkpoint: (metrics, per-image arrays)} for one arm x seed."""
    device = train.x.device
    src = run_dir(runs, arm, seed)
    running = running_train_acc(src / "history.csv")
    y = test.y.cpu().numpy()
    out = {}
    for which in CHECKPOINTS:
        path = src / _FILES[which]
        if not path.exists():
            continue
        model, ckpt = load_checkpoint(path, device)
        cfg = dataclasses.replace(arm.train, compile=False)
        te = evaluate(model, test, cfg, device)
        tr = evaluate(model, train, cfg, device)
        preds = te.preds.numpy()
        cm = confusion(y, preds, len(datamod.CLASSES))
        metrics = {
            "arm": arm.name, "seed": seed, "checkpoint": which, "epoch": ckpt["epoch"],
            "test_acc": te.acc, "test_loss": te.loss,
            "train_acc_clean": tr.acc, "train_loss_clean": tr.loss,
            "train_acc_running": running,
            "gap_clean": tr.acc - te.acc,
            "gap_running": running - te.acc,
            "per_class_acc": per_class_accuracy(cm),
            "confusion": cm.tolist(),
            "top_confusions": top_confusions(cm, top_n),
        }
        arrays = {"pred": preds.astype(np.int64), "correct": preds == y,
                  "confidence": te.probs.max(1).values.numpy().astype(np.float32),
                  "label": y.astype(np.int64)}
        out[which] = (metrics, arrays)
    return out


def compare(params: Params, results: dict) -> dict:
    """Statistics across seeds per arm, and each arm against the baseline."""
    conf = params.report.confidence
    alpha = 1 - conf
    summary = {"baseline": params.baseline.name, "confidence": conf, "n_seeds": len(params.seeds),
               "checkpoints": {}}
    labels = None
    for which in CHECKPOINTS:
        if not all((arm.name, s, which) in results for arm in params.arms for s in params.seeds):
            continue
        arms = {}
        for arm in params.arms:
            rows = [results[(arm.name, s, which)][0] for s in params.seeds]
            entry = {key: stats.summarize([r[key] for r in rows], conf).as_dict()
                     for key in ("test_acc", "train_acc_clean", "train_acc_running", "gap_clean", "gap_running")}
            entry["per_class_acc"] = np.mean([r["per_class_acc"] for r in rows], axis=0).tolist()
            entry["confusion"] = np.sum([r["confusion"] for r in rows], axis=0).tolist()
            entry["top_confusions"] = top_confusions(np.array(entry["confusion"]), params.report.top_confusions)
            arms[arm.name] = entry
            labels = results[(arm.name, params.seeds[0], which)][1]["label"]
        base = params.baseline
        base_acc = [results[(base.name, s, which)][0]["test_acc"] for s in params.seeds]
        base_correct = np.stack([results[(base.name, s, which)][1]["correct"] for s in params.seeds])
        comparisons = {}
        for arm in params.arms:
            if arm.name == base.name:
                continue
            acc = [results[(arm.name, s, which)][0]["test_acc"] for s in params.seeds]
            correct = np.stack([results[(arm.name, s, which)][1]["correct"] for s in params.seeds])
            w = stats.welch(acc, base_acc, conf)
            boot = stats.paired_bootstrap(correct, base_correct, n_resamples=params.report.bootstrap,
                                          confidence=conf, seed=0, groups=labels)
            comparisons[arm.name] = {
                "welch": w.as_dict(),
                "paired_bootstrap": boot.as_dict(),
                "mcnemar_per_seed": [stats.mcnemar(correct[i], base_correct[i]).as_dict()
                                     for i in range(len(params.seeds))],
                "verdict": stats.verdict(w.ci, w.p, alpha, reason=w.reason or "single seed"),
                "verdict_images": stats.verdict(boot.diff, boot.p, alpha),
            }
        adjusted = stats.holm([c["welch"]["p"] for c in comparisons.values()])
        for c, p_adj in zip(comparisons.values(), adjusted):
            c["welch"]["p_holm"] = p_adj
        summary["checkpoints"][which] = {"arms": arms, "comparisons": comparisons}
    return summary


def dvc_metrics(summary: dict) -> dict:
    """The few numbers `dvc metrics show` / `dvc exp show` list per arm (last checkpoint)."""
    last = summary["checkpoints"].get("last", {})
    out = {}
    for name, entry in last.get("arms", {}).items():
        out[name] = {
            "test_acc": entry["test_acc"]["mean"],
            "test_acc_ci_low": entry["test_acc"]["low"],
            "test_acc_ci_high": entry["test_acc"]["high"],
            "gap_clean": entry["gap_clean"]["mean"],
            "gap_running": entry["gap_running"]["mean"],
            "n_seeds": entry["test_acc"]["n"],
        }
        comp = last["comparisons"].get(name)
        if comp:
            out[name]["delta_vs_baseline"] = comp["welch"]["diff"]
            out[name]["p_welch"] = comp["welch"]["p"]
    return out


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="evaluation")
    ap.add_argument("--metrics", default="metrics/evaluate.json")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    runs = Path(args.runs)
    missing = [str(run_dir(runs, a, s)) for a, s in params.runs() if not (run_dir(runs, a, s) / "model.pt").exists()]
    if missing:
        raise PipelineError(f"no trained model in {missing[0]} (and {len(missing) - 1} more); run `dvc repro train` first")
    device = resolve_device(params.arms[0].train.device)
    train, test = load_tensors(Path(args.data), params, device)

    results = {}
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for arm, seed in params.runs():
            dest = run_dir(tmp, arm, seed)
            dest.mkdir(parents=True)
            for which, (metrics, arrays) in evaluate_run(arm, seed, runs, train, test,
                                                         params.report.top_confusions).items():
                results[(arm.name, seed, which)] = (metrics, arrays)
                (dest / f"{which}.json").write_text(json.dumps(metrics, indent=1) + "\n")
                np.savez_compressed(dest / f"{which}_predictions.npz", **arrays)
            m = results[(arm.name, seed, "last")][0]
            print(f"{arm.name} seed={seed}: test {m['test_acc']:.4f}, train clean {m['train_acc_clean']:.4f}, "
                  f"running {m['train_acc_running']:.4f}", flush=True)
        summary = compare(params, results)
        summary["classes"] = list(datamod.CLASSES)
        summary["model_facts"] = {name: model_facts(name) for name in sorted({a.train.model for a in params.arms})}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_json(args.metrics, dvc_metrics(summary))
    log_to_mlflow(runs / "mlflow.json", results, Path(args.out) / "summary.json")


def log_to_mlflow(index: Path, results: dict, summary: Path) -> None:
    """Evaluation metrics onto each arm x seed's run; the summary onto the parent run."""
    if not index.exists():  # trained with --no-mlflow
        return
    from pipeline.tracking import Tracker

    ids = json.loads(index.read_text())
    tracker = Tracker.for_existing(ids["tracking_uri"])
    for (arm, seed, which), (m, _) in results.items():
        run_id = ids["runs"].get(f"{arm}/seed={seed}")
        if run_id:
            tracker.log_metrics(run_id, {f"eval_{which}_{k}": m[k] for k in (
                "test_acc", "test_loss", "train_acc_clean", "gap_clean", "gap_running")})
    tracker.log_artifact(ids["parent_run_id"], summary, "evaluation")


if __name__ == "__main__":
    main()
