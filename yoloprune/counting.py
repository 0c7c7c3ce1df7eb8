"""MACs and parameter counts, from torch's own FLOP counter run on a meta copy (no weights, no real compute)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph.tracer import _as_call_args, _map_tensors, meta_copy


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass in eval mode (convolutions, linear layers, matmuls)."""
    try:
        copy_ = meta_copy(model).eval()
        inputs = _map_tensors(example_inputs, lambda t: torch.empty_like(t, device="meta"))
        return _macs(copy_, inputs)
    except Exception:
        training = model.training
        try:
            return _macs(model.eval(), example_inputs)
        finally:
            model.train(training)


def _macs(model: nn.Module, inputs: Any) -> int:
    args, kwargs = _as_call_args(inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops()) // 2
