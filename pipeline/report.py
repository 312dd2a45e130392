"""Stage `report`: the study's results as reports/report.md and one self-contained report.html.

Reads what the earlier stages wrote (evaluation/summary.json and per-run
predictions, runs/*/history.csv, diagnostics.json, the checkpoints, the prepared
test images, runs/mlflow.json) and answers at a glance: did each arm help, by
how much, how sure are we, and on which classes.

Three steps, kept apart:
- `load_inputs()` reads files (the only I/O before rendering);
- `build_report()` is a pure function from those inputs to a report model: a
  list of sections, each a list of blocks (paragraphs, warnings, tables,
  figures, code, collapsible details) whose numbers are already formatted;
- `render_figures()` (pipeline.figures), `render_markdown()` and `render_html()`
  turn the model into PNGs, GitHub-renderable Markdown and standalone HTML
  (inline CSS, images as base64 data: URIs, no JavaScript, no external requests).

The folder is written atomically; the report is then logged to the MLflow parent
run of the training (skipped when training ran with --no-mlflow).
"""
from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import datetime as dt
import html
import json
import re
import sys
from pathlib import Path

import numpy as np

from pipeline import data as datamod
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_path

SECTIONS = ("Headline", "Ablation table", "Learning curves", "Per-class accuracy", "Confusion matrices",
            "Diagnostics", "Galleries", "Model facts", "Provenance")
SINGLE_SEED_WARNING = "1 seed: no confidence interval; not a finding"
CHECKPOINT = "last"  # the report's numbers are for the last checkpoint of every run
GALLERY_SIZE = 16
MINUS = "-"  # ASCII, as pipeline.stats writes it
METRICS = (("train_acc_running", "Train acc (running)"), ("train_acc_clean", "Train acc (clean)"),
           ("test_acc", "Test acc"), ("gap_running", "Gap (running)"), ("gap_clean", "Gap (clean)"))
_NOT_EVALUATED = "run `dvc repro evaluate` first"


# =========================================================================== formatting


def pct(x: float | None) -> str:
    """A fraction as % with 2 decimals: 0.98765 -> '98.77'."""
    return "n/a" if x is None else f"{x * 100:.2f}"


def signed(x: float | None) -> str:
    """A fraction as signed points with 2 decimals: 0.0184 -> '+1.84', -0.002 -> '-0.20'."""
    if x is None:
        return "n/a"
    v = round(x * 100, 2) + 0.0
    return "0.00" if v == 0 else f"{'+' if v > 0 else MINUS}{abs(v):.2f}"


def half_width(entry: dict) -> float | None:
    """Half-width of a summary's (symmetric Student-t) interval, as a fraction."""
    if entry.get("low") is None or entry.get("high") is None:
        return None
    return (entry["high"] - entry["low"]) / 2


def mean_pm(entry: dict) -> str:
    """'98.77 ± 1.02' (mean ± CI half-width, in %), '± n/a' without an interval."""
    return f"{pct(entry['mean'])} ± {pct(half_width(entry))}"


def diff_ci(d: dict) -> str:
    """'-1.00 [-3.15, +1.15]' (difference and its CI, in points)."""
    ci = f"[{signed(d['low'])}, {signed(d['high'])}]" if d.get("low") is not None else "[n/a]"
    return f"{signed(d['diff'])} {ci}"


def pval(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_rel(p: float | None) -> str:
    """'= 0.644', '< 0.001' (for inline use)."""
    text = pval(p)
    return text if text.startswith("<") or text == "n/a" else f"= {text}"


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def si(n: float, unit: str = "") -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".strip()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"


# =========================================================================== blocks


def para(*parts, tone: str | None = None) -> dict:
    """A paragraph of parts: plain strings, or (style, text) with style 'b' or 'code'."""
    return {"type": "p", "parts": [p if isinstance(p, tuple) else ("", p) for p in parts], "tone": tone}


def warning(text: str) -> dict:
    return {"type": "warning", "text": text}


def table(columns, rows, *, num=(), id=None, caption=None) -> dict:
    """Cells are strings; `num` lists the indices of right-aligned (numeric) columns."""
    return {"type": "table", "columns": list(columns), "rows": [list(map(str, r)) for r in rows],
            "num": list(num), "id": id, "caption": caption}


def figure(name: str, kind: str, args: dict, alt: str, caption: str) -> dict:
    """A figure drawn by pipeline.figures.<kind>(**args), saved as figures/<name>.png."""
    return {"type": "figure", "name": name, "kind": kind, "args": args, "alt": alt, "caption": caption}


def code(text: str, lang: str = "") -> dict:
    return {"type": "code", "text": text, "lang": lang}


def details(summary: str, blocks: list) -> dict:
    return {"type": "details", "summary": summary, "blocks": blocks}


def heading(text: str) -> dict:
    return {"type": "h3", "text": text}


def walk(blocks):
    """Every block, descending into details."""
    for b in blocks:
        yield b
        if b["type"] == "details":
            yield from walk(b["blocks"])


# =========================================================================== inputs


def _read_json(path: Path, what: str, hint: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing ({what}); {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc}); {hint}") from None


def _read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing; run `dvc repro train` first") from None


def _check_summary(summary: dict, params: Params, path: Path) -> None:
    last = summary.get("checkpoints", {}).get(CHECKPOINT)
    if not isinstance(last, dict):
        raise PipelineError(f"{path} has no '{CHECKPOINT}' checkpoint results; {_NOT_EVALUATED}")
    missing = [a.name for a in params.arms if a.name not in last.get("arms", {})]
    if missing:
        raise PipelineError(f"{path} has no results for arm {missing[0]!r} of params.yaml "
                            f"(evaluated before params changed?); {_NOT_EVALUATED}")
    if summary.get("baseline") != params.baseline.name or summary.get("n_seeds") != len(params.seeds):
        raise PipelineError(f"{path} was computed for baseline {summary.get('baseline')!r} and "
                            f"{summary.get('n_seeds')} seed(s), params.yaml asks for {params.baseline.name!r} "
                            f"and {len(params.seeds)}; {_NOT_EVALUATED}")


def _first_conv(path: Path) -> tuple[np.ndarray, dict]:
    """First-layer conv weights of a checkpoint, and what the checkpoint says made it."""
    import torch

    import models

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path} is missing; run `dvc repro train` first") from None
    model = models.create_model(ckpt["model_name"])
    model.load_state_dict(ckpt["model"])
    weight = models.first_conv(model).weight.detach().cpu().numpy()
    facts = {k: ckpt.get(k) for k in ("code_version", "dvc_experiment", "data_sha256", "epoch", "model_name")}
    return weight, facts


def load_inputs(params_path, data, runs, evaluation) -> dict:
    """Everything the report shows, read from the stages' outputs (PipelineError if missing)."""
    from pipeline.provenance import code_version, dvc_experiment

    params_path, data, runs, evaluation = map(Path, (params_path, data, runs, evaluation))
    params = load_params(params_path)
    if not evaluation.is_dir():
        raise PipelineError(f"no evaluation at {evaluation}: the folder does not exist; {_NOT_EVALUATED}")
    summary_path = evaluation / "summary.json"
    summary = _read_json(summary_path, "the evaluation summary", _NOT_EVALUATED)
    _check_summary(summary, params, summary_path)

    first = params.seeds[0]
    histories, diagnostics, predictions, filters, trained = {}, {}, {}, {}, {}
    for arm in params.arms:
        histories[arm.name] = {s: _read_history(runs / arm.name / f"seed={s}" / "history.csv")
                               for s in params.seeds}
        src = runs / arm.name / f"seed={first}"
        diag = src / "diagnostics.json"
        diagnostics[arm.name] = _read_json(diag, "diagnostics", "run `dvc repro train`") if diag.exists() else None
        npz = evaluation / arm.name / f"seed={first}" / f"{CHECKPOINT}_predictions.npz"
        try:
            with np.load(npz) as z:
                predictions[arm.name] = {k: z[k] for k in ("pred", "correct", "confidence", "label")}
        except FileNotFoundError:
            raise PipelineError(f"{npz} is missing; {_NOT_EVALUATED}") from None
        filters[arm.name], trained[arm.name] = _first_conv(src / "model.pt")

    manifest = datamod.load_manifest(data)
    x, y = datamod.load_split(data, "test")
    idx = datamod.stratified_subset(y, params.data.test_limit, params.data.subset_seed)
    labels = next(iter(predictions.values()))["label"]
    if len(idx) != len(labels) or not np.array_equal(y[idx], labels):
        raise PipelineError(f"the test images in {data} are not the ones {evaluation} was computed on; "
                            f"{_NOT_EVALUATED}")
    mlflow_path = runs / "mlflow.json"
    return {
        "params": params,
        "params_text": params_path.read_text(),
        "summary": summary,
        "histories": histories,
        "diagnostics": diagnostics,
        "predictions": predictions,
        "test_x": x,  # memory-mapped; the galleries index the few images they show
        "test_index": idx,
        "filters": filters,
        "trained": trained,
        "manifest": manifest,
        "mlflow": _read_json(mlflow_path, "MLflow run ids", "run `dvc repro train`") if mlflow_path.exists() else None,
        "code_version": code_version(),
        "dvc_experiment": dvc_experiment(),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# =========================================================================== the model


def build_report(inp: dict) -> dict:
    """The report model: {"title", "sections": [{"title", "id", "blocks"}]}. Pure: no I/O."""
    params: Params = inp["params"]
    summary = inp["summary"]
    last = summary["checkpoints"][CHECKPOINT]
    arms = [a.name for a in params.arms]
    from pipeline.figures import arm_colours

    ctx = {
        "params": params, "summary": summary, "last": last, "arms": arms,
        "baseline": summary["baseline"], "classes": list(summary.get("classes") or datamod.CLASSES),
        "conf": summary["confidence"], "colours": arm_colours(arms),
        "others": [a for a in arms if a in last["comparisons"]],
    }
    ctx["clabel"] = f"{ctx['conf'] * 100:g}% CI"
    builders = (_headline, _ablation, _curves, _per_class, _confusion, _diagnostics, _galleries,
                _model_facts, _provenance)
    sections = [{"title": f"{i}. {title}", "id": slug(title).lower(), "blocks": build(ctx, inp)}
                for i, (title, build) in enumerate(zip(SECTIONS, builders), 1)]
    return {"title": f"Ablation report: {params.study}", "sections": sections}


def _significant(p, alpha) -> bool:
    return p is not None and p < alpha


def _headline(ctx, inp) -> list:
    params, last, base = ctx["params"], ctx["last"], ctx["baseline"]
    n = len(params.seeds)
    n_images = len(inp["predictions"][base]["label"])
    n_train = inp["manifest"]["splits"]["train"]["count"]
    if params.data.train_limit is not None:
        n_train = min(n_train, params.data.train_limit)
    epochs = sorted({arm.train.epochs for arm in params.arms})
    budget = f"{'/'.join(map(str, epochs))} epoch{'s' if epochs != [1] else ''} on {count(n_train)} training images"
    blocks = [para("Study ", ("b", params.study), f" (preset {params.preset}): {plural(len(ctx['arms']), 'arm')} x "
                   f"{plural(n, 'seed')} ({', '.join(map(str, params.seeds))}), baseline ", ("b", base),
                   f", each trained {budget}. Numbers are for the last checkpoint of each run, on "
                   f"{count(n_images)} test images, with {ctx['clabel'].replace('CI', 'intervals')}; "
                   f"they hold for this training budget only.")]
    if n == 1:
        blocks.append(warning(SINGLE_SEED_WARNING))
    if not ctx["others"]:
        blocks.append(para("Only one arm: there is nothing to compare with the baseline."))
    alpha = 1 - ctx["conf"]
    base_acc = last["arms"][base]["test_acc"]
    multi = len(ctx["others"]) > 1
    for arm in ctx["others"]:
        c = last["comparisons"][arm]
        w, acc = c["welch"], last["arms"][arm]["test_acc"]
        seeds_sig = _significant(w["p"], alpha)
        images_sig = _significant(c["paired_bootstrap"]["p"], alpha)
        if w.get("low") is None:
            tone, answer = "neutral", "no finding"
        elif not seeds_sig:
            tone, answer = "neutral", "no significant difference"
        elif w["diff"] > 0:
            tone, answer = "good", "helped"
        else:
            tone, answer = "bad", "hurt"
        if n == 1:
            accs = f"Test accuracy {pct(acc['mean'])}% vs {pct(base_acc['mean'])}% (one run each)"
        else:
            accs = (f"Test accuracy {mean_pm(acc)}% vs {mean_pm(base_acc)}% "
                    f"(mean ± {ctx['clabel']} half-width over {n} seeds)")
        parts = [("b", arm), " vs ", ("b", base), ": ", ("b", answer), f". {accs}. Over seeds (Welch's t): ",
                 ("b", c["verdict"]), "."]
        if multi and w.get("p_holm") is not None:
            held = _significant(w["p_holm"], alpha)
            parts.append(f" Holm-adjusted over {len(ctx['others'])} comparisons: p = {pval(w['p_holm'])}, "
                         f"{'significant' if held else 'not significant'}.")
        parts += [" Over test images (paired bootstrap): ", ("b", c["verdict_images"]), "."]
        if images_sig and not seeds_sig and w.get("low") is not None:
            parts.append(" The per-image difference holds for these trained models, but not across seeds: "
                         "it may be seed-to-seed noise rather than an effect of the arm.")
        elif n == 1:
            parts.append(" With one seed the per-image test speaks for these two trained models only, "
                         "not for the training recipe.")
        blocks.append(para(*parts, tone=tone))
    return blocks


def _ablation(ctx, inp) -> list:
    last, base, clabel = ctx["last"], ctx["baseline"], ctx["clabel"]
    rows = []
    for arm in ctx["arms"]:
        e = last["arms"][arm]
        rows.append([arm + (" (baseline)" if arm == base else ""), e["test_acc"]["n"]]
                    + [mean_pm(e[key]) for key, _ in METRICS])
    cols = ["Arm", "n seeds"] + [f"{label} %" for _, label in METRICS]
    blocks = [table(cols, rows, num=range(1, len(cols)), id="acc-table",
                    caption=f"Mean ± {clabel} half-width over seeds, in %. Gap = train acc - test acc; "
                            "running = accuracy over the augmented batches of the last epoch (as the recipes' "
                            "authors reported it), clean = the trained model re-evaluated on the training "
                            "set in eval mode without augmentation.")]
    multi = len(ctx["others"]) > 1
    if ctx["others"]:
        crow = []
        for arm in ctx["others"]:
            c = last["comparisons"][arm]
            w, b = c["welch"], c["paired_bootstrap"]
            mc = "; ".join(f"s{s}: {m['b01']}/{m['b10']}, p {_p_rel(m['p'])}"
                           for s, m in zip(ctx["params"].seeds, c["mcnemar_per_seed"]))
            crow.append([arm, diff_ci(w), pval(w["p"])] + ([pval(w.get("p_holm"))] if multi else [])
                        + [diff_ci(b), pval(b["p"]), mc])
        ccols = ["Arm", f"Δ test acc, seeds (Welch) [{clabel}]", "p (Welch)"] + (["p (Holm)"] if multi else []) \
            + [f"Δ test acc, images (bootstrap) [{clabel}]", "p (bootstrap)", "McNemar per seed: b01/b10, p"]
        blocks.append(table(ccols, crow, num=range(1, len(ccols) - 1), id="delta-table",
                            caption=f"Arm - baseline ({base}), in points (1 point = 1% accuracy). b01 = images "
                                    "the arm gets wrong and the baseline right; b10 = the arm right and the "
                                    "baseline wrong."))
    blocks.append(para(("b", "Methods."), " ",
                       f"Per arm: mean over seeds with a Student-t {clabel} (t quantile with n-1 degrees of "
                       "freedom). Against the baseline: Welch's unequal-variance t-test over the seeds' test "
                       "accuracies (Welch-Satterthwaite degrees of freedom), "
                       + ("with Holm-Bonferroni adjusted p over the comparisons; " if multi else "")
                       + f"a paired bootstrap over test images ({_boot_n(ctx)} resamples, stratified by class: "
                       "each image's correctness averaged over seeds, images resampled within their class, "
                       "percentile interval); and an exact McNemar test per matched seed (binomial test on the "
                       "discordant images). Significant means p < "
                       f"{1 - ctx['conf']:g}. The seeds test asks whether the training recipe differs; the "
                       "image tests ask whether these trained models differ on this test set."))
    best = ctx["summary"]["checkpoints"].get("best")
    if best:
        rows = [[arm, mean_pm(best["arms"][arm]["test_acc"]),
                 best["comparisons"][arm]["verdict"] if arm in best["comparisons"] else "(baseline)"]
                for arm in ctx["arms"] if arm in best["arms"]]
        blocks.append(details("Best checkpoint (chosen by test accuracy: optimistic, for reference only)",
                              [table(["Arm", f"Test acc % (mean ± {clabel} half-width)", "vs baseline (Welch)"],
                                     rows, num=[1], id="best-table")]))
    return blocks


def _boot_n(ctx) -> str:
    comps = ctx["last"]["comparisons"]
    return count(next(iter(comps.values()))["paired_bootstrap"]["n_resamples"]) if comps else "n/a"


def _curves(ctx, inp) -> list:
    curves = {arm: inp["histories"][arm] for arm in ctx["arms"]}
    return [figure("learning_curves", "learning_curves", {"curves": curves, "colours": ctx["colours"]},
                   "Test accuracy and train loss per epoch, one colour per arm",
                   "Mean over seeds (line) and min-max over seeds (band). Train loss is the running loss over "
                   "the (augmented) training batches of each epoch.")]


def _class_deltas(ctx) -> dict[str, list[dict | None]]:
    """Per arm, per class index: the bootstrap difference vs the baseline, or None."""
    out = {}
    for arm in ctx["others"]:
        by_group = {int(g["group"]): g for g in ctx["last"]["comparisons"][arm]["paired_bootstrap"].get("groups", [])
                    if str(g["group"]).lstrip("-").isdigit()}
        out[arm] = [by_group.get(k) for k in range(len(ctx["classes"]))]
    return out


def _excludes_zero(g: dict | None) -> bool:
    return g is not None and g.get("low") is not None and (g["low"] > 0 or g["high"] < 0)


def _per_class(ctx, inp) -> list:
    classes, arms, last = ctx["classes"], ctx["arms"], ctx["last"]
    per_arm = {arm: last["arms"][arm]["per_class_acc"] for arm in arms}
    deltas = _class_deltas(ctx)
    cols = ["Class"] + [f"{a} %" for a in arms] + [f"Δ {a} [{ctx['clabel']}]" for a in ctx["others"]]
    rows = []
    for k, name in enumerate(classes):
        row = [name] + [pct(per_arm[a][k]) for a in arms]
        for a in ctx["others"]:
            g = deltas[a][k]
            row.append("n/a" if g is None else diff_ci(g) + (" *" if _excludes_zero(g) else ""))
        rows.append(row)
    blocks = [figure("per_class", "per_class_bars", {"classes": classes, "per_arm": per_arm,
                                                    "colours": ctx["colours"]},
                     "Per-class test accuracy per arm",
                     "Per-class test accuracy, mean over seeds.")]
    if ctx["others"]:
        blocks.append(figure("per_class_delta", "delta_heatmap",
                             {"classes": classes, "deltas": deltas, "confidence": ctx["conf"]},
                             "Per-class accuracy difference, arm minus baseline",
                             f"Arm - baseline per class, in points, from the stratified paired bootstrap; * marks "
                             f"classes whose {ctx['clabel']} excludes 0."))
    blocks.append(table(cols, rows, num=range(1, len(cols)), id="class-table",
                        caption="Per-class test accuracy (mean over seeds, %) and the difference to the baseline "
                                f"in points with its bootstrap {ctx['clabel']}; * = the interval excludes 0."))
    return blocks


def _confusion(ctx, inp) -> list:
    last = ctx["last"]
    blocks = [figure("confusion", "confusion_matrices",
                     {"classes": ctx["classes"], "matrices": {a: last["arms"][a]["confusion"] for a in ctx["arms"]}},
                     "Confusion matrices per arm, row-normalised",
                     "Summed over seeds, each row normalised to 100% of its true class; off-diagonal cells "
                     "are the mistakes.")]
    rows = []
    for arm in ctx["arms"]:
        top = last["arms"][arm]["top_confusions"]
        if not top:
            rows.append([arm, "(no mistakes)", "", "", ""])
        for t in top:
            rows.append([arm, t["true"], t["pred"], count(t["count"]), pct(t["rate"])])
    blocks.append(table(["Arm", "True class", "Predicted as", "Images (all seeds)", "% of true class"], rows,
                        num=[3, 4], id="confusion-table", caption="The most frequent confusions per arm."))
    return blocks


def _diagnostics(ctx, inp) -> list:
    seed = ctx["params"].seeds[0]
    blocks = [para(f"Seed {seed} of each arm, recorded during training: gradients at the middle step of each "
                   "epoch, update-to-weight ratio ||W_end - W_start|| / ||W_start|| over each epoch, and "
                   "weight histograms at the recorded epochs. Conv and linear weights only.")]
    for i, arm in enumerate(ctx["arms"]):
        d = inp["diagnostics"].get(arm)
        blocks.append(heading(arm))
        if not d or not d.get("layers"):
            blocks.append(para("No diagnostics were recorded for this run."))
            continue
        s = f"{i:02d}_{slug(arm)}"
        layers = d["layers"]
        if d.get("gradients"):
            blocks.append(figure(f"grad_flow_{s}", "gradient_flow",
                                 {"layers": layers, "rows": d["gradients"], "arm": arm},
                                 f"Gradient flow per layer, {arm}",
                                 "Mean and max |grad| per layer, one line per epoch (log scale). Vanishing "
                                 "gradients show as a steep drop towards the input layers."))
        if d.get("update_ratio"):
            blocks.append(figure(f"update_ratio_{s}", "update_ratio",
                                 {"layers": layers, "rows": d["update_ratio"], "arm": arm},
                                 f"Update-to-weight ratio per layer, {arm}",
                                 "How far each layer's weights moved during each epoch, relative to their "
                                 "size (log scale): a layer stuck far below the others barely learns; one "
                                 "near 1 is rewritten every epoch."))
        if d.get("weights"):
            blocks.append(figure(f"weights_{s}", "weight_histograms",
                                 {"layers": layers, "rows": d["weights"], "arm": arm},
                                 f"Weight distributions per layer, {arm}",
                                 "One panel per layer; each recorded epoch's histogram overlaid (colour = epoch)."))
    return blocks


def _galleries(ctx, inp) -> list:
    seed, classes = ctx["params"].seeds[0], ctx["classes"]
    x, index = inp["test_x"], inp["test_index"]
    blocks = [para(f"Seed {seed}, last checkpoint. Green: correct; red: wrong (true class, then the "
                   "prediction and its softmax confidence).")]
    first = inp["predictions"][ctx["arms"][0]]
    n = len(first["label"])
    sample = np.unique(np.linspace(0, n - 1, min(GALLERY_SIZE, n)).round().astype(int))
    for i, arm in enumerate(ctx["arms"]):
        p = inp["predictions"][arm]
        s = f"{i:02d}_{slug(arm)}"
        blocks.append(heading(arm))

        def grid(sel, title):
            return {"images": np.asarray(x[index[sel]]), "true": [classes[k] for k in p["label"][sel]],
                    "pred": [classes[k] for k in p["pred"][sel]],
                    "confidence": [float(c) for c in p["confidence"][sel]], "title": title}

        blocks.append(figure(f"samples_{s}", "prediction_grid", grid(sample, f"{arm}: sample test images"),
                             f"Sample predictions, {arm}", f"{len(sample)} test images spread over the test set, "
                             "the same for every arm."))
        wrong = np.flatnonzero(~p["correct"].astype(bool))
        if len(wrong):
            worst = wrong[np.argsort(-p["confidence"][wrong], kind="stable")][:GALLERY_SIZE]
            blocks.append(figure(f"mistakes_{s}", "prediction_grid",
                                 grid(worst, f"{arm}: most confident mistakes"),
                                 f"Most confident mistakes, {arm}",
                                 f"The {len(worst)} misclassified test images with the highest confidence "
                                 f"(of {count(len(wrong))} mistakes)."))
        else:
            blocks.append(para("No misclassified test images for this run."))
        w = inp["filters"][arm]
        blocks.append(figure(f"filters_{s}", "conv_filters",
                             {"weight": w, "title": f"{arm}: first-layer filters"},
                             f"First-layer convolution filters, {arm}",
                             f"{w.shape[0]} filters of {w.shape[2]}x{w.shape[3]} pixels, each scaled to its own "
                             "range and shown as RGB."))
    return blocks


def _model_facts(ctx, inp) -> list:
    facts = ctx["summary"].get("model_facts") or {}
    if not facts:
        return [para("No model facts in the evaluation summary.")]
    blocks = []
    for name, f in facts.items():
        used = [a.name for a in ctx["params"].arms if a.train.model == name]
        blocks.append(heading(name))
        blocks.append(table(["Fact", "Value"], [
            ["Arms", ", ".join(used) or "-"],
            ["Parameters", f"{count(f['params'])} ({si(f['params'])}); trainable {count(f['trainable_params'])}"],
            ["FLOPs", f"{count(f['flops'])} ({si(f['flops'], 'FLOPs')})"],
            ["MACs", f"{count(f['macs'])} ({si(f['macs'], 'MACs')})"],
            ["Convention", f["flops_convention"]],
            ["Receptive field", f"{f['receptive_field']} x {f['receptive_field']} input pixels"],
        ], id=f"facts-{slug(name)}"))
        rows = [[r["layer"], r["type"], "x".join(map(str, r["output"])) if r.get("output") else "-",
                 count(r["params"])] for r in f.get("layers", [])]
        blocks.append(details(f"Layers of {name} ({len(rows)})",
                              [table(["Layer", "Type", "Output (C x H x W)", "Parameters"], rows, num=[3])]))
    return blocks


def _provenance(ctx, inp) -> list:
    params = ctx["params"]
    trained = inp["trained"]
    sha = inp["manifest"]["data_sha256"]
    train_code = sorted({str(t.get("code_version")) for t in trained.values()})
    train_exp = sorted({str(t.get("dvc_experiment")) for t in trained.values()})
    train_sha = sorted({str(t.get("data_sha256")) for t in trained.values()})
    blocks = []
    if train_sha != [sha]:
        blocks.append(warning(f"The checkpoints were trained on data {', '.join(train_sha)}, but the prepared "
                              f"data now is {sha}."))
    d = params.data
    blocks.append(table(["Item", "Value"], [
        ["Git commit (report)", inp["code_version"]],
        ["Git commit (training, from checkpoints)", ", ".join(train_code)],
        ["DVC experiment (report)", inp["dvc_experiment"]],
        ["DVC experiment (training)", ", ".join(train_exp)],
        ["Data sha256 (manifest)", sha],
        ["Data subset", f"train_limit {_value(d.train_limit)}, test_limit {_value(d.test_limit)}, "
                         f"subset_seed {d.subset_seed}"],
        ["Generated", inp["generated"]],
    ], id="provenance-table"))
    keys = [f.name for f in dataclasses.fields(params.arms[0].train)]
    axes = {k for a in params.arms for k in a.axes}
    rows = [[k + (" (axis)" if k in axes else "")] + [_value(getattr(a.train, k)) for a in params.arms]
            for k in keys]
    blocks.append(heading("Resolved training configuration per arm"))
    blocks.append(table(["Key"] + [a.name for a in params.arms], rows, id="config-table"))
    blocks.append(details("params.yaml (as read)", [code(inp["params_text"].rstrip("\n"), "yaml")]))
    blocks.append(heading("MLflow"))
    ids = inp["mlflow"]
    if ids is None:
        blocks.append(para("Not logged to MLflow: runs/mlflow.json is absent (trained with --no-mlflow)."))
        return blocks
    blocks.append(table(["Item", "Value"], [
        ["Tracking URI", ids.get("tracking_uri", "")],
        ["Experiment id", str(ids.get("experiment_id", ""))],
        ["Parent run id", str(ids.get("parent_run_id", ""))],
    ], id="mlflow-table"))
    rows = []
    for arm in params.arms:
        for s in params.seeds:
            rows.append([arm.name, s, ids.get("runs", {}).get(f"{arm.name}/seed={s}") or "-"])
    blocks.append(table(["Arm", "Seed", "Child run id"], rows, num=[1], id="mlflow-runs"))
    blocks.append(para("This report is logged to the parent run as artifacts under ", ("code", "report/"),
                       ". Browse with ", ("code", "make mlflow-ui"), f", then experiment "
                       f"{ids.get('experiment_id')}."))
    return blocks


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# =========================================================================== rendering


def render_figures(model: dict) -> dict[str, bytes]:
    """{figure name: PNG bytes} for every figure block of the model."""
    from pipeline import figures

    out = {}
    for section in model["sections"]:
        for b in walk(section["blocks"]):
            if b["type"] == "figure":
                out[b["name"]] = getattr(figures, b["kind"])(**b["args"])
    return out


# Backslash-escaped for GitHub: emphasis, code, links, table pipes, and '<' where it could open a tag.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|]|<(?=[A-Za-z/!?]))")


def md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _md_parts(parts) -> str:
    out = []
    for style, text in parts:
        if style == "b":
            out.append(f"**{md_escape(text)}**")
        elif style == "code":
            out.append(f"`{text}`")
        else:
            out.append(md_escape(text))
    return "".join(out)


def _md_block(b: dict) -> str:
    t = b["type"]
    if t == "p":
        return _md_parts(b["parts"])
    if t == "warning":
        return f"> **Warning: {md_escape(b['text'])}**"
    if t == "h3":
        return f"### {md_escape(b['text'])}"
    if t == "table":
        align = ["---:" if i in b["num"] else ":---" for i in range(len(b["columns"]))]
        lines = ["| " + " | ".join(md_escape(c) for c in b["columns"]) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in b["rows"]]
        if b.get("caption"):
            lines += ["", f"*{md_escape(b['caption'])}*"]
        return "\n".join(lines)
    if t == "figure":
        return f"![{md_escape(b['alt'])}](figures/{b['name']}.png)\n\n*{md_escape(b['caption'])}*"
    if t == "code":
        fence = "````" if "```" in b["text"] else "```"
        return f"{fence}{b['lang']}\n{b['text']}\n{fence}"
    if t == "details":
        inner = "\n\n".join(_md_block(x) for x in b["blocks"])
        return f"<details>\n<summary>{html.escape(b['summary'])}</summary>\n\n{inner}\n\n</details>"
    raise ValueError(f"unknown block type {t!r}")


def render_markdown(model: dict) -> str:
    out = [f"# {md_escape(model['title'])}", ""]
    out.append(" · ".join(f"[{md_escape(s['title'])}](#{_gh_anchor(s['title'])})" for s in model["sections"]))
    for s in model["sections"]:
        out += ["", f"## {md_escape(s['title'])}", ""]
        out.append("\n\n".join(_md_block(b) for b in s["blocks"]))
    return "\n".join(out) + "\n"


def _gh_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa;
        --good:#1a7f37; --bad:#cf222e; --warn-bg:#fff8c5; --warn-line:#d4a72c; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 28px; margin: 0 0 8px; }
h2 { font-size: 21px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
nav { font-size: 13px; color: var(--muted); }
nav a { color: #0969da; text-decoration: none; margin-right: 12px; }
p { margin: 8px 0; }
p.tone-good, p.tone-bad, p.tone-neutral { padding: 8px 12px; border-left: 4px solid; background: var(--soft); }
p.tone-good { border-color: var(--good); }
p.tone-bad { border-color: var(--bad); }
p.tone-neutral { border-color: #8c959f; }
.warning { background: var(--warn-bg); border: 1px solid var(--warn-line); border-radius: 6px;
           padding: 10px 14px; font-weight: 600; margin: 10px 0; }
.table-wrap { overflow-x: auto; margin: 10px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--soft); text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.caption { font-size: 12.5px; color: var(--muted); margin: 4px 0 0; max-width: 1000px; }
figure { margin: 14px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 12.5px; color: var(--muted); }
pre { background: var(--soft); padding: 10px 12px; overflow-x: auto; font-size: 12.5px; border-radius: 6px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 90%; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
"""


def _html_parts(parts) -> str:
    out = []
    for style, text in parts:
        t = html.escape(str(text))
        out.append(f"<strong>{t}</strong>" if style == "b" else f"<code>{t}</code>" if style == "code" else t)
    return "".join(out)


def _html_block(b: dict, images: dict[str, bytes]) -> str:
    t = b["type"]
    e = html.escape
    if t == "p":
        cls = f' class="tone-{b["tone"]}"' if b.get("tone") else ""
        return f"<p{cls}>{_html_parts(b['parts'])}</p>"
    if t == "warning":
        return f'<div class="warning" role="alert">Warning: {e(b["text"])}</div>'
    if t == "h3":
        return f"<h3>{e(b['text'])}</h3>"
    if t == "table":
        tid = f' id="{e(b["id"])}"' if b.get("id") else ""
        head = "".join(f"<th>{e(c)}</th>" for c in b["columns"])
        body = "".join("<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i in b["num"] else f"<td>{e(c)}</td>"
                                         for i, c in enumerate(row)) + "</tr>" for row in b["rows"])
        cap = f'<p class="caption">{e(b["caption"])}</p>' if b.get("caption") else ""
        return f'<div class="table-wrap"><table{tid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{cap}'
    if t == "figure":
        data = base64.b64encode(images[b["name"]]).decode("ascii")
        return (f'<figure id="fig-{e(b["name"])}"><img src="data:image/png;base64,{data}" alt="{e(b["alt"])}">'
                f"<figcaption>{e(b['caption'])}</figcaption></figure>")
    if t == "code":
        lang = f' class="language-{e(b["lang"])}"' if b["lang"] else ""
        return f"<pre><code{lang}>{e(b['text'])}</code></pre>"
    if t == "details":
        inner = "\n".join(_html_block(x, images) for x in b["blocks"])
        return f"<details><summary>{e(b['summary'])}</summary>\n{inner}\n</details>"
    raise ValueError(f"unknown block type {t!r}")


def render_html(model: dict, images: dict[str, bytes]) -> str:
    e = html.escape
    nav = "".join(f'<a href="#{e(s["id"])}">{e(s["title"])}</a>' for s in model["sections"])
    body = []
    for s in model["sections"]:
        blocks = "\n".join(_html_block(b, images) for b in s["blocks"])
        body.append(f'<section id="{e(s["id"])}">\n<h2>{e(s["title"])}</h2>\n{blocks}\n</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{e(model['title'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{e(model['title'])}</h1>\n<nav>{nav}</nav>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_report(model: dict, out: Path) -> None:
    """reports/{report.md, report.html, figures/*.png}, atomically: all of it or the previous folder."""
    images = render_figures(model)
    with atomic_path(out) as tmp:
        (tmp / "figures").mkdir(parents=True)
        for name, png in images.items():
            (tmp / "figures" / f"{name}.png").write_bytes(png)
        (tmp / "report.md").write_text(render_markdown(model), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(model, images), encoding="utf-8")


def log_to_mlflow(index: Path, out: Path) -> None:
    """The report onto the MLflow parent run of the training (nothing when it trained without MLflow)."""
    if not index.exists():
        return
    from pipeline.tracking import Tracker

    ids = json.loads(index.read_text())
    try:
        tracker = Tracker.for_existing(ids["tracking_uri"])
        run = ids["parent_run_id"]
        for name in ("report.md", "report.html"):
            tracker.log_artifact(run, out / name, "report")
        for png in sorted((out / "figures").glob("*.png")):
            tracker.log_artifact(run, png, "report/figures")
    except Exception as exc:  # the report itself is written; a store problem must not undo it
        print(f"warning: the report was not logged to MLflow ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''})", file=sys.stderr)


@cli
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--evaluation", default="evaluation")
    ap.add_argument("--out", default="reports")
    args = ap.parse_args(argv)

    inputs = load_inputs(args.params, args.data, args.runs, args.evaluation)
    model = build_report(inputs)
    out = Path(args.out)
    write_report(model, out)
    log_to_mlflow(Path(args.runs) / "mlflow.json", out)
    print(f"report: {out / 'report.md'}, {out / 'report.html'} ({len(list((out / 'figures').glob('*.png')))} figures)")


if __name__ == "__main__":
    main()
