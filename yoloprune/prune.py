"""``yoloprune.prune``: rank channels, remove them physically, check the result, report what changed."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from .adapters import resolve
from .counting import count_params
from .graph import Graph, build
from .graph.check import max_relative_difference, zero_producers
from .graph.registry import Policy
from .graph.smoke import smoke_test
from .graph.surgery import PruneError, Removal, Snapshot, remove_channels
from .importance import CRITERIA, channel_scores
from .plan import compose

MAX_ATTEMPTS = 10


@dataclass
class PruneReport:
    """What one prune did. ``removed`` maps module names to removed output-channel indices (numbered as before)."""

    removed: dict[str, list[int]]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups_pruned: int
    channels_removed: int
    seconds: float
    family: str
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    max_difference: float | None = None
    plan: dict[str, Any] = field(default_factory=dict, repr=False)
    removal: Removal = field(default_factory=Removal, repr=False)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("removal")
        out.pop("plan")
        return out

    def __str__(self) -> str:
        return (
            f"{self.family}: removed {self.channels_removed} channels in {self.groups_pruned} groups; "
            f"MACs {self.macs_before / 1e6:.1f}M -> {self.macs_after / 1e6:.1f}M ({self.macs_ratio:.1%}), "
            f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M ({self.params_ratio:.1%}) "
            f"in {self.seconds:.2f} s"
        )


def select(graph: Graph, scores: np.ndarray, ratio: float) -> np.ndarray:
    """Flag the lowest-scoring ``floor(ratio * n)`` channels of every prunable group (tied groups lose the same
    number; every group keeps at least one channel)."""
    counts = {g.id: min(int(ratio * g.channels), g.channels - 1) for g in graph.prunable_groups}
    for tied in graph.tied().values():
        k = min(counts.get(g.id, 0) for g in tied)
        for g in tied:
            if g.id in counts:
                counts[g.id] = k
    removed = np.zeros(graph.num_comps, dtype=bool)
    for g in graph.prunable_groups:
        k = counts[g.id]
        if k > 0:
            order = np.argsort(scores[g.comps], kind="stable")
            removed[g.comps[order[:k]]] = True
    return removed


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float = 0.3,
    importance: str = "l2",
    seed: int = 0,
    ignore: Sequence[str] = (),
    *,
    prune_head: bool = False,
    family: str | None = None,
    policies: Mapping[Any, Policy] | None = None,
    verify: bool = False,
    tolerance: float = 1e-4,
) -> PruneReport:
    """Remove ``ratio`` of the channels of every prunable group of ``model``, in place.

    The model's family (ultralytics, YOLOv5, YOLOv7, YOLOX, or any other ``nn.Module``) is recognised from its
    classes; its detection outputs, and the head unless ``prune_head``, keep their channels. ``ignore`` holds
    module-name globs whose channels are kept. ``policies`` adds ``Policy`` entries (class or class name -> policy)
    for custom blocks whose forward splits channels with stored sizes. The pruned model's forward is checked before
    returning; with ``verify`` the exactness property is checked on ``example_inputs`` too (outputs equal to the
    unpruned model's with the removed channels' producers zeroed, within ``tolerance``).
    """
    start = time.perf_counter()
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if importance not in CRITERIA:
        raise ValueError(f"unknown importance {importance!r}; choose one of {', '.join(CRITERIA)}")
    target = resolve(model, family=family, prune_head=prune_head)
    net = target.module
    ignore = tuple(target.ignore) + tuple(ignore)
    policies = {**target.policies, **(policies or {})}
    params_before = count_params(net)
    reference = copy.deepcopy(net) if verify else None
    notes: list[str] = []
    frozen_io: set[str] = set()
    for _ in range(MAX_ATTEMPTS):
        graph = build(
            net, example_inputs, outputs=target.outputs, ignore=ignore, policies=policies, frozen_io=frozen_io
        )
        removed = select(graph, channel_scores(net, graph, importance, seed), ratio)
        if not removed.any():
            raise PruneError(
                f"nothing to prune: ratio {ratio} removes no channel from the {len(graph.prunable_groups)} "
                f"prunable groups (of {len(graph.groups)}); raise the ratio or loosen ignore"
            )
        snapshot = Snapshot(net)
        removal = remove_channels(net, graph, removed, policies)
        smoke = smoke_test(net, example_inputs, meta=graph.trace.device == "meta")
        if not smoke.failed:
            break
        snapshot.restore()
        if smoke.module in frozen_io or not smoke.module:
            raise PruneError(f"the pruned model fails in {smoke.module or '<root>'}: {smoke.error}")
        frozen_io.add(smoke.module)
        notes.append(f"kept the channels around {smoke.module}: its forward failed after pruning ({smoke.error})")
    else:
        raise PruneError(f"the pruned model still fails after freezing {sorted(frozen_io)}")
    report = PruneReport(
        removed=removal.modules,
        macs_before=graph.trace.macs,
        macs_after=smoke.macs,
        params_before=params_before,
        params_after=count_params(net),
        groups_pruned=len({int(graph.comp_group[c]) for c in np.flatnonzero(removed)}),
        channels_removed=int(removed.sum()),
        seconds=0.0,
        family=target.family,
        settings={
            "ratio": ratio,
            "importance": importance,
            "seed": seed,
            "ignore": list(ignore),
            "prune_head": prune_head,
        },
        notes=notes,
        removal=removal,
    )
    if target.history:
        removed = compose(target.history["removed"], target.history["sizes"], removal.modules)
        report.plan = {"removed": removed, "sizes": {**removal.sizes, **target.history["sizes"]}}
    else:
        report.plan = {"removed": dict(removal.modules), "sizes": dict(removal.sizes)}
    if target.record is not None:
        target.record(report.plan)
    if reference is not None:
        zero_producers(reference, removal)
        report.max_difference = max_relative_difference(reference, net, example_inputs, target.outputs)
        if report.max_difference > tolerance:
            raise PruneError(f"exactness check failed: outputs differ by {report.max_difference:.3g} (relative)")
    report.seconds = time.perf_counter() - start
    return report
