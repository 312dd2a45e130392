"""The report's figures: matplotlib's object API (no pyplot, no global backend),
one function per figure.

Every function takes plain data (lists, numpy arrays, dicts) and returns the
figure as PNG bytes; nothing here reads or writes files. Accuracies come in as
fractions and are drawn in %.
"""
from __future__ import annotations

import io
import itertools
import math

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

DPI = 100
GOOD, BAD = "#1a7f37", "#cf222e"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # bytes depend on the data only
    return buf.getvalue()


def _subplots(*args, **kw):
    fig = Figure(figsize=kw.pop("figsize"), layout=kw.pop("layout", None))
    return fig, fig.subplots(*args, **kw)


def _epoch_colours(epochs):
    cmap = colormaps["viridis"]
    lo, hi = min(epochs), max(epochs)
    return {e: cmap(0.0 if hi == lo else (e - lo) / (hi - lo)) for e in epochs}


# --------------------------------------------------------------------------- curves


def learning_curves(curves: dict[str, dict[int, list[dict]]], colours: dict[str, str]) -> bytes:
    """Held-out accuracy (validation with a split, else test) and train loss vs epoch:
    mean over seeds, min-max band, one colour per arm."""
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    first = next(iter(next(iter(curves.values())).values()), [{}])
    split = "validation" if first and first[0].get("val_acc") is not None else "test"
    acc_key = "val_acc" if split == "validation" else "test_acc"
    panels = ((acc_key, f"{split} accuracy (%)", 100.0), ("train_loss", "train loss (running)", 1.0))
    for ax, (key, label, scale) in zip(axes, panels):
        for arm, seeds in curves.items():
            n_epochs = min(len(rows) for rows in seeds.values())
            if n_epochs == 0:
                continue
            epochs = [int(r["epoch"]) for r in next(iter(seeds.values()))[:n_epochs]]
            vals = np.array([[float(r[key]) * scale for r in rows[:n_epochs]] for rows in seeds.values()])
            ax.plot(epochs, vals.mean(0), color=colours[arm], marker="o", ms=3,
                    label=f"{arm} (mean of {len(vals)} seed{'s' if len(vals) > 1 else ''})")
            if len(vals) > 1:
                ax.fill_between(epochs, vals.min(0), vals.max(0), color=colours[arm], alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title(f"{split} accuracy (band: min-max over seeds)")
    axes[1].set_title("train loss (band: min-max over seeds)")
    fig.tight_layout()
    return _png(fig)


def interaction_plot(levels: dict[str, list[str]], axes: dict[str, dict[str, str]],
                     means: dict[str, tuple[float, float]]) -> bytes:
    """A study with several axes: mean test accuracy (%, with its interval) against the
    levels of the first factor, one line per level of the second, one panel per level
    of any further factors. Parallel lines: no interaction."""
    first, second, *rest = levels
    panels = [dict(zip(rest, combo)) for combo in itertools.product(*(levels[r] for r in rest))] or [{}]
    fig, axs = _subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 3.6), squeeze=False)
    for ax, at in zip(axs[0], panels):
        for j, level in enumerate(levels[second]):
            arms = [next((a for a, v in axes.items() if v == {**at, first: x, second: level}), None)
                    for x in levels[first]]
            ys = [means[a][0] if a else np.nan for a in arms]
            errs = [means[a][1] if a else 0.0 for a in arms]
            ax.errorbar(range(len(ys)), ys, yerr=errs, marker="o", capsize=3, label=f"{second}={level}",
                        color=colormaps["tab10"](j % 10))
        ax.set_xticks(range(len(levels[first])), levels[first])
        ax.set_xlabel(first)
        ax.set_title(", ".join(f"{k}={v}" for k, v in at.items()), fontsize=9)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("test accuracy (%)")
    axs[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- per class


def per_class_bars(classes, per_arm: dict[str, list[float]], colours: dict[str, str]) -> bytes:
    """Grouped bars: per-class test accuracy (mean over seeds) per arm."""
    fig, ax = _subplots(figsize=(11, 3.8))
    n = len(per_arm)
    width = 0.8 / max(n, 1)
    x = np.arange(len(classes))
    for i, (arm, acc) in enumerate(per_arm.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, np.asarray(acc) * 100, width, label=arm, color=colours[arm])
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100.5)  # from 0: a bar's length is its accuracy (the differences: the heatmap below)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(n, 4), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    fig.tight_layout()
    return _png(fig)


def delta_heatmap(classes, deltas: dict[str, list[dict]], alpha: float) -> bytes:
    """Per-class accuracy difference arm - baseline (points), rows = arms; '*' where it
    holds over seeds after the correction. `deltas[arm][k]` is {"diff", "significant"}."""
    arms = list(deltas)
    m = np.array([[d["diff"] * 100 for d in deltas[arm]] for arm in arms], dtype=float)
    top = np.nanmax(np.abs(m)) if np.isfinite(m).any() else 0.0
    top = max(top, 0.5)
    fig, ax = _subplots(figsize=(11, 0.6 * len(arms) + 1.8), layout="constrained")
    im = ax.imshow(m, cmap="RdBu", norm=TwoSlopeNorm(0.0, -top, top), aspect="auto")
    for i, arm in enumerate(arms):
        for k, d in enumerate(deltas[arm]):
            sig = d["significant"]
            ax.text(k, i, f"{d['diff'] * 100:+.1f}{'*' if sig else ''}", ha="center", va="center",
                    fontsize=9, fontweight="bold" if sig else "normal",
                    color="white" if abs(m[i, k]) > 0.6 * top else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(arms)), [f"{a} - baseline" for a in arms])
    fig.colorbar(im, ax=ax, label="points", fraction=0.03, pad=0.02)
    ax.set_title(f"per-class accuracy difference over seeds (points); * = Holm-adjusted p < {alpha:g}",
                 fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------- confusion


def confusion_matrices(classes, matrices: dict[str, list[list[int]]]) -> bytes:
    """Row-normalised confusion matrices (summed over seeds), side by side."""
    n = len(matrices)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = _subplots(rows, cols, figsize=(5.2 * cols, 4.9 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (arm, cm) in zip(axes.flat, matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for t in range(len(classes)):
            for p in range(len(classes)):
                if norm[t, p] >= 0.005:
                    ax.text(p, t, f"{norm[t, p] * 100:.0f}", ha="center", va="center", fontsize=6.5,
                            color="white" if norm[t, p] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{arm} (% of true class)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- diagnostics


def gradient_flow(layers, rows: list[dict], arm: str) -> bytes:
    """Mean and max |grad| per layer, one line per epoch (log scale)."""
    epochs = sorted({r["epoch"] for r in rows})
    col = _epoch_colours(epochs)
    idx = {name: i for i, name in enumerate(layers)}
    fig, axes = _subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, key, title in ((axes[0], "mean_abs", "mean |grad|"), (axes[1], "max_abs", "max |grad|")):
        for e in epochs:
            pts = sorted((idx[r["layer"]], r[key]) for r in rows if r["epoch"] == e and r["layer"] in idx)
            vals = [v if v is not None and v > 0 else np.nan for _, v in pts]
            ax.plot([i for i, _ in pts], vals, color=col[e], marker="o", ms=3, lw=1, label=f"epoch {e}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
        ax.set_xlabel("layer (input to output)")
        ax.set_title(f"{arm}: {title}", fontsize=10)
        ax.grid(alpha=0.3)
    if len(epochs) <= 8:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
    else:  # too many epochs for a legend: a colour bar
        fig.tight_layout()
        sm = ScalarMappable(cmap="viridis", norm=Normalize(min(epochs), max(epochs)))
        cb = fig.colorbar(sm, ax=list(axes), label="epoch", fraction=0.04, pad=0.02)
        cb.ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


def update_ratio(layers, rows: list[dict], arm: str) -> bytes:
    """||W_end - W_start|| / ||W_start|| per layer per epoch (log scale)."""
    fig, ax = _subplots(figsize=(8, 3.8))
    cmap = colormaps["viridis"]
    for i, name in enumerate(layers):
        pts = sorted((r["epoch"], r["ratio"]) for r in rows if r["layer"] == name)
        vals = [v if v is not None and v > 0 else np.nan for _, v in pts]
        ax.plot([e for e, _ in pts], vals, marker="o", ms=3, lw=1,
                color=cmap(i / max(len(layers) - 1, 1)), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("update / weight norm")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"{arm}: update-to-weight ratio per layer (colour: input to output)", fontsize=10)
    if len(layers) <= 16:
        ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.01, 0.5), title="layer")
    fig.tight_layout()
    return _png(fig)


def weight_histograms(layers, rows: list[dict], arm: str) -> bytes:
    """Small multiples: one panel per layer, the recorded epochs' histograms overlaid."""
    epochs = sorted({r["epoch"] for r in rows})
    col = _epoch_colours(epochs)
    cols = min(len(layers), 4)
    nrows = math.ceil(len(layers) / cols)
    fig, axes = _subplots(nrows, cols, figsize=(3.0 * cols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, layers):
        for r in sorted((r for r in rows if r["layer"] == name), key=lambda r: r["epoch"]):
            counts = np.asarray(r["counts"], dtype=float)
            hi = r["max"] if r["max"] > r["min"] else r["min"] + 1e-8
            edges = np.linspace(r["min"], hi, len(counts) + 1)
            ax.stairs(counts / max(counts.sum(), 1), edges, color=col[r["epoch"]], lw=1.1,
                      label=f"epoch {r['epoch']}")
        ax.set_title(f"layer {name}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{arm}: weight distributions per layer (fraction of weights)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- galleries


def _mosaic(tiles: np.ndarray, cols: int, pad: int) -> np.ndarray:
    """(n, 3, h, w) float tiles in [0, 1] as one (H, W, 3) image, `cols` to a row,
    `pad` white pixels around each."""
    n, _, h, w = tiles.shape
    out = np.ones((math.ceil(n / cols) * (h + pad) + pad, cols * (w + pad) + pad, 3), np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
            tile.transpose(1, 2, 0)
    return out


def prediction_grid(images: np.ndarray, true: list[str], pred: list[str], confidence: list[float],
                    title: str) -> bytes:
    """Test images with true / predicted class and confidence, 8 to a row: green frame right, red wrong."""
    imgs = np.asarray(images).astype(np.float32) / 255.0  # (n, 3, 32, 32)
    n = len(imgs)
    cols = min(8, max(n, 1))
    rows = max(math.ceil(n / cols), 1)
    ok = [t == p for t, p in zip(true, pred)]
    border, pad = 2, 22
    framed = np.empty((n, 3, imgs.shape[2] + 2 * border, imgs.shape[3] + 2 * border), np.float32)
    for i, o in enumerate(ok):
        framed[i] = np.asarray(matplotlib.colors.to_rgb(GOOD if o else BAD), np.float32)[:, None, None]
    framed[:, :, border:-border, border:-border] = imgs
    mosaic = _mosaic(framed, cols, pad)
    size = framed.shape[2]
    fig = Figure(figsize=(mosaic.shape[1] / 40, mosaic.shape[0] / 40 + 0.3))
    ax = fig.add_axes([0, 0, 1, 0.95 if rows > 1 else 0.9])
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for i, (t, p, c) in enumerate(zip(true, pred, confidence)):
        r, col = divmod(i, cols)
        x = pad + col * (size + pad) + size / 2
        y = pad + r * (size + pad) - 1
        ax.text(x, y, f"{t}\n{'=' if ok[i] else '->'} {p} {c * 100:.0f}%", ha="center", va="bottom",
                fontsize=6.5, color=GOOD if ok[i] else BAD, linespacing=1.0)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def conv_filters(weight: np.ndarray, title: str) -> bytes:
    """First-layer filters (out, in, k, k) as tiles, each scaled to its own min-max; RGB for 3 inputs."""
    w = np.asarray(weight, dtype=np.float32)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    w = np.where(hi > lo, (w - lo) / np.where(hi > lo, hi - lo, 1), 0.5)
    tiles = w if w.shape[1] == 3 else np.repeat(w.mean(1, keepdims=True), 3, axis=1)
    cols = min(len(tiles), 16)
    mosaic = _mosaic(tiles, cols, 1)
    scale = 0.6 / tiles.shape[2]  # inches per filter pixel: 0.6 in per filter
    fig = Figure(figsize=(max(mosaic.shape[1] * scale, 3), mosaic.shape[0] * scale + 0.35))
    ax = fig.add_axes([0, 0, 1, 1 - 0.35 / (mosaic.shape[0] * scale + 0.35)])
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _png(fig)
