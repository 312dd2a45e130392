"""Benchmark: training and evaluation speed in fp32 and bf16 on this machine.

Each row trains a model through the project's loop (pipeline.arm.loop) for one
epoch of `--images` random uint8 images, after `--warmup` images to let oneDNN
pick its kernels, and evaluates `--images` images; median images/s over
`--repeat` rounds. Random pixels train as fast as real ones, so no data is needed.

    python bench/precision.py --models simple_cnn cnn4 --images 10000 --repeat 3

With `--full data/prepared` it instead times one whole simple_cnn run per precision
as a study trains it (pipeline.arm.job: 30 epochs on every training image, each epoch
evaluated on the test set, both checkpoints evaluated at the end), aug standard,
dropout 0.25, seed 0.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import models  # noqa: E402
from pipeline.arm.augment import Augmenter  # noqa: E402
from pipeline.arm.loop import Tensors, evaluate, seed_everything, train_epochs  # noqa: E402
from pipeline.core.config import parse_params  # noqa: E402
from pipeline.core.hardware import cpu_name, native_bf16  # noqa: E402


def preset_config(preset: str, precision: str):
    return parse_params({"preset": preset, "precision": precision, "epochs": 1, "aug": "standard"}).arms[0].train


def rates(preset: str, precision: str, images: int, warmup: int, repeat: int) -> tuple[float, float]:
    """(training img/s, evaluation img/s), medians over `repeat` rounds."""
    cfg = preset_config(preset, precision)
    g = torch.Generator().manual_seed(0)
    data = Tensors(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (images,), generator=g))
    warm = Tensors(data.x[:warmup], data.y[:warmup])
    seed_everything(0)
    model = models.create_model(cfg.model, **cfg.knobs)
    for _ in train_epochs(model, warm, warm, cfg, 0, states=False, diagnostics=False):
        pass
    train, ev = [], []
    aug = Augmenter("none", cfg.norm, torch.device("cpu"))
    for _ in range(repeat):
        for epoch in train_epochs(model, data, Tensors(data.x[:256], data.y[:256]), cfg, 0, states=False,
                                  diagnostics=False):
            train.append(epoch.row.images_per_second)
        t0 = time.perf_counter()
        evaluate(model.to(memory_format=torch.channels_last), data, aug, cfg.precision, 256)
        ev.append(images / (time.perf_counter() - t0))
    return statistics.median(train), statistics.median(ev)


def full_run(data: Path, precision: str) -> tuple[float, float, float]:
    """(wall seconds, training seconds, final test accuracy) of one whole run."""
    from pipeline.arm.job import run_job
    from pipeline.core.dataset import load_subset
    from pipeline.core.jobs import Data, Finished, JobSpec

    cfg = parse_params({"preset": "simple_cnn", "precision": precision, "aug": "standard", "seeds": [0]}).arms[0].train
    tx, ty, _ = load_subset(data, "train", None, 0)
    vx, vy, _ = load_subset(data, "test", None, 0)
    t0 = time.perf_counter()
    done = [e for e in run_job(JobSpec("aug=standard", 0, cfg, "bench", "cpu", "auto"), Data("bench", tx, ty, vx, vy),
                               None) if isinstance(e, Finished)][0]
    wall = time.perf_counter() - t0
    return wall, sum(r.epoch_seconds for r in done.history), done.history[-1].test_acc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["simple_cnn", "cnn4"], help="presets to time")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", type=Path, help="prepared data: time one whole 30-epoch run per precision instead")
    args = ap.parse_args(argv)
    if args.full:
        print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, native bf16: {native_bf16() or 'none'}; "
              f"torch {torch.__version__}; simple_cnn, aug standard, 30 epochs, seed 0")
        print("| precision | wall (min) | training steps (min) | test acc, last epoch |")
        print("| --- | ---: | ---: | ---: |")
        for precision in ("fp32", "bf16"):
            wall, steps, acc = full_run(args.full, precision)
            print(f"| {precision} | {wall / 60:.1f} | {steps / 60:.1f} | {acc:.4f} |", flush=True)
        return
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, native bf16: {native_bf16() or 'none'}; "
          f"torch {torch.__version__}; {args.images:,} images, median of {args.repeat}")
    print("| model | precision | train img/s | eval img/s |")
    print("| --- | --- | ---: | ---: |")
    out = {}
    for preset in args.models:
        for precision in ("fp32", "bf16"):
            tr, ev = rates(preset, precision, args.images, args.warmup, args.repeat)
            out[(preset, precision)] = (tr, ev)
            print(f"| {preset} | {precision} | {tr:,.0f} | {ev:,.0f} |", flush=True)
    for preset in args.models:
        (t32, e32), (t16, e16) = out[(preset, "fp32")], out[(preset, "bf16")]
        print(f"{preset}: bf16 trains {t16 / t32:.2f}x and evaluates {e16 / e32:.2f}x as fast as fp32")


if __name__ == "__main__":
    main()
