"""Shared test helpers: BN statistics that are not the identity, and the exactness check."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

import yoloprune
from yoloprune.graph import max_relative_difference, zero_producers


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random statistics and affine parameters, so none is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                    m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def prune_exact(model: nn.Module, x: Any, ratio: float = 0.5, outputs=None, **kwargs) -> yoloprune.PruneReport:
    """Prune ``model`` in place and assert the exactness property and that MACs and params went down."""
    reference = copy.deepcopy(model)
    report = yoloprune.prune(model, x, ratio=ratio, **kwargs)
    zero_producers(reference, report.removal)
    diff = max_relative_difference(reference, model, x, outputs)
    assert diff <= 1e-4, f"pruned outputs differ from the zeroed reference by {diff:.3g}"
    assert report.channels_removed > 0
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    return report


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Parameter shapes by name."""
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


class MacsTable:
    """Stands in for ``yoloprune.export.latency_table.ConvTimer``: each convolution 'takes' its MACs in
    microseconds, so latency-aware paths run without timing anything. ``made`` holds each table's thread count."""

    made: ClassVar[list[int]] = []

    def __init__(self, threads: int, **_: Any) -> None:
        MacsTable.made.append(threads)

    def __call__(self, call: Any) -> float:
        from yoloprune.pruning.knapsack import conv_macs

        return conv_macs(call) / 1e3

    def save(self) -> None:
        return None


def craft_checkpoint(path: Path, data: bytes) -> Path:
    """A torch zip checkpoint whose pickle is ``data`` (the other records come from a real, empty save)."""
    base = path.with_suffix(".base")
    torch.save({}, base)
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, data if name.endswith("data.pkl") else src.read(name))
    base.unlink()
    return path
