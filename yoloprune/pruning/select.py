"""Which channels to remove: per-group counts (uniform or global ranking), rounding, and searches for a target.

Every candidate is costed with ``Graph.estimate`` (exact MACs/params from the trace, no removal), so a search over
ratios or thresholds takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yoloprune.graph import Graph
from yoloprune.graph.surgery import PruneError
from yoloprune.pruning.knapsack import conv_macs, greedy
from yoloprune.pruning.latency import LatencyModel


@dataclass
class Selection:
    """Channels flagged for removal, the count per group, and what rounding changed."""

    removed: np.ndarray
    counts: dict[int, int]
    rounded: int = 0
    too_small: list[int] = field(default_factory=list)
    macs: int = 0
    params: int = 0


def _round(n: int, k: int, round_to: int) -> int:
    """Channels to remove from a group of ``n`` so that the kept count is a multiple of ``round_to``."""
    if k <= 0 or round_to <= 1:
        return max(k, 0)
    top = (n // round_to) * round_to
    kept = min(max(round_to * round((n - k) / round_to), round_to), top)
    return n - kept


def uniform_counts(graph: Graph, ratio: float, max_ratio: float = 1.0) -> dict[int, int]:
    """``floor(ratio * n)`` channels of every prunable group (capped by ``max_ratio``; one is always kept)."""
    cap = min(ratio, max_ratio)
    return {g.id: min(int(cap * g.channels), g.channels - 1) for g in graph.prunable_groups}


def unit_of(group: Any, by: str = "stage") -> str:
    """The unit a group belongs to: ``group<N>``, or its producing layer's stage (``model.4`` for ultralytics-style
    names, else the first name component)."""
    if by == "group":
        return f"group{group.id}"
    if by != "stage":
        raise ValueError(f"units are 'stage' or 'group', not {by!r}")
    name = next((m.module for m, _ in group.placements if m.role == "out"), group.modules[0] if group.modules else "")
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "model" and len(parts) > 1 else parts[0]


def units(graph: Graph, by: str = "stage") -> dict[str, list[int]]:
    """Unit name -> ids of its prunable groups."""
    out: dict[str, list[int]] = {}
    for g in graph.prunable_groups:
        out.setdefault(unit_of(g, by), []).append(g.id)
    return out


def unit_counts(graph: Graph, ratios: dict[str, float], by: str = "stage") -> dict[int, int]:
    """Counts that prune each unit's groups at its ratio (units not named are left alone)."""
    return {g.id: min(int(ratios.get(unit_of(g, by), 0.0) * g.channels), g.channels - 1) for g in graph.prunable_groups}


def global_counts(graph: Graph, scores: np.ndarray, threshold: float, max_ratio: float) -> dict[int, int]:
    """In every prunable group, the channels whose group-normalised score is below ``threshold``."""
    counts = {}
    for g in graph.prunable_groups:
        cap = min(int(max_ratio * g.channels), g.channels - 1)
        counts[g.id] = min(int((scores[g.comps] < threshold).sum()), cap)
    return counts


def finish(graph: Graph, scores: np.ndarray, counts: dict[int, int], round_to: int = 1) -> Selection:
    """Round the counts, give tied groups the same count, and flag each group's lowest-scoring channels."""
    final, rounded, too_small = {}, 0, []
    for g in graph.prunable_groups:
        k = counts.get(g.id, 0)
        if k > 0 and round_to > 1 and g.channels < round_to:
            too_small.append(g.id)
            k = 0
        r = _round(g.channels, k, round_to)
        rounded += int(r != k)
        final[g.id] = r
    for tied in graph.tied().values():
        k = min(final.get(g.id, 0) for g in tied)
        for g in tied:
            if g.id in final:
                final[g.id] = k
    removed = np.zeros(graph.num_comps, dtype=bool)
    for g in graph.prunable_groups:
        k = final[g.id]
        if k > 0:
            order = np.argsort(scores[g.comps], kind="stable")
            removed[g.comps[order[:k]]] = True
    macs, params = graph.estimate(removed)
    return Selection(removed, final, rounded, too_small, macs, params)


def normalise(graph: Graph, scores: np.ndarray) -> np.ndarray:
    """Scores divided by their group's mean, so groups of different layers compare in a global ranking."""
    out = scores.astype(float).copy()
    for g in graph.groups:
        mean = float(np.mean(scores[g.comps])) if g.channels else 0.0
        out[g.comps] = scores[g.comps] / mean if mean > 0 else 0.0
    return out


def per_mac(graph: Graph, scores: np.ndarray) -> np.ndarray:
    """Scores divided by the MACs one channel of their group costs: for scores that already compare across layers
    (``recon``: output error left after refitting), a global ranking then removes the least damage per MAC saved,
    so fragile layers lose less and cheap, redundant ones more."""
    out = scores.astype(float).copy()
    base = graph.estimate(np.zeros(graph.num_comps, dtype=bool))[0]
    for g in graph.groups:
        if not g.channels:
            continue
        one = np.zeros(graph.num_comps, dtype=bool)
        one[g.comps[0]] = True
        out[g.comps] = scores[g.comps] / max(base - graph.estimate(one)[0], 1)
    return out


TOLERANCE = 0.02
"""How far above its goal (a fraction of the unpruned model's MACs, params or milliseconds) a selection may land."""


def search(
    graph: Graph,
    scores: np.ndarray,
    *,
    target: float,
    metric: str = "macs",
    global_ranking: bool = False,
    max_ratio: float = 0.8,
    round_to: int = 1,
    iterations: int = 40,
    comparable: bool = False,
    latency: LatencyModel | None = None,
) -> Selection:
    """The selection whose MACs (or params, or ``latency``-predicted milliseconds) come closest to ``target`` x the
    unpruned model's.

    Uniform: bisection on the ratio every group loses. Global: bisection on a threshold of group-normalised scores
    (``normalise``), or of scores per MAC (``per_mac``) when the scores are ``comparable`` across layers.
    """
    measure = _metric(graph, metric, latency)
    goal = target * measure(None)
    ranked = (per_mac if comparable else normalise)(graph, scores) if global_ranking else scores

    def pick(x: float) -> Selection:
        counts = global_counts(graph, ranked, x, max_ratio) if global_ranking else uniform_counts(graph, x, max_ratio)
        return finish(graph, scores, counts, round_to)

    def value(sel: Selection) -> float:
        return sel.macs if metric == "macs" else sel.params if metric == "params" else measure(sel.removed)

    slack = TOLERANCE * measure(None)

    def closeness(sel: Selection) -> tuple[bool, float]:
        """Within the tolerance above the goal first (a step of round_to can jump past the goal: land under it
        rather than refuse), then the nearest."""
        return value(sel) > goal + slack, abs(value(sel) - goal)

    if global_ranking:
        prunable = np.concatenate([g.comps for g in graph.prunable_groups]) if graph.prunable_groups else []
        candidates = np.unique(ranked[prunable]) if len(prunable) else np.zeros(1)
        lo, hi = 0, len(candidates)
        best = pick(-np.inf)
        while lo < hi:  # the smallest threshold whose selection reaches the goal
            mid = (lo + hi) // 2
            sel = pick(float(candidates[mid]) + 1e-12)
            if value(sel) <= goal:
                hi = mid
            else:
                lo = mid + 1
            best = min((best, sel), key=closeness)
        return best
    lo, hi = 0.0, max_ratio
    best = pick(0.0)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        sel = pick(mid)
        if value(sel) <= goal:
            hi = mid
        else:
            lo = mid
        best = min((best, sel), key=closeness)
    return best


def _check_reached(
    graph: Graph,
    goal: Goal,
    selection: Selection,
    latency: LatencyModel | None,
    max_ratio: float,
    round_to: int,
    notes: list[str],
) -> None:
    """Refuse a selection more than 2% above its goal; note one that landed more than 2% away."""
    value = _metric(graph, goal.metric, latency)
    got = value(selection.removed) / max(value(None), 1e-12)
    if got > goal.fraction + TOLERANCE:
        raise UnreachableTarget(
            f"cannot reach {goal.metric} {goal.fraction:.3f} of the original: {got:.3f} is the least "
            f"possible with max_ratio {max_ratio} and the frozen layers; raise the target or --max-ratio",
            got,
        )
    if abs(got - goal.fraction) > TOLERANCE:
        notes.append(f"{goal.metric} target {goal.fraction:.3f} of this step landed at {got:.3f} (round_to={round_to})")


class UnreachableTarget(PruneError):
    """A MACs/params/latency target below what the frozen layers and ``max_ratio`` allow; ``reached`` is the least
    possible."""

    def __init__(self, message: str, reached: float):
        super().__init__(message)
        self.reached = reached


@dataclass
class Goal:
    """What one step aims at: a uniform ratio, per-unit ratios, or a MACs/params/latency fraction of the model the
    step starts from."""

    ratio: float | None = None
    metric: str = "macs"
    fraction: float | None = None
    units: dict[str, float] | None = None
    by: str = "stage"


def goal_for_step(
    step: int, steps: int, ratio: float | None, macs: float | None, params: float | None, latency: float | None = None
) -> Goal:
    """Step ``step`` of ``steps``: an equal share of the way, as a fraction of the model the step starts from."""
    if ratio is not None:
        return Goal(ratio=1 - (1 - ratio) ** (1 / steps))
    metric, total = next((m, t) for m, t in (("macs", macs), ("params", params), ("latency", latency)) if t is not None)
    before = 1 - (1 - total) * (step - 1) / steps
    after = 1 - (1 - total) * step / steps
    return Goal(metric=metric, fraction=after / before)


def _metric(graph: Graph, metric: str, latency: LatencyModel | None) -> Callable[[np.ndarray | None], float]:
    """The value a goal is measured in, for a selection (None: nothing removed)."""
    nothing = np.zeros(graph.num_comps, dtype=bool)
    if metric == "latency":
        if latency is None:
            raise ValueError("a latency goal needs a latency model")
        return lambda removed: latency.predict(nothing if removed is None else removed)
    index = 0 if metric == "macs" else 1
    return lambda removed: graph.estimate(nothing if removed is None else removed)[index]


def by_cost(
    graph: Graph,
    scores: np.ndarray,
    goal: Goal,
    cost: LatencyModel,
    latency: LatencyModel | None,
    max_ratio: float,
    round_to: int,
    comparable: bool,
) -> Selection:
    """Global ranking by importance lost per unit of ``cost`` saved (``knapsack.greedy``) up to ``goal``: a MACs,
    params or ``latency``-predicted fraction, or the MACs a uniform ``ratio`` would leave."""
    if goal.ratio is not None:
        uniform = finish(graph, scores, uniform_counts(graph, goal.ratio, max_ratio), round_to)
        goal = Goal(metric="macs", fraction=uniform.macs / max(graph.trace.macs, 1))
    value = _metric(graph, goal.metric, latency)
    limit = goal.fraction * value(None)
    ranked = scores.astype(float) if comparable else normalise(graph, scores)

    def reached(removed: np.ndarray) -> bool:
        return value(removed) <= limit

    counts = greedy(graph, scores, ranked, cost, reached, max_ratio=max_ratio, round_to=round_to)
    return finish(graph, scores, counts, round_to)


def choose(
    graph: Graph,
    scores: np.ndarray,
    goal: Goal,
    global_ranking: bool,
    max_ratio: float,
    round_to: int,
    comparable: bool = False,
    latency: LatencyModel | None = None,
    cost: str = "macs",
) -> tuple[Selection, list[str]]:
    """The channels to remove for ``goal`` (and notes on where a target landed); refuses an unreachable target.
    ``comparable`` scores (``recon``) are ranked globally per MAC rather than per group. With a ``latency`` model,
    latency goals are predicted by it; ``cost="latency"``, or ``comparable`` scores ranked globally, meet every goal
    but per-unit ratios by ranking channels globally per unit of ``cost`` saved ("latency": the model's
    milliseconds, or "macs"); other scores meet a latency goal as they meet a MACs goal (uniform, or globally
    against their group's mean)."""
    notes: list[str] = []
    if goal.units is not None:
        selection = finish(graph, scores, unit_counts(graph, goal.units, goal.by), round_to)
    elif latency is not None and (cost == "latency" or (comparable and global_ranking)):
        ranking = latency if cost == "latency" else LatencyModel(graph, conv_macs, quantum=1)  # MACs: exact, unblocked
        selection = by_cost(graph, scores, goal, ranking, latency, max_ratio, round_to, comparable)
        if goal.fraction is not None:
            _check_reached(graph, goal, selection, latency, max_ratio, round_to, notes)
        if cost == "latency" and not comparable:
            notes.append(
                "cost=latency with scores that do not compare across layers ranks layers by their milliseconds "
                "alone and can empty the costliest ones: recon scores (--calib) rank by the damage each removal does"
            )
    elif goal.ratio is not None:
        selection = finish(graph, scores, uniform_counts(graph, goal.ratio, max_ratio), round_to)
        if global_ranking:
            macs_goal = selection.macs / max(graph.trace.macs, 1)
            selection = search(
                graph,
                scores,
                target=macs_goal,
                global_ranking=True,
                max_ratio=max_ratio,
                round_to=round_to,
                comparable=comparable,
            )
    else:
        selection = search(
            graph,
            scores,
            target=goal.fraction,
            metric=goal.metric,
            global_ranking=global_ranking,
            max_ratio=max_ratio,
            round_to=round_to,
            comparable=comparable,
            latency=latency,
        )
        _check_reached(graph, goal, selection, latency, max_ratio, round_to, notes)
    if selection.rounded or selection.too_small:
        notes.append(
            f"round_to={round_to}: rounded {selection.rounded} group counts; "
            f"{len(selection.too_small)} groups smaller than {round_to} kept whole"
        )
    if not selection.removed.any():
        raise PruneError(
            f"nothing to prune: the settings remove no channel from the {len(graph.prunable_groups)} prunable "
            f"groups (of {len(graph.groups)}); raise the ratio or loosen ignore"
        )
    return selection, notes
