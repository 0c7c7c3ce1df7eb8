"""Search the MACs fraction whose pruned model runs under a latency budget. The search wraps pruning and timing: it
is handed a function that prunes a copy to a MACs fraction and one that times a model (``yoloprune.prune`` gives it
onnxruntime on this machine), and calls neither by name."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from yoloprune.graph.surgery import PruneError
from yoloprune.pruning.select import UnreachableTarget


def fraction_for_latency(
    model: nn.Module,
    example_inputs: Any,
    target_ms: float,
    imgsz: int | None,
    threads: int,
    prune_to: Callable[[nn.Module, float], Any],
    measure: Callable[[nn.Module, int, int], float],
    iterations: int = 6,
) -> tuple[float, float]:
    """The largest MACs fraction (least pruning) whose pruned copy measures at most ``target_ms``; returns the
    fraction and its measured latency. ``prune_to(copy, fraction)`` prunes a copy to a MACs fraction;
    ``measure(model, imgsz, threads)`` times one in milliseconds."""
    from yoloprune.adapters import resolve

    imgsz = imgsz or int(example_inputs.shape[-1])
    base = resolve(model).module
    unpruned = measure(base, imgsz, threads)
    if unpruned <= target_ms:
        raise PruneError(f"the model already runs in {unpruned:.1f} ms <= {target_ms} ms; nothing to prune")

    def probe_at(fraction: float) -> float:
        probe = copy.deepcopy(base)
        prune_to(probe, fraction)
        return measure(probe, imgsz, threads)

    lo, hi = 0.05, 1.0
    try:
        fastest = probe_at(lo)
    except UnreachableTarget as exc:
        lo = exc.reached + 0.005
        fastest = probe_at(lo)
    if fastest > target_ms:
        raise PruneError(
            f"even at {lo:.0%} of the MACs (the most it can be pruned) the model runs in {fastest:.1f} ms "
            f"> {target_ms} ms"
        )
    best = (lo, fastest)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ms = probe_at(mid)
        if ms <= target_ms:
            best = (mid, ms)
            lo = mid
        else:
            hi = mid
    return best
