"""Pruning a model by ratio or MACs/params target: score channels, choose them (``select``), remove them physically
and check the forward (``_apply``), and report what changed (``_report``). ``yoloprune.prune`` (in
``workflows.pipeline``) adds latency targets on top, timing candidates with onnxruntime."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from yoloprune.adapters import Target, resolve
from yoloprune.graph import build
from yoloprune.graph.check import max_relative_difference, zero_producers
from yoloprune.graph.plan import compose
from yoloprune.graph.registry import Policy
from yoloprune.graph.smoke import smoke_test
from yoloprune.graph.surgery import PruneError, Removal, Snapshot, remove_channels
from yoloprune.options import COMPARABLE, default_cost, resolve_importance
from yoloprune.pruning.importance import channel_scores, check_scores
from yoloprune.pruning.latency import LatencyBudget
from yoloprune.pruning.select import Goal, Selection, choose, goal_for_step
from yoloprune.pruning.settings import PruneSettings

MAX_ATTEMPTS = 10
Scorer = Callable[[nn.Module, Any], np.ndarray]
TaylorLoss = Callable[[nn.Module], Any]
AfterStep = Callable[[nn.Module, nn.Module, Removal], None]  # (pruned network, the same before the step, the step)


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
    latency_ms: float | None = None
    steps_done: int = 1
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


def first_layer(net: nn.Module) -> str | None:
    """The first convolution or linear layer in registration order (protected by default)."""
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return name
    return None


def prune(
    model: nn.Module,
    example_inputs: Any,
    settings: PruneSettings,
    *,
    taylor_loss: TaylorLoss | None = None,
    between_steps: Callable[[int, nn.Module], bool | None] | None = None,
    policies: Mapping[Any, Policy] | None = None,
    calib_batches: Sequence[Any] | None = None,
    after_step: AfterStep | None = None,
    latency: LatencyBudget | None = None,
    score_cache: dict[Any, np.ndarray] | None = None,
) -> PruneReport:
    """Remove channels from ``model`` in place by ratio or MACs/params target and return what changed.
    ``calib_batches`` (image tensors) feed the ``recon`` importance. ``after_step(pruned, before, removal)`` runs
    after every step with the network as it was before that step (calibration refits against it), before
    ``between_steps``. ``latency`` ranks channels per predicted millisecond (``settings.cost``) or, with its
    ``fraction``, prunes to that share of the predicted latency. ``score_cache`` keeps channel scores across calls
    by the network's structure and weights (candidates of one search score alike). ``yoloprune.prune`` is the public
    entry: it builds
    ``settings`` from keywords and turns a latency target in milliseconds into a measured ``latency``."""
    if settings.target_latency_ms is not None and (latency is None or latency.fraction is None):
        raise ValueError("a latency target is met by yoloprune.prune, which times candidates with onnxruntime")
    if settings.cost == "latency" and latency is None:
        raise ValueError("cost='latency' ranks by a latency table; yoloprune.prune measures one with onnxruntime")
    return _prune(
        model,
        example_inputs,
        settings,
        taylor_loss,
        between_steps,
        policies,
        calib_batches,
        after_step,
        latency,
        score_cache,
    )


def _prune(
    model: nn.Module,
    example_inputs: Any,
    s: PruneSettings,
    taylor_loss: TaylorLoss | None,
    between_steps: Callable[[int, nn.Module], bool | None] | None,
    policies: Mapping[Any, Policy] | None,
    calib_batches: Sequence[Any] | None = None,
    after_step: AfterStep | None = None,
    latency: LatencyBudget | None = None,
    score_cache: dict[Any, np.ndarray] | None = None,
) -> PruneReport:
    """Prune in ``s.steps`` steps: each scores, chooses and applies (the exactness check right after, when asked),
    then ``after_step``; then the report."""
    start = time.perf_counter()
    if s.importance == "auto":  # recorded as what it meant
        s = replace(s, importance=resolve_importance(s.importance, bool(calib_batches)))
    if s.cost is None:  # recorded as what it meant
        s = replace(s, cost=default_cost(s.importance, s.target_latency_ms is not None, s.global_ranking))
    if s.global_ranking is None:  # scores that compare across layers rank globally, per MAC
        s = replace(s, global_ranking=s.importance in COMPARABLE or s.cost == "latency")
    reference = copy.deepcopy(resolve(model, s.family, s.prune_head).module) if s.verify else None
    family = resolve(model, family=s.family, prune_head=s.prune_head).family
    totals: dict[str, Any] = {"removed": {}, "sizes": {}, "channels": 0, "groups": 0, "notes": [], "steps": 0}
    before: tuple[int, int] | None = None
    for step in range(1, s.steps + 1):
        target = resolve(model, family=s.family, prune_head=s.prune_head)
        if s.unit_ratios:
            goal = Goal(units=s.unit_ratios, by=s.units_by)
        elif latency is not None and latency.fraction is not None:
            goal = goal_for_step(step, s.steps, None, None, None, latency.fraction)
        else:
            goal = goal_for_step(step, s.steps, s.ratio, s.target_macs, s.target_params)
        protected = tuple(n for n in (first_layer(target.module),) if s.protect_first and n)
        unpruned = copy.deepcopy(target.module) if after_step is not None else None
        removal, graph, selection, macs_after, notes = _apply(
            target,
            example_inputs,
            goal,
            _scorer(s, taylor_loss, calib_batches, score_cache),
            (*s.ignore, *protected),
            policies,
            s,
            latency,
        )
        before = before or (graph.trace.macs, int(sum(graph.trace.numels.values())))
        _accumulate(totals, removal, selection, notes)
        _record(target, removal)
        totals["steps"] = step
        if reference is not None:  # verify: a single step, checked before anything refits the weights
            zero_producers(reference, removal)
            totals["difference"] = max_relative_difference(reference, target.module, example_inputs, target.outputs)
            if not math.isfinite(totals["difference"]):
                raise PruneError("exactness check failed: the outputs hold NaN or inf (check the example inputs)")
            if totals["difference"] > s.tolerance:
                raise PruneError(f"exactness check failed: outputs differ by {totals['difference']:.3g} (relative)")
        if after_step is not None:
            after_step(target.module, unpruned, removal)
        if step < s.steps and between_steps is not None and between_steps(step, model) is False:
            totals["notes"].append(f"stopped after step {step} of {s.steps}: between_steps asked to stop")
            break
    report = _report(model, s, family, before, macs_after, totals, removal)
    if "difference" in totals:
        report.max_difference = totals["difference"]
    report.seconds = time.perf_counter() - start
    return report


def _scorer(
    s: PruneSettings,
    taylor_loss: TaylorLoss | None,
    calib_batches: Sequence[Any] | None,
    cache: dict[Any, np.ndarray] | None = None,
) -> Scorer:
    """Channel scores for a graph: the settings' criterion, or the caller's function (its scores checked); with a
    ``cache``, scores already computed for the same structure and weights are reused."""
    importance = s.importance

    def scorer(net: nn.Module, graph: Any) -> np.ndarray:
        if callable(importance):
            return check_scores(importance(net, graph), graph, importance)
        key = _content_key(net, graph) if cache is not None else None
        if key is not None and key in cache:
            return cache[key]
        scores = channel_scores(
            net,
            graph,
            importance,
            s.seed,
            aggregate=s.aggregate,
            normalize_layers=s.normalize_layers,
            taylor_loss=taylor_loss,
            calib_batches=calib_batches,
        )
        if key is not None:
            cache[key] = scores
        return scores

    return scorer


def _content_key(net: nn.Module, graph: Any) -> tuple[int, int, str]:
    """What channel scores depend on besides the settings: the graph's structure and every tensor's values."""
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return graph.num_comps, graph.trace.macs, digest.hexdigest()


def _apply(
    target: Target,
    example_inputs: Any,
    goal: Goal,
    scorer: Scorer,
    ignore: tuple[str, ...],
    policies: Mapping[Any, Policy] | None,
    s: PruneSettings,
    latency: LatencyBudget | None = None,
) -> tuple[Removal, Any, Selection, int, list[str]]:
    """One step on the current model: trace, score, choose, remove; retried with a module's inputs and outputs
    frozen when the pruned forward breaks there."""
    net = target.module
    ignore = tuple(target.ignore) + ignore
    policies = {**target.policies, **(policies or {})}
    frozen_io: set[str] = set()
    notes: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        graph = build(
            net, example_inputs, outputs=target.outputs, ignore=ignore, policies=policies, frozen_io=frozen_io
        )
        selection, chosen = choose(
            graph,
            scorer(net, graph),
            goal,
            s.global_ranking,
            s.max_ratio,
            s.round_to,
            s.importance in COMPARABLE,
            latency=latency.model_for(graph) if latency is not None else None,
            cost=s.cost,
        )
        notes.extend(chosen)
        snapshot = Snapshot(net)
        removal = remove_channels(net, graph, selection.removed, policies)
        smoke = smoke_test(net, example_inputs, meta=graph.trace.device == "meta")
        if not smoke.failed:
            return removal, graph, selection, smoke.macs, notes
        snapshot.restore()
        if smoke.module in frozen_io or not smoke.module:
            raise PruneError(f"the pruned model fails in {smoke.module or '<root>'}: {smoke.error}")
        frozen_io.add(smoke.module)
        notes.append(f"kept the channels around {smoke.module}: its forward failed after pruning ({smoke.error})")
    raise PruneError(f"the pruned model still fails after freezing {sorted(frozen_io)}")


def _accumulate(totals: dict[str, Any], removal: Removal, selection: Selection, notes: list[str]) -> None:
    """Fold one step into the running totals (the plan composed in the original numbering); a note every step
    repeats is kept once."""
    totals["notes"].extend(n for n in notes if n not in totals["notes"])
    totals["channels"] += int(selection.removed.sum())
    totals["groups"] = max(totals["groups"], sum(1 for k in selection.counts.values() if k > 0))
    if totals["removed"]:
        totals["removed"] = compose(totals["removed"], totals["sizes"], removal.modules)
    else:
        totals["removed"] = removal.modules
    totals["sizes"] = {**removal.sizes, **totals["sizes"]}


def _report(
    model: nn.Module,
    s: PruneSettings,
    family: str,
    before: tuple[int, int] | None,
    macs_after: int,
    totals: dict[str, Any],
    removal: Removal,
) -> PruneReport:
    final = resolve(model, family=s.family, prune_head=s.prune_head)
    macs_before, params_before = before or (0, 0)
    return PruneReport(
        removed=totals["removed"],
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=int(sum(p.numel() for p in final.module.parameters())),
        groups_pruned=totals["groups"],
        channels_removed=totals["channels"],
        seconds=0.0,
        family=family,
        settings=s.record(),
        notes=totals["notes"],
        steps_done=totals["steps"],
        plan=dict(final.history) if final.history else {"removed": totals["removed"], "sizes": totals["sizes"]},
        removal=removal,
    )


def _record(target: Target, removal: Removal) -> None:
    """Compose this removal into the plan the model carries (numbered as in the original model)."""
    if target.record is None:
        return
    if target.history:
        removed = compose(target.history["removed"], target.history["sizes"], removal.modules)
        plan = {**target.history, "removed": removed, "sizes": {**removal.sizes, **target.history["sizes"]}}
    else:
        plan = {"removed": dict(removal.modules), "sizes": dict(removal.sizes)}
    target.record(plan)
