"""The pickle module of the logged MLflow models: their `data/model.pth` is the checkpoint.

`mlflow.pytorch` saves a model with `torch.save(model, pickle_module=M)` and loads
it with `torch.load(path, pickle_module=M)`, M being named in the model's
`pickle_module_info.txt`. With this module as M:

- saving writes the checkpoint the model was built from (the dict in
  runs/<arm>/seed=<k>/model.pt), not a second, pickled copy of the network, with
  the sha256 of its weights;
- loading reads that dict as `torch.load(weights_only=True)` does (no code from the
  file runs), refuses weights that no longer match their sha256 (a record, once
  logged, does not change), and gives back the network behind the normalisation
  it was trained with (models.layers.Classifier), in eval mode.
"""
from __future__ import annotations

import hashlib
from pickle import Pickler as _Pickler
from pickle import dump, dumps, load, loads  # noqa: F401  what torch may call on a pickle module

import torch
from torch._weights_only_unpickler import Unpickler as _SafeUnpickler

from pipeline.core.contracts import Checkpoint
from pipeline.core.errors import PipelineError


WEIGHTS_SHA256 = "weights_sha256"


def weights_sha256(weights: dict) -> str:
    """sha256 over a state_dict's names and tensors' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode() + b"\0" + weights[name].detach().cpu().contiguous().view(-1).view(torch.uint8)
                 .numpy().tobytes())
    return h.hexdigest()


class Pickler(_Pickler):
    def dump(self, obj):
        # a Classifier made by classifier_from_checkpoint() carries its checkpoint
        ckpt = getattr(obj, "checkpoint", obj)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
            ckpt = {**ckpt, WEIGHTS_SHA256: weights_sha256(ckpt["model"])}
        return super().dump(ckpt)


class Unpickler(_SafeUnpickler):
    def load(self):
        loaded = super().load()
        recorded = loaded.pop(WEIGHTS_SHA256, None) if isinstance(loaded, dict) else None
        try:
            ckpt = Checkpoint.from_dict(loaded)
        except ValueError:  # not a checkpoint: what the file holds
            return loaded
        if recorded is not None and weights_sha256(ckpt.model) != recorded:
            raise PipelineError(f"the weights of this logged model ({ckpt.arm} seed={ckpt.seed}, epoch {ckpt.epoch}) "
                                f"were changed after it was logged: their sha256 differs from the one logged with "
                                f"them; log it again from its checkpoint in the arm cache")
        return classifier(ckpt)


def classifier(ckpt: Checkpoint):
    """The checkpoint's network with its normalisation in front, in eval mode, on the CPU;
    it keeps the checkpoint (`.checkpoint`, a dict), which is what saving it writes."""
    import models
    from models.layers import Classifier
    from pipeline.arm.augment import NORMS

    net = models.create_model(ckpt.config["model"], **ckpt.config["knobs"])
    net.load_state_dict(ckpt.model)
    mean, std = NORMS[ckpt.config["norm"]]
    model = Classifier(net, mean, std).eval()
    model.checkpoint = ckpt.to_dict()
    return model
