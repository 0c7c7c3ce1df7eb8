"""Group lasso over the channel-dependency graph: sparsity training that drives whole coupled channels to zero.

BN-L1 (network slimming) shrinks one norm scale per channel; group lasso adds ``strength * sum_c ||W_c||_2`` where
``W_c`` is every weight a prunable channel ``c`` lives in (the producer's rows, its norm scale, every consumer's
input columns), so a later prune removes channels whose every tensor is already small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from yoloprune.graph import Graph
from yoloprune.pruning.importance import _is_weight


@dataclass
class _Place:
    name: str
    dim: int
    comps: torch.Tensor  # channel index (0..n-1 over prunable channels) of each position along dim, -1 if frozen


class GroupLasso:
    """``strength * sum_c ||W_c||_2`` over the prunable channels of ``graph`` (built on ``model``)."""

    def __init__(self, graph: Graph):
        prunable = np.zeros(graph.num_comps, dtype=bool)
        for group in graph.prunable_groups:
            prunable[group.comps] = True
        index = np.full(graph.num_comps, -1, dtype=np.int64)
        index[prunable] = np.arange(int(prunable.sum()))
        self.channels = int(prunable.sum())
        self.places = [
            _Place(m.name, m.dim, torch.from_numpy(index[comps]))
            for m, comps in zip(graph.members, graph.member_comps)
            if _is_weight(m) and prunable[comps].any()
        ]

    def norms(self, model: nn.Module) -> torch.Tensor:
        """``||W_c||_2`` of every prunable channel."""
        params = dict(model.named_parameters())
        total = None
        for place in self.places:
            t = params[place.name].detach().float()
            rows = t.movedim(place.dim, 0).reshape(t.shape[place.dim], -1).pow(2).sum(1)
            if total is None:
                total = torch.zeros(self.channels, device=t.device)
            place.comps = place.comps.to(t.device)  # once: the index stays on the parameters' device
            keep = place.comps >= 0
            total.index_add_(0, place.comps[keep], rows[keep])
        return (total if total is not None else torch.zeros(0)).sqrt()

    def add_gradient(self, model: nn.Module, strength: float) -> None:
        """Add the (sub)gradient ``strength * W_c / ||W_c||`` to every parameter's ``.grad``."""
        norms = self.norms(model).clamp_min(1e-12)
        params = dict(model.named_parameters())
        for place in self.places:
            p = params[place.name]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            comps = place.comps
            scale = torch.where(comps >= 0, strength / norms[comps.clamp_min(0)], torch.zeros((), device=p.device))
            shape = [1] * p.dim()
            shape[place.dim] = -1
            p.grad.add_(p.detach() * scale.view(shape).to(p.dtype))
