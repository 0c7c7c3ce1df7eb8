"""Predict a pruned model's latency from a table of its convolutions' latencies over widths.

Every traced 2-d convolution is timed alone (with its activation) by a function the caller gives
(``yoloprune.export.latency_table`` times them with onnxruntime on this machine and caches them): at every output
width on the runtime's channel block with its full input, and at a grid of input widths with its full output. A kept
width is rounded up to the block (a runtime computes whole blocks), the output profile is read there, and scaled by
the input profile (interpolated linearly between its widths) over its value at full width. Reading every output
width catches what a grid would miss: with 2 threads onnxruntime splits a convolution's outputs in steps of 32 or
64 channels (a 3x3 convolution at 80x80 with 64 inputs took 3.25 ms with 72 and with 80 outputs, 4.38 ms with 104
and with 112, here). The prediction is the convolutions' sum. What it leaves out (post-processing,
concatenations, reordering), and what moved since the table was timed (a machine whose speed drifts, a laptop off
its charger), a latency target's search measures on the whole model (``next_fraction``). Knows no runtime: it is
handed ``measure`` and calls nothing by name.
Also here: ``next_fraction``, which aims a latency target's next candidate from the ones timed before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from yoloprune.graph import Graph
from yoloprune.graph.records import ConvCall

GRID = (0.25, 0.5, 0.75, 1.0)
"""Fractions of each full input width the table is measured at."""

Measure = Callable[[ConvCall], float]
"""Milliseconds of one convolution (and its activation) run alone."""


QUANTUM = 16
"""The widest channel block ``channel_block`` looks for: onnxruntime's CPU convolutions work in blocks of 16
channels on AVX-512 (8 on AVX2), so a width off the block costs what the block above it costs (measured here: 56
input or output channels took as long as 64)."""

PROBE = ConvCall(64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (40, 40))
"""The convolution ``channel_block`` times at a few output widths."""


def channel_block(measure: Measure, widest: int = QUANTUM) -> int:
    """The channel block a runtime computes in, from a few timings of ``PROBE``: the widest power of two up to
    ``widest`` at which a width half a block below a block costs (nearly) what the block costs; 1 when none does
    (cost grows with every channel)."""
    full = measure(PROBE)
    q = widest
    while q > 1:
        below = measure(replace(PROBE, out_channels=PROBE.out_channels - q))
        half = measure(replace(PROBE, out_channels=PROBE.out_channels - q // 2))
        if full > below and half >= below + 0.75 * (full - below):
            return q
        q //= 2
    return 1


def grid_widths(channels: int, quantum: int = QUANTUM) -> tuple[int, ...]:
    """The input widths a layer of ``channels`` is timed at: ``GRID`` fractions rounded up to multiples of
    ``quantum`` (every width for layers narrower than two blocks)."""
    q = quantum if channels >= 2 * quantum else 1
    return tuple(sorted({min(channels, max(1, q * math.ceil(f * channels / q))) for f in GRID}))


def block_widths(channels: int, quantum: int = QUANTUM) -> tuple[int, ...]:
    """The output widths a layer of ``channels`` is timed at: every multiple of ``quantum`` and the full width
    (``grid_widths`` for layers narrower than two blocks and for ``quantum`` 1, where cost is linear in width)."""
    if quantum == 1 or channels < 2 * quantum:
        return grid_widths(channels, quantum)
    return tuple(sorted({*range(quantum, channels + 1, quantum), channels}))


def _interp(x: float, xs: tuple[int, ...], ys: np.ndarray) -> float:
    if x <= 0:
        return 0.0
    if x < xs[0]:
        return float(ys[0]) * x / xs[0]
    return float(np.interp(x, xs, ys))


@dataclass
class Layer:
    """One convolution weight: its calls at full width, the components of its output and input channels, its
    milliseconds (summed over its calls) at ``outs`` widths with the full input and at ``ins`` widths with the full
    output, and the runtime's channel block it rounds widths up to."""

    name: str
    calls: list[ConvCall]
    out_comps: np.ndarray
    in_comps: np.ndarray | None  # None: depthwise (the input is the output's channels)
    outs: tuple[int, ...]
    out_ms: np.ndarray
    ins: tuple[int, ...]
    in_ms: np.ndarray
    quantum: int = 1

    @property
    def depthwise(self) -> bool:
        return self.in_comps is None

    def _on_block(self, kept: float, channels: int) -> float:
        q = self.quantum if channels >= 2 * self.quantum else 1
        return min(float(channels), q * math.ceil(round(kept) / q)) if q > 1 and kept > 0 else kept

    def ms(self, kept_in: float, kept_out: float) -> float:
        """Milliseconds at these kept widths (each rounded up to the block)."""
        first = self.calls[0]
        ms = _interp(self._on_block(kept_out, first.out_channels), self.outs, self.out_ms)
        if self.depthwise or len(self.ins) == 1:
            return ms
        full = float(self.in_ms[-1])
        kept = self._on_block(kept_in, first.in_channels)
        return ms * _interp(kept, self.ins, self.in_ms) / full if full > 0 else ms


def _at(call: ConvCall, cin: int, cout: int, depthwise: bool) -> ConvCall:
    """``call`` with these widths (a grouped convolution keeps its groups; a depthwise one has one per channel)."""
    if depthwise:
        mult = max(call.out_channels // max(call.in_channels, 1), 1)
        return replace(call, in_channels=max(cout // mult, 1), out_channels=cout, groups=max(cout // mult, 1))
    return replace(call, in_channels=cin, out_channels=cout)


def _timed(measure: Measure, calls: list[ConvCall], cin: int, cout: int, depthwise: bool) -> float:
    return sum(measure(_at(c, cin, cout, depthwise)) for c in calls)


def _scaled(call: ConvCall, scale: float) -> ConvCall:
    return replace(call, size=tuple(max(1, round(s * scale)) for s in call.size)) if scale != 1 else call


@dataclass
class LatencyBudget:
    """How a prune meets or ranks by latency: ``model_for`` builds the latency model of each traced graph;
    ``fraction`` is the share of its predicted latency to keep (None: the settings' own goal, ranked by cost)."""

    model_for: Callable[[Graph], LatencyModel]
    fraction: float | None = None


class LatencyModel:
    """Milliseconds a pruned version of ``graph``'s convolutions would take: every convolution's table at its kept
    widths. ``scale`` times the layers at another input size (the latency size over the traced one);
    ``quantum`` is the runtime's channel block (None: found by ``channel_block``)."""

    def __init__(
        self,
        graph: Graph,
        measure: Measure,
        *,
        scale: float = 1.0,
        quantum: int | None = None,
    ) -> None:
        self.graph = graph
        self.quantum = quantum = channel_block(measure) if quantum is None else quantum
        comps = {(m.name, m.dim): c for m, c in zip(graph.members, graph.member_comps) if not m.is_buffer}
        self.layers: list[Layer] = []
        for name, calls in graph.trace.convs.items():
            calls = [_scaled(c, scale) for c in calls]
            first = calls[0]
            out_comps = comps.get((name, 0), np.zeros(0, dtype=np.int64))
            depthwise = first.groups > 1 and first.groups == first.in_channels
            in_comps = None if depthwise else comps.get((name, 1), np.zeros(0, dtype=np.int64))
            outs = block_widths(first.out_channels, quantum)
            ins = (first.in_channels,) if depthwise else grid_widths(first.in_channels, quantum)
            if not depthwise and first.groups > 1:  # each group keeps the same input positions: whole groups' worth
                ins = tuple(sorted({max(first.groups, first.groups * round(w / first.groups)) for w in ins}))
            out_ms = np.array([_timed(measure, calls, first.in_channels, w, depthwise) for w in outs])
            in_ms = np.array([_timed(measure, calls, w, first.out_channels, depthwise) for w in ins])
            self.layers.append(Layer(name, calls, out_comps, in_comps, outs, out_ms, ins, in_ms, quantum))
        self._by_comp: dict[int, list[int]] = {}
        for i, layer in enumerate(self.layers):
            touched = layer.out_comps if layer.in_comps is None else np.concatenate([layer.out_comps, layer.in_comps])
            for c in np.unique(touched):
                self._by_comp.setdefault(int(c), []).append(i)

    def widths(self, layer: Layer, removed: np.ndarray) -> tuple[float, float]:
        """Kept input and output channels of ``layer`` with the flagged components removed."""
        first = layer.calls[0]
        out = first.out_channels - int(removed[layer.out_comps].sum()) if layer.out_comps.size else first.out_channels
        if layer.in_comps is None:
            return out, out
        if not layer.in_comps.size:
            return first.in_channels, out
        per_group = first.in_channels // first.groups  # the weight's input dimension holds one group's positions
        kept = per_group - int(removed[layer.in_comps].sum()) * per_group // max(layer.in_comps.size, 1)
        return kept * first.groups, out

    def layer_ms(self, i: int, removed: np.ndarray) -> float:
        layer = self.layers[i]
        return layer.ms(*self.widths(layer, removed))

    def predict(self, removed: np.ndarray | None = None) -> float:
        """Predicted milliseconds with the flagged components removed (none: the model as it is)."""
        removed = np.zeros(self.graph.num_comps, dtype=bool) if removed is None else removed
        return sum(self.layer_ms(i, removed) for i in range(len(self.layers)))

    def layers_touching(self, comps: np.ndarray) -> list[int]:
        """Indices of the layers whose input or output holds any of ``comps``."""
        return sorted({i for c in np.unique(comps) for i in self._by_comp.get(int(c), ())})


def next_fraction(timed: list[tuple[float, float]], target: float, aim: float = 0.985) -> float:
    """The next share of the predicted latency to try, from ``(share, measured ms)`` pairs timed so far (the unpruned
    model among them, at share 1.0): aimed at ``aim`` x ``target`` by interpolating between the nearest timed shares
    on either side of it, or through the two nearest when all lie on one side (past the deepest cut at most twice
    the step of the line from the widest share, the unpruned model, to the deepest: two close, noisy timings draw a
    line that leaps), or in proportion from the deepest cut when there is one point or the two disagree (a deeper
    cut measured slower).
    A line through measured points holds what the table leaves out (a constant cost, a machine faster or slower
    than when the table was timed). Never a share already timed (timing it again would only measure noise): 2%
    deeper instead."""
    goal = aim * target
    ordered = sorted(timed, key=lambda t: abs(t[1] - goal))
    under = [t for t in ordered if t[1] <= goal]
    over = [t for t in ordered if t[1] > goal]
    pair = (under[0], over[0]) if under and over else tuple(ordered[:2])
    (f0, m0), (f1, m1) = pair if len(pair) == 2 else (pair[0], pair[0])
    deepest, widest = min(timed), max(timed)
    proportional = deepest[0] * goal / deepest[1]
    if (f1 - f0) * (m1 - m0) > 1e-12:  # a line along which deeper cuts run faster
        fraction = f0 + (goal - m0) * (f1 - f0) / (m1 - m0)
        if widest[0] > deepest[0] and widest[1] > deepest[1]:  # the longest line (from the unpruned model) holds
            reach = deepest[0] - (deepest[1] - goal) * (widest[0] - deepest[0]) / (widest[1] - deepest[1])
            if fraction < reach < deepest[0]:  # past the deepest cut a line through close timings can leap
                fraction = max(fraction, deepest[0] - 2 * (deepest[0] - reach))
    else:  # one point, or noise that ran a deeper cut slower: in proportion from the deepest cut
        fraction = proportional
    # never more than halve the deepest cut tried: extrapolation is a guess
    fraction = min(max(fraction, 0.5 * deepest[0], 0.01), 1.0)
    return untried(fraction, [f for f, _ in timed])


def untried(fraction: float, shares: list[float], step: float = 0.98) -> float:
    """``fraction`` stepped by ``step`` (2% deeper by default) until it is none of ``shares``."""
    while any(abs(fraction - f) < 1e-4 for f in shares):
        fraction *= step
    return float(fraction)


__all__ = [
    "GRID",
    "QUANTUM",
    "LatencyBudget",
    "LatencyModel",
    "Layer",
    "Measure",
    "block_widths",
    "channel_block",
    "grid_widths",
    "next_fraction",
    "untried",
]
