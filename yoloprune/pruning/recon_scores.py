"""Reconstruction-aware importance: how much each channel's removal would cost *after* calibration repairs it.

Calibrated pruning refits every consumer of a removed channel by least squares. What it cannot repair is the part of
the channel that the kept channels do not predict. For a consumer with weights ``W`` and input second-moment matrix
``H`` (sampled input patches and a constant column, on the calibration images), removing the columns ``S`` of one
channel and refitting the rest optimally leaves the output error ``tr(W_S [(H^-1)_SS]^-1 W_S^T)`` (the optimal brain
surgeon's saliency for a block of columns, as in OBC/SparseGPT). A channel's score is that error relative to the
consumer's output energy, summed over its consumers: low scores are channels the others can stand in for, whatever
their weight norms say.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from yoloprune.graph import Graph
from yoloprune.pruning.calibrate import first_calls, patches, refittable, sample_positions

DAMPING = 0.01
"""Added to the diagonal of each input second-moment matrix, relative to its mean diagonal."""


def input_moments(
    model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor], samples: int = 4096, seed: int = 0
) -> dict[str, torch.Tensor]:
    """For each dense convolution of ``names``, the second-moment matrix of its input patches (in the weight's
    column order, plus a constant last column) over sampled output positions of ``batches``, in one pass per batch."""
    sums: dict[str, torch.Tensor] = {}
    count = max(1, samples // max(len(batches), 1))

    def accumulate(name: str, i: int, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        rows = patches(module, args[0].detach().float(), out.shape, sample_positions(out.shape, count, seed + i))
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1)], 1)
        sums[name] = sums[name] + rows.T @ rows if name in sums else rows.T @ rows

    training = model.training
    model.eval()
    try:
        first_calls(model, names, batches, accumulate)
    finally:
        model.train(training)
    return sums


def _damped_inverse(moments: torch.Tensor) -> torch.Tensor:
    h = moments.double()
    return torch.linalg.inv(h + DAMPING * h.diagonal().mean().clamp_min(1e-12) * torch.eye(h.shape[0], dtype=h.dtype))


def _energy(weight: torch.Tensor, moments: torch.Tensor) -> float:
    """The consumer's output energy on the samples (``moments`` include the constant column, which has no weight)."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    h = moments.double()[:-1, :-1]
    return float(torch.einsum("of,fg,og->", w, h, w).clamp_min(1e-12))


class _Consumer:
    """One consumer's refit state while channels of one group are removed from it: the inverse second moments of the
    inputs that remain and the weights compensated for what was removed (optimal brain surgeon updates)."""

    def __init__(self, weight: torch.Tensor, inverse: torch.Tensor, energy: float):
        self.k = weight.shape[2] * weight.shape[3]
        self.w = torch.cat(
            [
                weight.detach().double().reshape(weight.shape[0], -1),
                weight.new_zeros(weight.shape[0], 1, dtype=torch.float64),
            ],
            1,
        )
        self.inverse = inverse.clone()
        self.energy = energy

    def _columns(self, channels: Sequence[int]) -> torch.Tensor:
        return (torch.as_tensor(list(channels))[:, None] * self.k + torch.arange(self.k)[None]).reshape(-1)

    def costs(self, channels: Sequence[int]) -> torch.Tensor:
        """Relative output error of removing each of ``channels`` alone (and refitting) from the current state."""
        cols = self._columns(channels).reshape(len(channels), self.k)
        blocks = self.inverse[cols[:, :, None], cols[:, None, :]]  # (n, k, k)
        w = self.w[:, cols]  # (o, n, k)
        return torch.einsum("ock,ckj,ocj->c", w, torch.linalg.inv(blocks), w) / self.energy

    def remove(self, channels: Sequence[int]) -> None:
        """Remove ``channels`` together and compensate the rest."""
        cols = self._columns(channels)
        solve = torch.linalg.solve(self.inverse[cols[:, None], cols[None, :]], self.inverse[cols, :])
        self.w -= self.w[:, cols] @ solve
        self.inverse -= self.inverse[:, cols] @ solve


def channel_costs(weight: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """Relative output error of removing each input channel alone of a convolution with ``weight`` (out, in, kh, kw)
    and refitting the others, given the input second moments ``moments`` (in*kh*kw + 1 square, constant last)."""
    consumer = _Consumer(weight, _damped_inverse(moments), _energy(weight, moments))
    return consumer.costs(range(weight.shape[1])).float()


ROUNDS = 8
"""A group's channels are ranked in this many rounds of removal (each removes an equal share of ``REACH``): the cost
of a channel is measured after the cheaper ones are gone, so channels that stand in for each other are not all
judged redundant at once."""
REACH = 0.8


def _costs(parts: list[tuple[_Consumer, dict[int, list[int]]]], channels: list[int]) -> np.ndarray:
    """Each channel's removal cost summed over the consumers that read it (and over its positions in each)."""
    total = np.zeros(len(channels))
    for consumer, where in parts:
        index = [(i, p) for i, c in enumerate(channels) for p in where.get(c, ())]
        if index:
            costs = consumer.costs([p for _, p in index]).numpy()
            np.add.at(total, [i for i, _ in index], costs)
    return total


def reconstruction_scores(
    model: nn.Module, graph: Graph, batches: Sequence[torch.Tensor], samples: int = 4096, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (graph component): the relative error its removal leaves in its dense-convolution consumers
    after refitting, measured in rounds of removal within its group; and whether any such consumer was seen."""
    consumers = {
        m.module: (m, comps)
        for m, comps in zip(graph.members, graph.member_comps)
        if m.role == "in"
        and not m.is_buffer
        and m.name.endswith("weight")
        and m.dim == 1
        and refittable(model.get_submodule(m.module))
        and len(comps) == model.get_submodule(m.module).weight.shape[1]
    }
    moments = input_moments(model, list(consumers), batches, samples, seed)
    inverses = {name: _damped_inverse(h) for name, h in moments.items()}
    energies = {name: _energy(model.get_submodule(name).weight, h) for name, h in moments.items()}
    scores = np.zeros(graph.num_comps)
    seen = np.zeros(graph.num_comps, dtype=bool)
    for group in graph.prunable_groups:
        parts = []
        for name, (_member, comps) in consumers.items():
            if name not in moments:
                continue
            where = {int(c): np.nonzero(comps == c)[0].tolist() for c in group.comps}
            where = {c: p for c, p in where.items() if p}
            if where:
                parts.append((_Consumer(model.get_submodule(name).weight, inverses[name], energies[name]), where))
        if not parts:
            continue
        remaining = [int(c) for c in group.comps if any(c in where for _, where in parts)]
        seen[remaining] = True
        share = max(1, int(np.ceil(REACH * len(remaining) / ROUNDS)))
        floor = len(remaining) - int(np.ceil(REACH * len(remaining)))  # channels no target removes
        level = 0.0
        while remaining:
            cost = _costs(parts, remaining)
            if len(remaining) <= max(floor, share):  # the rest, ranked above everything removed before
                scores[remaining] = level + cost
                break
            take = np.argsort(cost, kind="stable")[:share]
            for i in take:
                level = max(level, float(cost[i]))
                scores[remaining[i]] = level
            gone = {remaining[i] for i in take}
            for consumer, where in parts:
                positions = [p for c in gone if c in where for p in where[c]]
                if positions:
                    consumer.remove(positions)
            remaining = [c for c in remaining if c not in gone]
    return scores, seen


__all__ = ["channel_costs", "input_moments", "reconstruction_scores"]
