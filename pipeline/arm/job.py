"""One arm x seed, from its spec to a trained model: the work a worker does.

`run_job` touches no files: it takes the data and, for a resumed run, the saved
state; it yields each epoch (with the state to save) and finally the trained
weights (pipeline.core.jobs). The driver (pipeline.train.driver) alone writes
outputs, so the same job runs in the driver's process or on any node of a Ray
cluster.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pipeline.core.contracts import Checkpoint, TrainState
from pipeline.core.jobs import Data, Epoch, Finished, JobSpec

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
    train, test, val = tensors(data, device)
    seed_everything(spec.seed)
    model = models.create_model(spec.cfg.model, **spec.cfg.knobs).to(device)
    result = yield from train_epochs(model, train, test, spec.cfg, spec.seed, val=val, resume=resume,
                                     on_step=on_step, eval_batch=eval_batch_size(spec.eval_batch, device),
                                     states=True)
    yield Finished(model=host_copy(model), best_state=result.best_state, best_epoch=result.best_epoch,
                   history=result.history, diagnostics=result.diagnostics)


def checkpoint(weights: dict, spec: JobSpec, epoch: int, code_version: str, dvc_experiment: str,
               data_sha256: str, example) -> Checkpoint:
    """A checkpoint that loads with `torch.load(weights_only=True)` and says what made it."""
    return Checkpoint(model=weights, model_name=spec.cfg.model, config=spec.cfg.model_dump(), arm=spec.arm,
                      seed=spec.seed, epoch=epoch, example=example, code_version=code_version,
                      dvc_experiment=dvc_experiment, data_sha256=data_sha256)
