"""MACs and parameter counts: one counter shared by prune, bench and sweep (see ``yoloprune.graph.macs``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from yoloprune.graph.smoke import smoke_test


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared ones once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one eval-mode forward pass (convolutions, linear layers, matmuls), counted on a meta
    copy of the model, or on the model itself when its forward needs real values."""
    result = smoke_test(model, example_inputs, meta=True)
    if result.failed:
        result = smoke_test(model, example_inputs, meta=False)
    if result.failed:
        raise ValueError(f"the model cannot run on the example inputs: {result.error}")
    return result.macs
