"""One arm x seed, from its spec to a trained and evaluated model: the work a worker does.

`run_job` touches no files: it takes the data and, for a resumed run, the saved
state; it yields each epoch (with the state to save) and finally the trained
weights with both checkpoints evaluated on the test images and (clean) on the
images trained on (pipeline.core.jobs). The driver (pipeline.train.driver) alone
writes outputs, so the same job runs in the driver's process or on any node of
a Ray cluster, where the data and the device already are.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pipeline.core.jobs import Data, Epoch, Evaluated, Finished, JobSpec, TrainState

_ON_DEVICE: dict[tuple[str, str], tuple] = {}  # (data digest, device) -> (train, test, val or None) tensors


def tensors(data: Data, device):
    """The data on `device`, copied there once per process (jobs of a study share it)."""
    from pipeline.arm.loop import Tensors

    key = (data.digest, str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()  # one study's data at a time
        _ON_DEVICE[key] = (Tensors.from_numpy(_own(data.train_x), _own(data.train_y), device),
                           Tensors.from_numpy(_own(data.test_x), _own(data.test_y), device),
                           None if data.val_x is None else Tensors.from_numpy(_own(data.val_x), _own(data.val_y),
                                                                              device))
    return _ON_DEVICE[key]


def _own(a: np.ndarray) -> np.ndarray:
    """A writable array (one from Ray's object store is a read-only view)."""
    return a if a.flags.writeable else a.copy()


def run_job(spec: JobSpec, data: Data, resume: TrainState | None,
            on_step: Callable[[int], None] | None = None) -> Iterator[Epoch | Finished]:
    """Train `spec` (from `resume`, if given): yields `Epoch`s, then one `Finished`."""
    import torch

    import models
    from pipeline.arm.loop import (eval_batch_size, host_copy, resolve_device, seed_everything, set_determinism,
                                   train_epochs)

    if spec.threads:
        torch.set_num_threads(spec.threads)
    set_determinism(spec.deterministic)
    device = resolve_device(spec.device)
    if device.type == "cuda":  # TF32 tensor cores for matmuls too (cuDNN's convolutions use them by default)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train, test, val = tensors(data, device)
    seed_everything(spec.seed)
    model = models.create_model(spec.cfg.model, **spec.cfg.knobs).to(device)
    eval_batch = eval_batch_size(spec.eval_batch, device)
    result = yield from train_epochs(model, train, test, spec.cfg, spec.seed, val=val, resume=resume,
                                     on_step=on_step, eval_batch=eval_batch, states=True)
    evaluated = {"last": _evaluated(model, spec.cfg.epochs, train, test, spec, eval_batch)}
    if result.best_state is not None:
        best = evaluated["last"]
        if result.best_epoch != spec.cfg.epochs:
            other = models.create_model(spec.cfg.model, **spec.cfg.knobs).to(device)
            other.load_state_dict(result.best_state)
            best = _evaluated(other.to(memory_format=torch.channels_last), result.best_epoch, train, test, spec,
                              eval_batch)
        evaluated["best"] = best
    yield Finished(model=host_copy(model), best_state=result.best_state, best_epoch=result.best_epoch,
                   history=result.history, diagnostics=result.diagnostics, evaluated=evaluated,
                   filters=models.first_conv(model).weight.detach().float().cpu().numpy())


def _evaluated(model, epoch: int, train, test, spec: JobSpec, eval_batch: int) -> Evaluated:
    """A checkpoint on every test image, and clean (eval mode, no augmentation) on the images it trained on."""
    from pipeline.arm.augment import Augmenter
    from pipeline.arm.loop import evaluate

    aug = Augmenter("none", spec.cfg.norm, test.x.device)
    te = evaluate(model, test, aug, spec.cfg.precision, eval_batch)
    tr = evaluate(model, train, aug, spec.cfg.precision, eval_batch)
    return Evaluated(epoch=epoch, test_pred=te.preds.numpy().astype(np.uint8),
                     test_confidence=te.probs.max(1).values.numpy().astype(np.float32), test_loss=te.loss,
                     train_acc=tr.acc, train_loss=tr.loss)
