"""The exactness property: removing channels whose producers carry zeros leaves the outputs unchanged."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from yoloprune.graph.nest import tensors_in
from yoloprune.graph.records import OutputSelector
from yoloprune.graph.surgery import Removal, _tensor
from yoloprune.graph.tracer import _as_call_args


def zero_producers(model: nn.Module, removal: Removal) -> None:
    """Zero, in place, the producing parameters of every removed channel (weight rows, biases, scales, shifts)."""
    with torch.no_grad():
        for name, dims in removal.producers.items():
            t = _tensor(model, name)
            for dim, index in dims.items():
                t.index_fill_(dim, torch.as_tensor(index, device=t.device), 0)


def max_relative_difference(
    reference: nn.Module, pruned: nn.Module, example_inputs: Any, outputs: OutputSelector | None = None
) -> float:
    """Largest ``max|a - b| / max|a|`` over the selected output tensors of two models, both run in eval mode (each
    module's mode is restored afterwards). Infinite when an output holds NaN or inf: nothing is shown equal then."""
    args, kwargs = _as_call_args(example_inputs)
    worst = 0.0
    modes = [(m, m.training) for model in (reference, pruned) for m in model.modules()]
    try:
        with torch.no_grad():
            a = reference.eval()(*args, **kwargs)
            b = pruned.eval()(*args, **kwargs)
    finally:
        for module, training in modes:
            module.training = training
    ta = tensors_in(a if outputs is None else outputs(a))
    tb = tensors_in(b if outputs is None else outputs(b))
    if len(ta) != len(tb):
        raise AssertionError(f"the models return {len(ta)} and {len(tb)} tensors")
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            raise AssertionError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            return math.inf
        scale = x.detach().abs().max().clamp_min(1e-12)
        worst = max(worst, float(((x - y).abs().max() / scale).item()))
    return worst
