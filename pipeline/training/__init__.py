"""The computation of one arm x seed: data subset, augmentation, the training loop.

Everything under this package (and `models/`) decides what a trained arm is, so
the arm's fingerprint hashes it (pipeline.core.provenance.ARM_CODE). This file
is the package's vocabulary, the choices a training config can make, kept free
of torch so params can be validated without loading it.
"""
from __future__ import annotations

# Augmentation regimes, implemented in pipeline.training.augment.
AUGMENTATIONS = ("none", "standard", "ssr_cutout", "strong")

# Per-channel mean and std of the normalisation, RGB.
NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The widely copied std (per-image std averaged, not the dataset std),
    # used by the dilated_net recipe.
    "cifar10_legacy": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine")  # stepped once per batch
# auto: mixed precision where a GPU gains from it, bf16 where it supports it, else
# fp16 with a gradient scaler; fp32 on the CPU (resolve_precision below)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def resolve_precision(precision: str, device_type: str, bf16_supported: bool | None = None) -> str:
    """`auto` made concrete for a device type: bf16 on a GPU that has it (Ampere and
    later), fp16 with a gradient scaler on older GPUs (a T4, the resnet18 recipe's
    own), fp32 on the CPU, where mixed precision buys nothing. Asks torch only on
    CUDA when `bf16_supported` is not given."""
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "fp32"
    if bf16_supported is None:
        import torch

        bf16_supported = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if bf16_supported else "fp16"
