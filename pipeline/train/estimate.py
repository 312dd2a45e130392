"""A short measurement of training speed, for the plan's time estimate."""
from __future__ import annotations

import time

from pipeline.training.job import Data, JobSpec, tensors


def measure(spec: JobSpec, data: Data, warmup: int = 3, seconds: float = 1.0, max_steps: int = 30) -> float:
    """Images per second of `spec`'s training steps (plus its share of the per-epoch
    evaluation), timed over about `seconds` of batches after a few warm-up steps
    (the first steps of a process run slower, while kernels are chosen). Touches
    no RNG a run uses, and no state: the model is a throwaway."""
    import torch
    import torch.nn.functional as F

    import models
    from pipeline.training.augment import Augmenter
    from pipeline.training.loop import autocast, build_optimizer, resolve_device

    device = resolve_device(spec.device)
    train, _ = tensors(data, device)
    cfg = spec.cfg
    bs = min(cfg.batch_size, len(train))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = models.create_model(cfg.model, **cfg.knobs).to(device).to(memory_format=torch.channels_last)
        opt = build_optimizer(cfg, model.parameters())
        aug = Augmenter(cfg.aug, cfg.norm, device)
        gen = torch.Generator(device=device).manual_seed(0)

        def step():
            idx = torch.randint(0, len(train), (bs,), device=device, generator=gen)
            x = aug(train.x[idx], gen).contiguous(memory_format=torch.channels_last)
            with autocast(cfg.precision, device):
                loss = F.cross_entropy(model(x).float(), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        for _ in range(warmup):
            step()
        t0, steps = time.perf_counter(), 0
        while steps < max_steps and (steps < 2 or time.perf_counter() - t0 < seconds):
            step()
            steps += 1
        elapsed = time.perf_counter() - t0
    train_rate = steps * bs / elapsed
    # an epoch also evaluates the test set, at about three times the training rate
    n_train, n_test = len(data.train_y), len(data.test_y)
    return n_train / (n_train / train_rate + n_test / (3 * train_rate))
