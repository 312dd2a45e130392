"""The pickle module of the logged MLflow models: their `data/model.pth` is the checkpoint.

`mlflow.pytorch` saves a model with `torch.save(model, pickle_module=M)` and loads
it with `torch.load(path, pickle_module=M)`, M being named in the model's
`pickle_module_info.txt`. With this module as M:

- saving writes the checkpoint the model was built from (the dict in
  runs/<arm>/seed=<k>/model.pt), not a second, pickled copy of the network; where
  the MLflow store is on the same disk, pipeline.tracking.models then links the
  file to the checkpoint itself, so it is stored once;
- loading reads that dict as `torch.load(weights_only=True)` does (no code from the
  file runs) and gives back the network behind the normalisation it was trained
  with (models.layers.Classifier), in eval mode.
"""
from __future__ import annotations

from pickle import Pickler as _Pickler
from pickle import dump, dumps, load, loads  # noqa: F401  what torch may call on a pickle module

from torch._weights_only_unpickler import Unpickler as _SafeUnpickler

from pipeline.core.contracts import Checkpoint


class Pickler(_Pickler):
    def dump(self, obj):
        # a Classifier made by classifier_from_checkpoint() carries its checkpoint
        return super().dump(getattr(obj, "checkpoint", obj))


class Unpickler(_SafeUnpickler):
    def load(self):
        loaded = super().load()
        try:
            return classifier(Checkpoint.from_dict(loaded))
        except ValueError:  # not a checkpoint: what the file holds
            return loaded


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
