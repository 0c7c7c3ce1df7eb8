"""Multiply-accumulates of the operations that dominate a detector: convolutions, linear layers, matmuls.

Counted from the shapes each call sees while the tracer or the smoke test runs anyway, so counting costs no extra
forward pass. The figures equal ``torch.utils.flop_counter.FlopCounterMode`` totals divided by two (a test checks
that); that counter works at the dispatcher level and costs seconds per pass on meta tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from yoloprune.graph.nest import map_tensors, tensors_in


def _conv(args: tuple, kwargs: dict, out: Any) -> int:
    weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
    return out.numel() * weight.shape[1] * math.prod(weight.shape[2:])


def _conv_transpose(args: tuple, kwargs: dict, out: Any) -> int:
    x = kwargs.get("input", args[0])
    weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
    return x.numel() * weight.shape[1] * math.prod(weight.shape[2:])


def _linear(args: tuple, kwargs: dict, out: Any) -> int:
    weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
    return out.numel() * weight.shape[1]


def _matmul(args: tuple, kwargs: dict, out: Any) -> int:
    a = args[0]
    if a.ndim == 1:
        return out.numel() * a.shape[0] if out.ndim else a.shape[0]
    return out.numel() * a.shape[-1]


def _addmm(args: tuple, kwargs: dict, out: Any) -> int:
    return out.numel() * args[1].shape[-1]


COUNTERS: dict[Any, Callable[[tuple, dict, Any], int]] = {
    F.conv1d: _conv,
    F.conv2d: _conv,
    F.conv3d: _conv,
    F.conv_transpose1d: _conv_transpose,
    F.conv_transpose2d: _conv_transpose,
    F.conv_transpose3d: _conv_transpose,
    F.linear: _linear,
    torch.matmul: _matmul,
    torch.Tensor.matmul: _matmul,
    torch.Tensor.__matmul__: _matmul,
    torch.mm: _matmul,
    torch.Tensor.mm: _matmul,
    torch.bmm: _matmul,
    torch.Tensor.bmm: _matmul,
    torch.addmm: _addmm,
    torch.baddbmm: _addmm,
}


def op_macs(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """MACs of one torch call (0 for calls that are not counted)."""
    counter = COUNTERS.get(func)
    if counter is None or not isinstance(out, torch.Tensor):
        return 0
    return int(counter(args, kwargs, out))


class MacCounter(TorchFunctionMode):
    """Adds up ``op_macs`` of every call made while active. With ``meta``, CPU tensors a model cached outside its
    parameters (anchor grids kept in plain lists) are moved to the meta device when they meet meta tensors."""

    def __init__(self, meta: bool = False) -> None:
        super().__init__()
        self.total = 0
        self.meta = meta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.meta:
            args, kwargs = meta_args(args, kwargs)
        out = func(*args, **kwargs)
        if func in COUNTERS:
            self.total += op_macs(func, args, kwargs, out)
        return out


def meta_args(args: tuple, kwargs: dict, convert: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple:
    """When a call mixes meta tensors with real ones (other than 0-dim scalars), move the real ones to meta."""
    found = [t for t in tensors_in(args) + tensors_in(kwargs) if t.ndim > 0]
    if not found or all(t.is_meta for t in found) or not any(t.is_meta for t in found):
        return args, kwargs

    def to_meta(t: torch.Tensor) -> torch.Tensor:
        if t.is_meta or t.ndim == 0:  # CPU scalars mix with any device, and may be read as values
            return t
        return convert(t) if convert is not None else torch.empty_like(t, device="meta")

    return map_tensors(args, to_meta), map_tensors(kwargs, to_meta)
