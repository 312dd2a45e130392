"""Checkpoints as MLflow models (logged by pipeline.tracking.publish).

The logged model takes what the data set holds, uint8 images (N, 3, 32, 32),
and returns logits: the checkpoint's network behind the normalisation it was
trained with (models.layers.Classifier). `mlflow.pytorch.load_model` gives it
back; it predicts the same classes as the checkpoint in runs/. Its weights file
is the checkpoint itself, with the sha256 of its weights (pipeline.tracking.checkpoint_pickle).
"""
from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def classifier_from_checkpoint(path: str | Path):
    """The checkpoint's network with its normalisation in front, in eval mode, on the CPU."""
    from pipeline.core.contracts import Checkpoint
    from pipeline.tracking.checkpoint_pickle import classifier

    ckpt = Checkpoint.load(path)
    return classifier(ckpt), ckpt


SOURCE = {"mlflow.source.name": "dvc repro (stage train)", "mlflow.source.type": "LOCAL"}


def model_name(arm: str, seed: int, which: str) -> str:
    """A logged model's name, as MLflow takes it: `aug=standard seed=0 last` ('.' -> '_')."""
    return f"{arm} seed={seed} {which}".replace(".", "_").replace("/", "_").replace(":", "_")


def log_checkpoint_model(run_id: str, checkpoint: Path, which: str) -> str:
    """Log `checkpoint` as a pytorch-flavour model of run `run_id`, named by its arm,
    seed and `which` checkpoint (last, best); its model id, also the run's tag
    `model_id.<which>`."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from pipeline.tracking import checkpoint_pickle

    model, ckpt = classifier_from_checkpoint(checkpoint)
    example = np.asarray(ckpt.example, dtype=np.uint8)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(  # load_model gives back the nn.Module, for any batch size
            model, name=model_name(ckpt.arm, ckpt.seed, which), signature=infer_signature(example, out),
            input_example=example, tags=SOURCE,
            serialization_format="pickle", pickle_module=checkpoint_pickle,
            code_paths=[str(PROJECT / "models"), str(PROJECT / "pipeline")], pip_requirements=_requirements(),
            metadata={"checkpoint_epoch": ckpt.epoch, "arm": ckpt.arm, "seed": ckpt.seed})
        mlflow.set_tag(f"model_id.{which}", info.model_id)
    return info.model_id


def _requirements() -> list[str]:
    from importlib import metadata

    return [f"{p}=={metadata.version(p)}" for p in ("torch", "torchvision", "pydantic")]
