"""The one training loop. It takes the network as an argument and never imports
a particular model; every architecture and every arm trains through `train_epochs()`.

Data lives on the training device as uint8 NCHW tensors; augmentation runs there
in batches (pipeline.arm.augment). Per-step metrics are accumulated on the
device and read once per epoch, so the loop does not wait on the GPU at every step.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.core.jobs import Epoch, HistoryRow, TrainState
from pipeline.arm.augment import Augmenter
from pipeline.arm.diagnostics import Diagnostics

# torch.compile modes that replay CUDA graphs
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class Tensors:
    """One split on the training device: images uint8 (N,3,32,32), labels int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def from_numpy(cls, x, y, device: torch.device) -> "Tensors":
        return cls(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))


@dataclass
class Evaluation:
    loss: float
    acc: float
    preds: torch.Tensor  # (N,) int64, on the CPU
    probs: torch.Tensor  # (N, classes) float32 softmax, on the CPU


@dataclass
class Result:
    history: list[HistoryRow] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict | None = None  # weights at the best validation (else test) accuracy (keep_best)
    diagnostics: dict | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"device = {name!r}: CUDA is not available here; use auto or cpu")
    return dev


def set_determinism(deterministic: bool) -> None:
    """Once per process, before any arm: deterministic CUDA kernels, or cuDNN's
    autotuner. (The CPU is deterministic either way. cuBLAS also needs
    CUBLAS_WORKSPACE_CONFIG, which the stage sets before CUDA starts.) Only a change
    is set: setting it loads torch's compiler (seconds) whatever the value."""
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def streams(seed: int) -> tuple[int, int]:
    """A run's seed split into two independent streams (numpy's SeedSequence):
    one for the model (initial weights, dropout), one for the data (order,
    augmentation). One integer seeding both would start the first permutation
    from the numbers that drew the initial weights."""
    model, data = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(model >> 1), int(data >> 1)  # as non-negative int64 seeds


def seed_everything(seed: int) -> None:
    """Seed the model stream: weight initialisation and dropout, on the CPU and every CUDA device."""
    torch.manual_seed(streams(seed)[0])


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def build_schedule(cfg: TrainConfig, opt, steps_per_epoch: int):
    """Stepped once per batch. None when the learning rate is constant."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.max_lr or cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def autocast(precision: str, device: torch.device):
    """Mixed precision as `precision` says: fp32, bf16 or fp16 (concrete: the stage
    resolved `auto` for the device, pipeline.core.config.resolve_precision)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision {precision!r}: resolve it for the device first (fp32, bf16 or fp16)")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def eval_batch_size(setting: int | str, device: torch.device) -> int:
    """auto: large batches keep a GPU busy; on the CPU, batches past a few
    hundred images spill the caches (simple_cnn: 5,567 img/s at 256, 2,795 at 1024)."""
    if setting != "auto":
        return int(setting)
    return 1024 if device.type == "cuda" else 256


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensors, aug: Augmenter, precision: str, batch_size: int) -> Evaluation:
    """Clean evaluation: eval mode, no augmentation (only `aug`'s normalisation)."""
    device = data.x.device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    preds, probs = [], []
    for i in range(0, len(data), batch_size):
        x = aug.normalize(data.x[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
        y = data.y[i:i + batch_size]
        with autocast(precision, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        p = logits.softmax(dim=1)
        probs.append(p)
        preds.append(p.argmax(dim=1))
    model.train(was_training)
    preds_t = torch.cat(preds).cpu()
    correct = (preds_t == data.y.cpu()).sum().item()
    return Evaluation(loss=loss_sum.item() / len(data), acc=correct / len(data),
                      preds=preds_t, probs=torch.cat(probs).float().cpu())


def train_epochs(model: nn.Module, train: Tensors, test: Tensors, cfg: TrainConfig, seed: int, *,
                 val: Tensors | None = None, eval_batch: int = 256, states: bool = True,
                 on_step: Callable[[int], None] | None = None, resume: TrainState | None = None,
                 diagnostics: bool = True) -> Generator[Epoch, None, Result]:
    """Train `model` on `train` per `cfg`, evaluating after every epoch on `val`, the
    images held out of training, when given (the test set is then left to the
    evaluate stage, which looks at it once), else on `test` (the recipes' way);
    yield each epoch, return the `Result`. The best checkpoint (keep_best) is the
    peak of that evaluation.

    The model must already be on the training device (and seeded: call
    `seed_everything(seed)` before building it). Data order and augmentation draw
    from their own generator, on the data stream of `seed` (see `streams`), so
    runs are reproducible.

    `on_step(images)` is called after every step (a progress bar; it must not
    read the device). With `states`, each epoch carries everything needed to go on (weights,
    optimizer, schedule, every RNG state, history); passing it back as `resume`
    continues the run so that it ends bitwise equal to one that was never
    interrupted (on the CPU; on CUDA with deterministic kernels).
    """
    device = train.x.device
    gen = torch.Generator(device=device).manual_seed(streams(seed)[1])
    aug = Augmenter(cfg.aug, cfg.norm, device)
    # NHWC: faster convolutions with cuDNN and oneDNN alike (1.1-1.5x measured on 2 CPU cores)
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model.parameters())
    steps = math.ceil(len(train) / cfg.batch_size)  # the last, partial batch is kept
    sched = build_schedule(cfg, opt, steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    # Two static shapes (the full batch and the last, partial one) compile to two
    # graphs; dynamic=False keeps both free of symbolic sizes, so CUDA graphs
    # (reduce-overhead, max-autotune) can record each one.
    step_model = torch.compile(model, mode=cfg.compile_mode, dynamic=False) if cfg.compile else model
    graphs = cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES and device.type == "cuda"
    diag = Diagnostics(model, cfg.epochs, steps) if diagnostics else None
    result = Result()
    best_acc = -1.0
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        if sched is not None:
            sched.load_state_dict(resume.schedule)
        if scaler is not None:
            scaler.load_state_dict(resume.scaler)
        _set_rng(resume.rng, gen, device)
        result.history = [HistoryRow(**r) for r in resume.history]
        result.best_epoch, best_acc = resume.best_epoch, resume.best_acc
        result.best_state = resume.best_state
        if diag is not None and resume.diagnostics is not None:
            diag.load(resume.diagnostics)
        first_epoch = resume.epoch + 1

    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(len(train), device=device, generator=gen)
        if diag is not None:
            diag.epoch_start()
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = aug(train.x[idx], gen).contiguous(memory_format=torch.channels_last)
            y = train.y[idx]
            if graphs:  # the previous step's graph outputs are consumed: their memory may be reused
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(cfg.precision, device):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if diag is not None:
                diag.after_backward(i)
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            if on_step is not None:
                on_step(len(y))
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        if diag is not None:
            diag.epoch_end(epoch)
        ev = evaluate(model, test if val is None else val, aug, cfg.precision, eval_batch)
        on_test = val is None
        row = HistoryRow(epoch=epoch, train_loss=loss_sum.item() / len(train), train_acc=correct.item() / len(train),
                         test_loss=ev.loss if on_test else None, test_acc=ev.acc if on_test else None,
                         val_loss=None if on_test else ev.loss, val_acc=None if on_test else ev.acc,
                         lr=opt.param_groups[0]["lr"], epoch_seconds=train_seconds,
                         images_per_second=len(train) / train_seconds)
        result.history.append(row)
        weights = None  # this epoch's weights on the host, copied once for both uses below
        if cfg.keep_best and ev.acc > best_acc:  # on validation images where there are some, else on test
            best_acc = ev.acc
            result.best_epoch = epoch
            result.best_state = weights = host_copy(model)
        state = None
        if states:
            state = TrainState(
                epoch=epoch,
                model=weights if weights is not None else host_copy(model),
                optimizer=copy.deepcopy(opt.state_dict()),  # else it aliases live buffers
                schedule=sched.state_dict() if sched is not None else None,
                scaler=scaler.state_dict() if scaler is not None else None,
                rng=_get_rng(gen, device),
                history=[r.model_dump() for r in result.history],
                best_epoch=result.best_epoch, best_acc=best_acc, best_state=result.best_state,
                diagnostics=diag.as_dict() if diag is not None else None,
                device=device.type)
        yield Epoch(row, state)
    result.diagnostics = diag.as_dict() if diag is not None else None
    return result


def host_copy(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _get_rng(gen: torch.Generator, device: torch.device) -> dict:
    return {"data": gen.get_state(), "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng(state: dict, gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["data"])
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
