"""Training diagnostics, sampled so they cost next to nothing.

Per layer (every conv and linear weight):
- gradient flow: mean and max |grad|, read at one step per epoch (the middle one);
- update-to-weight ratio: ||W_end - W_start|| / ||W_start|| over each epoch;
- weight distribution: a histogram at chosen epochs (1, 5, 10, 15, ... and the last).

Statistics stay on the training device during the epoch and are copied to the
host once, at its end.
"""
from __future__ import annotations

import torch
from torch import nn

HIST_BINS = 40


def tracked_layers(model: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The weights of conv and linear layers, in definition order, named for
    reading ("conv2 (features.4)"): counted per kind, with the module's path."""
    out, counts = [], {"conv": 0, "linear": 0}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() > 1:
            kind = "conv" if p.dim() == 4 else "linear"
            counts[kind] += 1
            out.append((f"{kind}{counts[kind]} ({name[:-len('.weight')]})", p))
    return out


def histogram_epochs(epochs: int) -> list[int]:
    return sorted({1, epochs} | set(range(5, epochs + 1, 5)))


class Diagnostics:
    def __init__(self, model: nn.Module, epochs: int, steps_per_epoch: int):
        self.layers = tracked_layers(model)
        self.sample_step = steps_per_epoch // 2
        self.hist_epochs = set(histogram_epochs(epochs))
        self.grad: list[dict] = []  # one row per epoch: {"epoch", "layer", "mean_abs", "max_abs"} flattened
        self.update_ratio: list[dict] = []
        self.weights: list[dict] = []
        self._start: list[torch.Tensor] = []
        self._grad_stats: torch.Tensor | None = None

    def epoch_start(self) -> None:
        self._start = [p.detach().clone() for _, p in self.layers]
        self._grad_stats = None

    def after_backward(self, step: int) -> None:
        if step != self.sample_step:
            return
        self._grad_stats = torch.stack([
            torch.stack([p.grad.abs().mean(), p.grad.abs().max()]) if p.grad is not None
            else torch.full((2,), float("nan"), device=p.device)
            for _, p in self.layers]).float()

    @torch.no_grad()
    def epoch_end(self, epoch: int) -> None:
        ratios = torch.stack([(p.detach() - w0).norm() / w0.norm().clamp_min(1e-12)
                              for (_, p), w0 in zip(self.layers, self._start)]).cpu().tolist()
        grads = self._grad_stats.cpu().tolist() if self._grad_stats is not None else None
        for i, (name, p) in enumerate(self.layers):
            self.update_ratio.append({"epoch": epoch, "layer": name, "ratio": ratios[i]})
            if grads is not None:
                self.grad.append({"epoch": epoch, "layer": name,
                                  "mean_abs": grads[i][0], "max_abs": grads[i][1]})
            if epoch in self.hist_epochs:
                w = p.detach().float().flatten().cpu()  # histc has no deterministic CUDA kernel
                lo, hi = w.min().item(), w.max().item()
                counts = torch.histc(w, bins=HIST_BINS, min=lo, max=hi if hi > lo else lo + 1e-8)
                self.weights.append({"epoch": epoch, "layer": name, "min": lo, "max": hi,
                                     "mean": w.mean().item(), "std": w.std().item(),
                                     "counts": counts.cpu().long().tolist()})
        self._start = []

    def load(self, saved: dict) -> None:
        """Continue from `as_dict()` output (resuming an interrupted run)."""
        self.grad = list(saved["gradients"])
        self.update_ratio = list(saved["update_ratio"])
        self.weights = list(saved["weights"])

    def as_dict(self) -> dict:
        return {"layers": [n for n, _ in self.layers], "gradients": list(self.grad),
                "update_ratio": list(self.update_ratio), "weights": list(self.weights)}
