"""Search the MACs fraction whose pruned model runs under a latency budget (onnxruntime CPU, this machine)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from yoloprune.graph.surgery import PruneError


def measure(model: nn.Module, imgsz: int, threads: int, runs: int = 20) -> float:
    """p50 milliseconds of ``model`` exported to ONNX (verified) and run by onnxruntime."""
    from yoloprune.export.bench import onnx_latency
    from yoloprune.export.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        export_onnx(model, path, imgsz=imgsz)
        return onnx_latency(path, imgsz, threads, runs=runs, warmup=5).p50


def fraction_for_latency(
    model: nn.Module,
    example_inputs: Any,
    target_ms: float,
    imgsz: int | None,
    threads: int,
    prune_to: Callable[[nn.Module, float], Any],
    iterations: int = 6,
) -> tuple[float, float]:
    """The largest MACs fraction (least pruning) whose pruned copy measures at most ``target_ms``; returns the
    fraction and its measured latency. ``prune_to(copy, fraction)`` prunes a copy to a MACs fraction."""
    from yoloprune.adapters import resolve
    from yoloprune.pruning.run import UnreachableTarget

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
