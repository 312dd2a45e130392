"""CIFAR-10 architectures, built by name.

Importing this package registers every architecture: each module of the
package is imported here, and its ``@register_model`` builder adds itself. A
new architecture is one new file; see ``models/registry.py``.
"""

from __future__ import annotations

import importlib
import pkgutil

from models.registry import ModelSpec, create_model, first_conv, known_knobs, list_models, model_spec, register_model

_NOT_MODELS = {"registry", "layers"}

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_MODELS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["ModelSpec", "create_model", "first_conv", "known_knobs", "list_models", "model_spec", "register_model"]
