"""Name -> builder registry for the CIFAR-10 architectures (timm-style).

A model is one file in `models/`: a builder decorated with
``@register_model(params=N)``, where N is the parameter count with the default
knobs (the registry tests check it). The builder's function name is the model's
name; ``models/__init__.py`` imports every file of the package, so nothing else
needs editing.

Knobs are the builder's keyword-only arguments: their annotations declare the
type and allowed values (``Literal[...]``, ``Annotated[float, Field(ge=0, lt=1)]``,
``bool``), their defaults are the recipe's. Params set them per arm
(``knobs.dropout: [0, 0.5]`` is an axis) and they are validated here, once.

Model files import torch inside their builders, never at import time: the
registry (names, knobs, parameter counts) is read when params are validated,
which must not load torch. Builders return a CPU ``nn.Module``; moving it to a
device is the caller's job.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if typing.TYPE_CHECKING:
    from torch import nn

ModelBuilder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class Knob:
    name: str
    annotation: Any  # the evaluated annotation: a type, Literal[...] or Annotated[...]
    default: Any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: ModelBuilder
    params: int  # parameter count with the default knobs and 10 classes
    knobs: dict[str, Knob]

    @property
    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs.values()}


_MODELS: dict[str, ModelSpec] = {}


def register_model(fn: ModelBuilder | None = None, *, params: int):
    """Decorator: register the builder under its function name with its expected
    parameter count; a second model of the same name is refused."""

    def deco(builder: ModelBuilder) -> ModelBuilder:
        name = builder.__name__
        if name in _MODELS:
            # Silently overwriting would let one architecture shadow another.
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(name, builder, params, _knobs(builder))
        return builder

    return deco(fn) if fn is not None else deco


def _knobs(builder: ModelBuilder) -> dict[str, Knob]:
    """The builder's keyword-only arguments, with their annotations evaluated in its module."""
    out = {}
    namespace = vars(inspect.getmodule(builder))
    for p in inspect.signature(builder).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty or p.annotation is inspect.Parameter.empty:
            raise TypeError(f"{builder.__name__}: knob {p.name!r} needs an annotation and a default")
        ann = eval(p.annotation, namespace) if isinstance(p.annotation, str) else p.annotation  # noqa: S307
        out[p.name] = Knob(p.name, ann, p.default)
    return out


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def known_knobs() -> list[str]:
    """Every knob name of any registered model, sorted."""
    return sorted({k for spec in _MODELS.values() for k in spec.knobs})


def model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        known = list_models()
        message = f"unknown model {name!r}: known models are {', '.join(known) or '(none)'}"
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        # ValueError rather than KeyError: KeyError repr-quotes its message,
        # which mangles the one-line text shown to the user.
        raise ValueError(message) from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` are its knobs (or ``num_classes``)."""
    return model_spec(name).builder(**kwargs)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The model's input convolution, e.g. for filter visualisation.

    Every registered model defines its input conv before any other conv, so
    this is the first ``nn.Conv2d`` in ``model.modules()`` order.
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
