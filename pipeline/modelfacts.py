"""What an architecture costs and sees: parameters, FLOPs, receptive field, layers.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, PyTorch's own
counter: one multiply-accumulate = 2 FLOPs, over convolutions and matrix
multiplies (linear layers) of one forward pass of one 32x32 image; BatchNorm,
activations and pooling are not counted. MACs = FLOPs / 2.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import models


def count_flops(model: nn.Module, shape=(1, 3, 32, 32)) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return int(counter.get_total_flops()) // shape[0]


def receptive_field(model: nn.Module) -> int:
    """Receptive field in input pixels of the last spatial layer, along the main path.

    Walks convolutions and pools in definition order with r += (k - 1) * d * j,
    j *= s (Araujo et al., Distill 2019). Residual shortcuts (`downsample`) are
    parallel to the main path and skipped; an adaptive (global) pool ends the walk.
    """
    r, j = 1, 1
    for name, m in model.named_modules():
        if "downsample" in name:
            continue
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            break
        if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
            k, s, d = (_pair(getattr(m, a, 1)) for a in ("kernel_size", "stride", "dilation"))
            r += (k - 1) * d * j
            j *= s
    return r


def _pair(v) -> int:
    return v[0] if isinstance(v, tuple) else int(v)


def layer_table(model: nn.Module, shape=(1, 3, 32, 32)) -> list[dict]:
    """Every leaf module in call order: name, type, output shape, parameters."""
    rows, hooks = [], []
    for name, m in model.named_modules():
        if next(m.children(), None) is None and name:
            def hook(mod, _inp, out, name=name):
                rows.append({"layer": name, "type": type(mod).__name__,
                             "output": list(out.shape[1:]) if torch.is_tensor(out) else None,
                             "params": sum(p.numel() for p in mod.parameters(recurse=False))})
            hooks.append(m.register_forward_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return rows


def model_facts(name: str) -> dict:
    model = models.create_model(name)
    flops = count_flops(model)
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops": flops,
        "macs": flops // 2,
        "flops_convention": "FLOPs = 2 x multiply-accumulates, convolutions and linear layers, "
                            "one 32x32 image, forward pass (torch.utils.flop_counter)",
        "receptive_field": receptive_field(model),
        "layers": layer_table(model),
    }
