"""A cheap forward pass on a meta copy that names the module where a pruned model breaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from yoloprune.graph.macs import MacCounter
from yoloprune.graph.tracer import _as_call_args, _map_tensors, meta_copy


@dataclass
class Smoke:
    """The outcome of one forward pass: MACs when it worked, else the innermost module that raised and the error."""

    macs: int = 0
    module: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def smoke_test(model: nn.Module, example_inputs: Any, meta: bool = True) -> Smoke:
    """Run ``model`` in eval mode (on meta tensors unless ``meta`` is False), counting MACs."""
    net = meta_copy(model) if meta else model
    training = net.training
    stack: list[str] = []
    hooks = []

    def enter(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name)

        return hook

    def leave(module: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    for name, m in net.named_modules():
        hooks.append(m.register_forward_pre_hook(enter(name)))
        hooks.append(m.register_forward_hook(leave))
    inputs = _map_tensors(example_inputs, lambda t: torch.empty_like(t, device="meta")) if meta else example_inputs
    args, kwargs = _as_call_args(inputs)
    counter = MacCounter(meta=meta)
    try:
        with torch.no_grad(), counter:
            net.eval()(*args, **kwargs)
    except Exception as exc:  # reported to the caller
        return Smoke(module=stack[-1] if stack else "", error=f"{type(exc).__name__}: {exc}")
    finally:
        net.train(training)
        for h in hooks:
            h.remove()
    return Smoke(macs=counter.total)
