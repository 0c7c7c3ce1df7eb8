"""Channel importance: one score per channel of the graph, aggregated over every member of its group."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .graph import Graph
from .graph.surgery import _tensor

CRITERIA = ("random", "l1", "l2")


def channel_scores(model: nn.Module, graph: Graph, criterion: str = "l2", seed: int = 0) -> np.ndarray:
    """Score every channel (graph component); lower scores are removed first.

    ``l1``/``l2``: mean over the group's weight tensors (producers' output rows, consumers' input columns, norm
    scales) of the channel's summed absolute / squared weights. ``random``: uniform noise from ``seed``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "random":
        return np.random.default_rng(seed).random(graph.num_comps)
    total = np.zeros(graph.num_comps)
    count = np.zeros(graph.num_comps)
    with torch.no_grad():
        for member, comps in zip(graph.members, graph.member_comps):
            if not _scored(member):
                continue
            t = _tensor(model, member.name).detach().float()
            rows = t.movedim(member.dim, 0).reshape(t.shape[member.dim], -1)
            value = rows.abs().sum(1) if criterion == "l1" else rows.pow(2).sum(1)
            np.add.at(total, comps, value.cpu().numpy())
            np.add.at(count, comps, 1)
    return total / np.maximum(count, 1)


def _scored(member) -> bool:
    if member.is_buffer or member.role == "stat":
        return False
    if member.role in ("out", "in"):
        return not member.name.endswith("bias")
    return member.name.endswith("weight")
