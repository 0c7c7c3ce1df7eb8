"""``yoloprune.pruning.run``: rank channels, remove them physically, check the result, report what changed."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from yoloprune.adapters import Target, resolve
from yoloprune.graph import build
from yoloprune.graph.check import max_relative_difference, zero_producers
from yoloprune.graph.plan import compose
from yoloprune.graph.registry import Policy
from yoloprune.graph.smoke import smoke_test
from yoloprune.graph.surgery import PruneError, Removal, Snapshot, remove_channels
from yoloprune.options import check_numbers
from yoloprune.pruning.importance import CRITERIA, channel_scores, check_scores
from yoloprune.pruning.select import Selection, finish, search, uniform_counts, unit_counts


class UnreachableTarget(PruneError):
    """A MACs/params target below what the frozen layers and ``max_ratio`` allow; ``reached`` is the least possible."""

    def __init__(self, message: str, reached: float):
        super().__init__(message)
        self.reached = reached


MAX_ATTEMPTS = 10
Scorer = Callable[[nn.Module, Any], np.ndarray]


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


@dataclass
class Goal:
    """What one step aims at: a uniform ratio, or a MACs/params fraction of the model the step starts from."""

    ratio: float | None = None
    metric: str = "macs"
    fraction: float | None = None
    units: dict[str, float] | None = None
    by: str = "stage"


def _check(ratio, target_macs, target_params, target_latency_ms, round_to, steps, max_ratio, importance) -> None:
    given = [
        n
        for n, v in (
            ("ratio", ratio),
            ("target_macs", target_macs),
            ("target_params", target_params),
            ("target_latency_ms", target_latency_ms),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give one of ratio, target_macs, target_params, target_latency_ms (got {', '.join(given)})")
    check_numbers(
        ratio=ratio,
        target_macs=target_macs,
        target_params=target_params,
        target_latency_ms=target_latency_ms,
        max_ratio=max_ratio,
    )
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not callable(importance) and importance not in CRITERIA:  # aggregate is checked by channel_scores
        raise ValueError(f"unknown importance {importance!r}; choose one of {', '.join(CRITERIA)}")


def first_layer(net: nn.Module) -> str | None:
    """The first convolution or linear layer in registration order (protected by default)."""
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return name
    return None


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | None = None,
    importance: str | Scorer = "l2",
    seed: int = 0,
    ignore: Sequence[str] = (),
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    target_latency_ms: float | None = None,
    latency_imgsz: int | None = None,
    latency_threads: int = 1,
    unit_ratios: dict[str, float] | None = None,
    units_by: str = "stage",
    global_ranking: bool = False,
    max_ratio: float = 0.8,
    round_to: int = 1,
    aggregate: str = "mean",
    normalize_layers: bool = False,
    taylor_loss: Callable[[nn.Module], Any] | None = None,
    data: str | None = None,
    steps: int = 1,
    between_steps: Callable[[int, nn.Module], bool | None] | None = None,
    protect_first: bool = True,
    prune_head: bool = False,
    family: str | None = None,
    policies: Mapping[Any, Policy] | None = None,
    verify: bool = False,
    tolerance: float = 1e-4,
) -> PruneReport:
    """Remove channels from ``model`` in place and return what changed.

    How much: ``ratio`` (each prunable group loses that fraction; default 0.3 when no target is given), or
    ``target_macs`` / ``target_params`` (a fraction of the original, reached within about 2%), or
    ``target_latency_ms`` (onnxruntime CPU latency on this machine at ``latency_imgsz`` with ``latency_threads``),
    or ``unit_ratios`` (a ratio per stage or group, e.g. from ``yoloprune sensitivity``; ``units_by``).
    Which: ``importance`` ranks channels ("l2", "l1", "bn", "taylor" with ``taylor_loss`` or a labelled ultralytics
    ``data`` yaml, "random", or a callable
    ``(model, graph) -> scores``), combining a group's members with ``aggregate`` (``normalize_layers`` first
    divides each member by its mean);
    ``global_ranking`` compares group-normalised scores across groups, each group losing at most ``max_ratio``.
    ``round_to`` keeps every pruned group's channel count a multiple of N. ``steps`` > 1 prunes toward the target in
    that many steps, calling ``between_steps(step, model)`` after each but the last (a short fine-tune); it may
    return False to stop early.

    What is kept: the family's outputs (recognised from its classes: ultralytics, YOLOv5, YOLOv7, YOLOX, or any
    ``nn.Module``), the detection head unless ``prune_head``, the first layer unless ``protect_first`` is False,
    and modules matching the ``ignore`` globs. ``policies`` adds ``Policy`` entries for custom blocks. The pruned
    forward is checked after every step; ``verify`` also checks the exactness property on ``example_inputs``.
    """
    start = time.perf_counter()
    if (
        ratio is None
        and target_macs is None
        and target_params is None
        and target_latency_ms is None
        and not unit_ratios
    ):
        ratio = 0.3
    if unit_ratios and (ratio is not None or steps > 1):
        raise ValueError("unit_ratios replaces ratio and targets, in one step")
    _check(ratio, target_macs, target_params, target_latency_ms, round_to, steps, max_ratio, importance)
    if importance == "taylor" and taylor_loss is None and data is not None:
        from yoloprune.train.batches import detection_loss, labelled_batches

        taylor_loss = detection_loss(labelled_batches(data, int(example_inputs.shape[-1])))
    settings = {
        "ratio": ratio,
        "unit_ratios": unit_ratios,
        "target_macs": target_macs,
        "target_params": target_params,
        "target_latency_ms": target_latency_ms,
        "importance": importance if isinstance(importance, str) else "custom",
        "seed": seed,
        "ignore": list(ignore),
        "global_ranking": global_ranking,
        "max_ratio": max_ratio,
        "round_to": round_to,
        "aggregate": aggregate,
        "normalize_layers": normalize_layers,
        "steps": steps,
        "protect_first": protect_first,
        "prune_head": prune_head,
    }
    if target_latency_ms is not None:
        from yoloprune.pruning.latency import fraction_for_latency

        target_macs, latency = fraction_for_latency(
            model,
            example_inputs,
            target_latency_ms,
            latency_imgsz,
            latency_threads,
            lambda m, t: prune(
                m,
                example_inputs,
                None,
                importance,
                seed,
                ignore,
                target_macs=t,
                global_ranking=global_ranking,
                max_ratio=max_ratio,
                round_to=round_to,
                aggregate=aggregate,
                normalize_layers=normalize_layers,
                taylor_loss=taylor_loss,
                protect_first=protect_first,
                prune_head=prune_head,
                family=family,
                policies=policies,
            ),
        )
        settings["latency_search_macs"] = target_macs
    if verify and steps > 1:
        raise ValueError("verify checks a single-step prune; use steps=1")
    reference = copy.deepcopy(resolve(model, family, prune_head).module) if verify else None
    first_target = resolve(model, family=family, prune_head=prune_head)
    macs_before = params_before = None
    removed_total: dict[str, list[int]] = {}
    sizes_total: dict[str, int] = {}
    notes: list[str] = []
    steps_done = channels_removed = groups_pruned = 0
    for step in range(1, steps + 1):
        target = resolve(model, family=family, prune_head=prune_head)
        goal = (
            Goal(units=unit_ratios, by=units_by)
            if unit_ratios
            else _goal(step, steps, ratio, target_macs, target_params)
        )
        extra = [n for n in (first_layer(target.module),) if protect_first and n]

        def scorer(net: nn.Module, graph: Any) -> np.ndarray:
            if callable(importance):
                return check_scores(importance(net, graph), graph, importance)
            return channel_scores(
                net,
                graph,
                importance,
                seed,
                aggregate=aggregate,
                normalize_layers=normalize_layers,
                taylor_loss=taylor_loss,
            )

        outcome = _step(
            target,
            example_inputs,
            goal,
            scorer,
            tuple(ignore) + tuple(extra),
            policies,
            global_ranking,
            max_ratio,
            round_to,
        )
        removal, graph, selection, smoke_macs, step_notes = outcome
        notes.extend(step_notes)
        channels_removed += int(selection.removed.sum())
        groups_pruned = max(groups_pruned, sum(1 for k in selection.counts.values() if k > 0))
        if macs_before is None:
            macs_before, params_before = graph.trace.macs, int(sum(graph.trace.numels.values()))
        removed_total = compose(removed_total, sizes_total, removal.modules) if removed_total else removal.modules
        sizes_total = {**removal.sizes, **sizes_total}
        _record(target, removal)
        steps_done = step
        if step < steps and between_steps is not None and between_steps(step, model) is False:
            notes.append(f"stopped after step {step} of {steps}: between_steps asked to stop")
            break
    final = resolve(model, family=family, prune_head=prune_head)
    report = PruneReport(
        removed=removed_total,
        macs_before=macs_before,
        macs_after=smoke_macs,
        params_before=params_before,
        params_after=int(sum(p.numel() for p in final.module.parameters())),
        groups_pruned=groups_pruned,
        channels_removed=channels_removed,
        seconds=0.0,
        family=first_target.family,
        settings=settings,
        notes=notes,
        steps_done=steps_done,
        plan=dict(final.history) if final.history else {"removed": removed_total, "sizes": sizes_total},
        removal=removal,
    )
    if target_latency_ms is not None:
        report.latency_ms = latency
    if reference is not None:
        zero_producers(reference, removal)
        report.max_difference = max_relative_difference(reference, final.module, example_inputs, final.outputs)
        if report.max_difference > tolerance:
            raise PruneError(f"exactness check failed: outputs differ by {report.max_difference:.3g} (relative)")
    report.seconds = time.perf_counter() - start
    return report


def _goal(step: int, steps: int, ratio: float | None, macs: float | None, params: float | None) -> Goal:
    """Step ``step`` of ``steps``: an equal share of the way, as a fraction of the model the step starts from."""
    if ratio is not None:
        return Goal(ratio=1 - (1 - ratio) ** (1 / steps))
    metric, total = ("macs", macs) if macs is not None else ("params", params)
    before = 1 - (1 - total) * (step - 1) / steps
    after = 1 - (1 - total) * step / steps
    return Goal(metric=metric, fraction=after / before)


def _step(
    target: Target,
    example_inputs: Any,
    goal: Goal,
    scorer: Scorer,
    ignore: tuple[str, ...],
    policies: Mapping[Any, Policy] | None,
    global_ranking: bool,
    max_ratio: float,
    round_to: int,
) -> tuple[Removal, Any, Selection, int, list[str]]:
    """One prune of the current model, retried with a module's inputs and outputs frozen if forward breaks."""
    net = target.module
    ignore = tuple(target.ignore) + ignore
    policies = {**target.policies, **(policies or {})}
    frozen_io: set[str] = set()
    notes: list[str] = []
    for _ in range(MAX_ATTEMPTS):
        graph = build(
            net, example_inputs, outputs=target.outputs, ignore=ignore, policies=policies, frozen_io=frozen_io
        )
        scores = scorer(net, graph)
        if goal.units is not None:
            selection = finish(graph, scores, unit_counts(graph, goal.units, goal.by), round_to)
        elif goal.ratio is not None:
            selection = finish(graph, scores, uniform_counts(graph, goal.ratio, max_ratio), round_to)
            if global_ranking:
                macs_goal = selection.macs / max(graph.trace.macs, 1)
                selection = search(
                    graph, scores, target=macs_goal, global_ranking=True, max_ratio=max_ratio, round_to=round_to
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
            )
            base = graph.trace.macs if goal.metric == "macs" else sum(graph.trace.numels.values())
            got = (selection.macs if goal.metric == "macs" else selection.params) / max(base, 1)
            if got > goal.fraction + 0.02:
                raise UnreachableTarget(
                    f"cannot reach {goal.metric} {goal.fraction:.3f} of the original: {got:.3f} is the least "
                    f"possible with max_ratio {max_ratio} and the frozen layers; raise the target or --max-ratio",
                    got,
                )
            if abs(got - goal.fraction) > 0.02:
                notes.append(
                    f"{goal.metric} target {goal.fraction:.3f} of this step landed at {got:.3f} (round_to={round_to})"
                )
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


def _record(target: Target, removal: Removal) -> None:
    """Compose this removal into the plan the model carries (numbered as in the original model)."""
    if target.record is None:
        return
    if target.history:
        removed = compose(target.history["removed"], target.history["sizes"], removal.modules)
        plan = {"removed": removed, "sizes": {**removal.sizes, **target.history["sizes"]}}
    else:
        plan = {"removed": dict(removal.modules), "sizes": dict(removal.sizes)}
    target.record(plan)
