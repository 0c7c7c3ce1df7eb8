"""Predict a pruned model's latency from a table of its convolutions' latencies over widths.

Every traced 2-d convolution is timed alone (with its activation) over a grid of kept input and output widths on the
runtime's channel block, and half a block off it on each side, by a function the caller gives
(``yoloprune.export.latency_table`` times them with onnxruntime on this machine and caches them). Between grid points
the table is interpolated bilinearly (below the smallest in proportion to the width), and a width off the block is
charged its side's measured factor. What the table does not hold (post-processing, concatenations, reordering) is a
constant ``overhead``, which the caller sets from one measurement of the whole model. Knows no runtime: it is handed
``measure`` and calls nothing by name.
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
"""Fractions of each full width the table is measured at."""

Measure = Callable[[ConvCall], float]
"""Milliseconds of one convolution (and its activation) run alone."""


QUANTUM = 16
"""Channel block the table is aligned to: onnxruntime's CPU convolutions work in blocks of 16 channels on AVX-512
(8 on AVX2), and a width off the block can take twice as long (a 3x3 convolution at 80x80 with 56 input channels
took 8.6 ms here, with 64 4.4 ms); widths off the block are charged a factor measured per layer."""


def grid_widths(channels: int, quantum: int = QUANTUM) -> tuple[int, ...]:
    """The widths a layer of ``channels`` is timed at: ``GRID`` fractions rounded up to multiples of ``quantum``
    (every width for layers narrower than two blocks)."""
    q = quantum if channels >= 2 * quantum else 1
    return tuple(sorted({min(channels, max(1, q * math.ceil(f * channels / q))) for f in GRID}))


def _interp(x: float, xs: tuple[int, ...], ys: np.ndarray) -> float:
    if x <= 0:
        return 0.0
    if x < xs[0]:
        return float(ys[0]) * x / xs[0]
    return float(np.interp(x, xs, ys))


@dataclass
class Layer:
    """One convolution weight: its calls at full width, the components of its output and input channels, its
    latency table over ``(ins, outs)`` widths (summed over its calls), and the factors a width off the ``quantum``
    block costs on each side."""

    name: str
    calls: list[ConvCall]
    out_comps: np.ndarray
    in_comps: np.ndarray | None  # None: depthwise (the input is the output's channels)
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    table: np.ndarray
    quantum: int = 1
    off_in: float = 1.0
    off_out: float = 1.0

    @property
    def depthwise(self) -> bool:
        return self.in_comps is None

    def aligned_ms(self, kept_in: float, kept_out: float) -> float:
        """Milliseconds interpolated between the table's widths (all on the block)."""
        if self.depthwise:
            return _interp(kept_out, self.outs, self.table[0])
        rows = np.array([_interp(kept_out, self.outs, row) for row in self.table])
        return _interp(kept_in, self.ins, rows)

    def ms(self, kept_in: float, kept_out: float) -> float:
        """Milliseconds at these kept widths, a width off the block charged its side's factor."""
        ms = self.aligned_ms(kept_in, kept_out)
        if self.off_out != 1.0 and round(kept_out) % self.quantum:
            ms *= self.off_out
        if self.off_in != 1.0 and round(kept_in) % self.quantum:
            ms *= self.off_in
        return ms

    def measure_offsets(self, measure: Measure) -> None:
        """Time each side one half-block off its full width (when the full width is on the block) and keep how much
        slower than the interpolation that is (never less than 1)."""
        first, q, half = self.calls[0], self.quantum, self.quantum // 2
        cin, cout = first.in_channels, first.out_channels

        def factor(at_in: int, at_out: int) -> float:
            timed = sum(measure(_at(c, at_in, at_out, self.depthwise)) for c in self.calls)
            return max(1.0, timed / max(self.aligned_ms(at_in, at_out), 1e-12))

        if q > 1 and cout >= 2 * q and cout % q == 0:
            self.off_out = factor(cin if not self.depthwise else cout - half, cout - half)
        if q > 1 and not self.depthwise and first.groups == 1 and cin >= 2 * q and cin % q == 0:
            self.off_in = factor(cin - half, cout)


def _at(call: ConvCall, cin: int, cout: int, depthwise: bool) -> ConvCall:
    """``call`` with these widths (a grouped convolution keeps its groups; a depthwise one has one per channel)."""
    if depthwise:
        mult = max(call.out_channels // max(call.in_channels, 1), 1)
        return replace(call, in_channels=max(cout // mult, 1), out_channels=cout, groups=max(cout // mult, 1))
    return replace(call, in_channels=cin, out_channels=cout)


def _scaled(call: ConvCall, scale: float) -> ConvCall:
    return replace(call, size=tuple(max(1, round(s * scale)) for s in call.size)) if scale != 1 else call


@dataclass
class LatencyBudget:
    """How a prune meets or ranks by latency: ``model_for`` builds the latency model of each traced graph;
    ``fraction`` is the share of its predicted latency to keep (None: the settings' own goal, ranked by cost)."""

    model_for: Callable[[Graph], LatencyModel]
    fraction: float | None = None


class LatencyModel:
    """Milliseconds a pruned version of ``graph``'s model would take: ``overhead`` plus every convolution's table at
    its kept widths. ``scale`` times the layers at another input size (the latency size over the traced one)."""

    def __init__(
        self, graph: Graph, measure: Measure, *, overhead: float = 0.0, scale: float = 1.0, quantum: int = QUANTUM
    ) -> None:
        self.graph = graph
        self.overhead = overhead
        comps = {(m.name, m.dim): c for m, c in zip(graph.members, graph.member_comps) if not m.is_buffer}
        self.layers: list[Layer] = []
        for name, calls in graph.trace.convs.items():
            calls = [_scaled(c, scale) for c in calls]
            first = calls[0]
            out_comps = comps.get((name, 0), np.zeros(0, dtype=np.int64))
            depthwise = first.groups > 1 and first.groups == first.in_channels
            in_comps = None if depthwise else comps.get((name, 1), np.zeros(0, dtype=np.int64))
            outs = grid_widths(first.out_channels, quantum)
            ins = (first.in_channels,) if depthwise else grid_widths(first.in_channels, quantum)
            if not depthwise and first.groups > 1:  # each group keeps the same input positions: whole groups' worth
                ins = tuple(sorted({max(first.groups, first.groups * round(w / first.groups)) for w in ins}))
            table = np.array(
                [[sum(measure(_at(c, cin, cout, depthwise)) for c in calls) for cout in outs] for cin in ins]
            )
            layer = Layer(name, calls, out_comps, in_comps, ins, outs, table, quantum)
            layer.measure_offsets(measure)
            self.layers.append(layer)
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
        return self.overhead + sum(self.layer_ms(i, removed) for i in range(len(self.layers)))

    def layers_touching(self, comps: np.ndarray) -> list[int]:
        """Indices of the layers whose input or output holds any of ``comps``."""
        return sorted({i for c in np.unique(comps) for i in self._by_comp.get(int(c), ())})


def next_fraction(timed: list[tuple[float, float]], target: float, aim: float = 0.985) -> float:
    """The next share of the predicted latency to try, from ``(share, measured ms)`` pairs timed so far: aimed at
    ``aim`` x ``target`` by interpolating between the nearest timed shares on either side of it, or through the two
    nearest when all lie on one side, or in proportion from a single one."""
    goal = aim * target
    ordered = sorted(timed, key=lambda t: abs(t[1] - goal))
    under = [t for t in ordered if t[1] <= goal]
    over = [t for t in ordered if t[1] > goal]
    pair = (under[0], over[0]) if under and over else tuple(ordered[:2])
    if len(pair) == 2 and abs(pair[0][1] - pair[1][1]) > 1e-9:
        (f0, m0), (f1, m1) = pair
        fraction = f0 + (goal - m0) * (f1 - f0) / (m1 - m0)
    else:
        fraction = ordered[0][0] * goal / ordered[0][1]
    lowest = min(f for f, _ in timed)  # never more than halve the deepest cut tried: extrapolation is a guess
    return float(min(max(fraction, 0.5 * lowest, 0.01), 1.0))


__all__ = ["GRID", "QUANTUM", "LatencyBudget", "LatencyModel", "Layer", "Measure", "grid_widths", "next_fraction"]
