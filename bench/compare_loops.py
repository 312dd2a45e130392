"""Benchmark: the project's trainer against the classic DataLoader loop.

The classic loop is what the recipes' notebooks ran: a torchvision-style
Dataset handing out PIL images, per-image torchvision transforms, a
DataLoader with worker processes, and a training step per batch. The project's
trainer keeps the data on the device as uint8 and augments whole batches there.

Both train the same model with the same recipe (optimizer, schedule, batch
size, precision, augmentation distributions) on the same images; the script
prints images/s and seconds per epoch for each and their ratio, and with
--seeds N the mean test accuracy of each over N seeds.

    python bench/compare_loops.py --data data/prepared --images 5000 --epochs 1
    python bench/compare_loops.py --presets simple_cnn --images 50000 --epochs 30 --seeds 3  # accuracy check
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

import models  # noqa: E402
from pipeline.core.config import parse_params, presets  # noqa: E402
from pipeline.core.dataset import load_split  # noqa: E402
from pipeline.core.stats import welch  # noqa: E402
from pipeline.arm.augment import NORMS, Augmenter  # noqa: E402
from pipeline.arm.loop import (  # noqa: E402
    Tensors,
    autocast,
    build_optimizer,
    build_schedule,
    evaluate,
    resolve_device,
    seed_everything,
    train_epochs,
)
from pipeline.core.config import resolve_precision  # noqa: E402
from pipeline.core.dataset import stratified_subset  # noqa: E402


def classic_transforms(aug: str, norm: str):
    """The torchvision pipelines the recipes' notebooks used for each regime."""
    mean, std = NORMS[norm]
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if aug == "none":
        return T.Compose(tail)
    if aug == "standard":
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] + tail)
    if aug == "ssr_cutout":
        return T.Compose([
            T.RandomHorizontalFlip(),
            T.RandomApply([T.RandomAffine(degrees=7, translate=(0.0625, 0.0625), scale=(0.9, 1.1))], p=0.5),
            *tail, T.RandomErasing(p=0.5, scale=(0.25, 0.25), ratio=(1, 1), value=0)])
    if aug == "strong":
        return T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(15),
            T.ColorJitter(0.2, 0.2, 0.2, 0.1), T.RandomAffine(0, translate=(0.1, 0.1)),
            *tail, T.RandomErasing(p=0.25, scale=(0.02, 0.2))])
    raise SystemExit(f"no classic pipeline for aug {aug!r}")


class ArrayDataset(torch.utils.data.Dataset):
    """CIFAR-10 as torchvision.datasets.CIFAR10 serves it: a PIL image per index."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC for PIL
        self.y = y
        self.transform = transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def classic_fit(model, x, y, cfg, seed, device, workers):
    """The notebooks' loop: DataLoader + per-batch .to(device) + a step, a .item() per step."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        ArrayDataset(x, y, classic_transforms(cfg.aug, cfg.norm)), batch_size=cfg.batch_size,
        shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    opt = build_optimizer(cfg, model.parameters())
    sched = build_schedule(cfg, opt, math.ceil(len(y) / cfg.batch_size))
    step_model = torch.compile(model) if cfg.compile else model
    seconds = []
    for _ in range(cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        running = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with autocast(cfg.precision, device):
                loss = F.cross_entropy(step_model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            running += loss.item()  # what the notebooks printed
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return seconds


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--presets", default=",".join(presets()), help="comma-separated recipe names")
    ap.add_argument("--images", type=int, default=5000, help="training images (stratified subset)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per loop (accuracy = mean over them)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the classic loop")
    ap.add_argument("--no-compile", action="store_true", help="turn off torch.compile in both loops")


def compare(args: argparse.Namespace, data: str | Path) -> list[dict]:
    """Train every preset with both loops on `data` (an untar output); print a
    row per preset and return the rows."""
    device = resolve_device(args.device)
    x, y = load_split(data, "train")
    idx = stratified_subset(y, args.images, 0)
    x, y = np.array(x[idx]), np.array(y[idx])
    xt, yt = load_split(data, "test")
    xt, yt = np.array(xt), np.array(yt)
    train = Tensors(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    test = Tensors(torch.from_numpy(xt).to(device), torch.from_numpy(yt).to(device))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(y)} train images, "
          f"{args.epochs} epoch(s), {args.seeds} seed(s)")
    print(f"{'preset':<14}{'classic img/s':>14}{'s/epoch':>9}{'trainer img/s':>15}{'s/epoch':>9}"
          f"{'speed-up':>10}{'classic acc':>13}{'trainer acc':>13}")
    rows = []
    for name in args.presets.split(","):
        cfg = parse_params({"preset": name, "epochs": args.epochs}).arms[-1].train
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device.type, bf16),
                                     **({"compile": False} if args.no_compile else {})})
        eval_batch = 1024 if device.type == "cuda" else 256
        c_sec, t_sec, c_acc, t_acc = [], [], [], []
        for seed in range(args.seeds):
            seed_everything(seed)
            model = models.create_model(cfg.model, **cfg.knobs).to(device)
            c_sec += classic_fit(model, x, y, cfg, seed, device, args.workers)
            c_acc.append(evaluate(model, test, Augmenter("none", cfg.norm, device), cfg.precision, eval_batch).acc)
            seed_everything(seed)
            model = models.create_model(cfg.model, **cfg.knobs).to(device)
            history = [ep.row for ep in train_epochs(model, train, test, cfg, seed, eval_batch=eval_batch,
                                                     states=False)]
            t_sec += [r.epoch_seconds for r in history]
            t_acc.append(history[-1].test_acc)
        # the first epoch carries compilation and warm-up: report the median epoch
        c, t = statistics.median(c_sec), statistics.median(t_sec)
        rows.append({"preset": name, "classic_s": c, "trainer_s": t, "speedup": c / t,
                     "classic_acc": statistics.fmean(c_acc), "trainer_acc": statistics.fmean(t_acc)})
        print(f"{name:<14}{len(y) / c:>14.0f}{c:>9.2f}{len(y) / t:>15.0f}{t:>9.2f}{c / t:>9.2f}x"
              f"{100 * statistics.fmean(c_acc):>12.2f}%{100 * statistics.fmean(t_acc):>12.2f}%", flush=True)
        if args.seeds > 1:
            print(accuracy_line(c_acc, t_acc), flush=True)
    return rows


def accuracy_line(classic: list[float], trainer: list[float]) -> str:
    """Per-seed test accuracies and trainer - classic with its Welch 95% interval."""
    w = welch(trainer, classic)
    ci = (f"95% CI {100 * w.ci.low:+.2f} to {100 * w.ci.high:+.2f}" if w.ci.defined
          else f"no interval: {w.reason}")
    return (f"{'':<14}per seed: classic {', '.join(f'{100 * a:.2f}' for a in classic)}; "
            f"trainer {', '.join(f'{100 * a:.2f}' for a in trainer)}; "
            f"trainer - classic {100 * w.diff:+.2f} points ({ci}, n = {len(trainer)} seeds each)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/prepared", help="output of the untar stage")
    add_arguments(ap)
    args = ap.parse_args()
    compare(args, args.data)


if __name__ == "__main__":
    main()
