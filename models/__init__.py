"""CIFAR-10 architectures, built by name.

Importing this package registers every architecture. To add one, write a
module with an ``@register_model`` builder and import it below.
"""

from __future__ import annotations

from models import cnn4, dilated_net, resnet18, simple_cnn, tutorial_cnn  # noqa: F401  (registration)
from models.registry import create_model, first_conv, list_models, register_model

__all__ = ["create_model", "first_conv", "list_models", "register_model"]
