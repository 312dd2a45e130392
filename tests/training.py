"""The training loop and the augmentation as the tests call them: whole runs with
callbacks, and one-off, checked augmentation of a batch."""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.arm.augment import Augmenter, constants, normalize_unit_, to_unit
from pipeline.arm.loop import Result, train_epochs
from pipeline.core.config import TrainConfig, resolve_precision
from pipeline.core.jobs import HistoryRow, TrainState


def fit(model, train, test, cfg: TrainConfig, seed: int, *, on_epoch: Callable[[HistoryRow], None] | None = None,
        on_state: Callable[[TrainState], None] | None = None, **kw) -> Result:
    """`train_epochs` to the end (precision `auto` resolved for the data's device),
    with `on_epoch(row)` and `on_state(state)` after each epoch."""
    device = train.x.device
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device.type, bf16)})
    epochs = train_epochs(model, train, test, cfg, seed, states=on_state is not None, **kw)
    while True:
        try:
            ep = next(epochs)
        except StopIteration as stop:
            return stop.value
        if on_epoch is not None:
            on_epoch(ep.row)
        if on_state is not None:
            on_state(ep.state)


def _check_batch(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a uint8 batch of shape (N, 3, H, W), got {what}")


def augment(name: str, x: torch.Tensor, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """Regime `name` on the uint8 NCHW batch `x`, checked; normalised float32 NCHW."""
    _check_batch(x)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, batch is on {x.device}; put both on one device")
    return Augmenter(name, norm, x.device)(x, generator)


def normalize(x_uint8: torch.Tensor, norm: str) -> torch.Tensor:
    """The evaluation path, checked: uint8 -> float [0,1] -> (x - mean) / std."""
    _check_batch(x_uint8)
    return normalize_unit_(to_unit(x_uint8), constants(norm, x_uint8.device))
