"""Choose channels for the most importance kept per millisecond saved: a greedy knapsack over a cost model.

Each prunable group (tied groups together) offers its next block of lowest-scoring channels (``round_to`` of them,
so widths stay on the grid); the block that loses the least importance per unit of cost saved goes first, until the
goal is reached. The cost is a ``LatencyModel``: a measured latency table, or the same shape holding MACs, so one
search serves both. Only the groups whose layers a removal touched are re-priced between picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from yoloprune.graph import Graph
from yoloprune.graph.records import ConvCall
from yoloprune.pruning.latency import LatencyModel


def conv_macs(call: ConvCall) -> float:
    """Millions of multiply-accumulates of one convolution (a cost ``LatencyModel`` can hold instead of ms)."""
    size = [
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, p, d, k, st in zip(call.size, call.padding, call.dilation, call.kernel, call.stride)
    ]
    return call.out_channels * math.prod(size) * (call.in_channels // call.groups) * math.prod(call.kernel) / 1e6


REACH = 64
"""Channels an offer may span: a runtime's cost may step only every 16, 32 or 64 channels (onnxruntime with 2
threads splits a convolution's outputs so), so a block may save nothing until further ones join it."""


@dataclass
class _Unit:
    """Groups that lose channels together: their channel count, the most they may lose, their channels in score
    order, the layers they touch."""

    groups: list
    channels: int
    cap: int
    orders: list[np.ndarray]
    layers: set[int]
    removed: int = 0

    def next_count(self, round_to: int, removed: int | None = None) -> int | None:
        """How many channels the unit will have lost after its next block, from ``removed`` (default: what it has
        lost); None: it may lose no more."""
        kept = self.channels - (self.removed if removed is None else removed)
        if round_to > 1:
            if self.channels < round_to:
                return None
            nxt = (kept - 1) // round_to * round_to
            floor = round_to
        else:
            nxt, floor = kept - 1, 1
        if nxt < floor or self.channels - nxt > self.cap:
            return None
        return self.channels - nxt

    def block(self, count: int) -> np.ndarray:
        return np.concatenate([g.comps[o[self.removed : count]] for g, o in zip(self.groups, self.orders)])


def _units(graph: Graph, scores: np.ndarray, model: LatencyModel, max_ratio: float) -> list[_Unit]:
    tied = {g.id: t for t in graph.tied().values() for g in t}
    seen: set[int] = set()
    units = []
    for g in graph.prunable_groups:
        if g.id in seen:
            continue
        members = [m for m in tied.get(g.id, [g]) if m.prunable]
        seen.update(m.id for m in members)
        channels = min(m.channels for m in members)
        cap = min(min(int(max_ratio * m.channels), m.channels - 1) for m in members)
        orders = [np.argsort(scores[m.comps], kind="stable") for m in members]
        comps = np.concatenate([m.comps for m in members])
        units.append(_Unit(members, channels, cap, orders, set(model.layers_touching(comps))))
    return units


def greedy(
    graph: Graph,
    scores: np.ndarray,
    ranked: np.ndarray,
    cost: LatencyModel,
    reached: Callable[[np.ndarray], bool],
    *,
    max_ratio: float = 0.8,
    round_to: int = 1,
) -> dict[int, int]:
    """Channels to remove per group: blocks taken in order of ``ranked`` importance lost per unit of ``cost`` saved
    until ``reached(removed)``; each group loses its lowest ``scores`` first. Stops early when no group may lose
    more (the caller checks the goal)."""
    removed = np.zeros(graph.num_comps, dtype=bool)
    units = _units(graph, scores, cost, max_ratio)
    prices: dict[int, tuple[tuple[bool, float], int, np.ndarray] | None] = {}

    def saving(block: np.ndarray) -> float:
        layers = cost.layers_touching(block)
        before = sum(cost.layer_ms(j, removed) for j in layers)
        removed[block] = True
        after = sum(cost.layer_ms(j, removed) for j in layers)
        removed[block] = False
        return before - after

    def price(i: int) -> tuple[tuple[bool, float], int, np.ndarray] | None:
        """The unit's next offer: of its next block and the bundles of further blocks up to ``REACH`` channels (up
        to the second that saves anything), the one losing the least importance per unit of cost saved; the next
        block alone, ranked after every saving offer, when none saves anything."""
        unit = units[i]
        first = count = unit.next_count(round_to)
        if first is None:
            return None
        best, savers = None, 0
        while count is not None and count - first < max(REACH, round_to):
            block = unit.block(count)
            saved = saving(block)
            if saved > 1e-12:
                ratio = float(ranked[block].sum()) / saved
                if best is None or ratio < best[0][1]:
                    best = ((False, ratio), count, block)
                savers += 1
                if savers == 2:
                    break
            count = unit.next_count(round_to, count)
        if best is None:
            block = unit.block(first)
            return ((True, float(ranked[block].sum())), first, block)
        return best

    while not reached(removed):
        for i in range(len(units)):
            if i not in prices:
                prices[i] = price(i)
        offers = [(p[0], i) for i, p in prices.items() if p is not None]
        if not offers:
            break
        _, best = min(offers)
        _, count, block = prices[best]
        removed[block] = True
        units[best].removed = count
        touched = set(cost.layers_touching(block))
        for i, unit in enumerate(units):
            if i == best or unit.layers & touched:
                prices.pop(i, None)
    return {g.id: u.removed for u in units for g in u.groups}


__all__ = ["conv_macs", "greedy"]
