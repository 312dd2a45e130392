"""Name -> builder registry for the CIFAR-10 architectures (timm-style).

Each architecture module decorates its builder with ``@register_model``; the
builder's function name is the model's name. Builders take ``num_classes``
(default 10) and return a CPU ``nn.Module``: moving it to a device is the
caller's job, so builders stay usable in tests and on machines without CUDA.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register ``fn`` under ``fn.__name__``; a second model of the same name is refused."""
    name = fn.__name__
    if name in _MODELS:
        # Silently overwriting would let one architecture shadow another.
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``, passing ``kwargs`` (e.g. ``num_classes``) to its builder."""
    try:
        builder = _MODELS[name]
    except KeyError:
        known = list_models()
        message = f"unknown model {name!r}: known models are {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        # ValueError rather than KeyError: KeyError repr-quotes its message,
        # which mangles the one-line text shown to the user.
        raise ValueError(message) from None
    return builder(**kwargs)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's input convolution, e.g. for filter visualisation.

    Every registered model defines its input conv before any other conv, so
    this is the first ``nn.Conv2d`` in ``model.modules()`` order.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
