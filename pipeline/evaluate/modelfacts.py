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
from pipeline.evaluate.contracts import ModelFacts


def count_flops(model: nn.Module, shape=(1, 3, 32, 32)) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(shape))
    return int(counter.get_total_flops()) // shape[0]


def receptive_field(model: nn.Module, shape=(1, 3, 32, 32)) -> int:
    """Receptive field in input pixels of one position of the last feature map,
    along the main path: what the network sees before a global pool averages
    everything (which would make it the whole image).

    Follows the convolutions and pools in the order a forward pass calls them,
    with r += (k - 1) * d * j, j *= s (Araujo et al., Distill 2019). Residual
    shortcuts (`downsample`) are parallel to the main path and skipped; a pool
    whose window covers its whole input, or an adaptive pool, ends the walk.
    """
    calls = []
    hooks = [m.register_forward_hook(lambda mod, inp, _out, name=name: calls.append((name, mod, inp[0].shape[-1])))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d |
                                                                    nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    r, j = 1, 1
    for name, m, size in calls:
        if "downsample" in name:
            continue
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            break
        k, s, d = (_pair(getattr(m, a, 1)) for a in ("kernel_size", "stride", "dilation"))
        if isinstance(m, nn.MaxPool2d | nn.AvgPool2d) and k >= size:
            break  # global
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


def model_facts(name: str, knobs: dict) -> ModelFacts:
    model = models.create_model(name, **knobs)
    flops = count_flops(model)
    return ModelFacts(
        model=name, knobs=knobs,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=flops, macs=flops // 2,
        flops_convention="FLOPs = 2 x multiply-accumulates (MACs), convolutions and linear layers, one 32x32 "
                         "image, forward pass (torch.utils.flop_counter); a count of MACs is half as large",
        receptive_field=receptive_field(model),
        layers=layer_table(model))
