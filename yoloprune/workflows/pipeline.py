"""One pipeline for every workflow: prune -> save -> fine-tune -> evaluate -> export -> bench.

The command line, recipes, sweeps and the demo all go through these functions, so a pruned checkpoint's section is
written in one place (``checkpoint_section``), the teacher a fine-tune distils from by default is decided in one
place (``default_teacher``), and a model is measured one way (``measure``).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from yoloprune.adapters import Loaded, resolve
from yoloprune.graph.plan import FORMAT
from yoloprune.graph.registry import Policy
from yoloprune.graph.surgery import PruneError
from yoloprune.pruning.latency import LatencyBudget, LatencyModel, next_fraction, untried
from yoloprune.pruning.run import PruneReport
from yoloprune.pruning.select import UnreachableTarget
from yoloprune.pruning.settings import PruneSettings


def checkpoint_section(report: PruneReport, imgsz: int, **extra: Any) -> dict[str, Any]:
    """yoloprune's section of a pruned checkpoint: format, version, size, settings, the plan and the report's
    summary (plus ``extra``)."""
    from yoloprune import __version__

    return {
        "format": FORMAT,
        "version": __version__,
        "imgsz": imgsz,
        "settings": report.settings,
        "plan": report.plan,
        "report": summary(report),
        **extra,
    }


def summary(report: PruneReport) -> dict[str, Any]:
    """A prune report as plain data, without the per-module channel lists."""
    return {k: v for k, v in report.to_dict().items() if k != "removed"}


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | None = None,
    importance: str | Callable[..., Any] = "auto",
    seed: int = 0,
    ignore: str | Sequence[str] = (),
    *,
    settings: PruneSettings | None = None,
    taylor_loss: Callable[[nn.Module], Any] | None = None,
    data: str | Path | None = None,
    between_steps: Callable[[int, nn.Module], bool | None] | None = None,
    policies: Mapping[Any, Policy] | None = None,
    calib: str | Path | None = None,
    calib_images: int = 64,
    **options: Any,
) -> PruneReport:
    """Remove channels from ``model`` in place and return what changed.

    The options are those of ``PruneSettings`` (pass them as keywords, or one ``settings``):
    How much: ``ratio`` (each prunable group loses that fraction; default 0.3 when no target is given), or
    ``target_macs`` / ``target_params`` (a fraction of the original, reached within about 2%), or
    ``target_latency_ms`` (onnxruntime CPU latency on this machine at ``latency_imgsz`` with ``latency_threads``,
    default every core this process may use: predicted from a latency table of the model's convolutions, then
    checked by timing the pruned model against the unpruned one, whose milliseconds are timed first unless given
    as ``latency_unpruned_ms``, so that runs compared or swept aim from one timing),
    or ``unit_ratios`` (a ratio per stage or group, e.g. from ``yoloprune sensitivity``; ``units_by``).
    Which: ``importance`` ranks channels ("auto": "recon" with ``calib``, else "l2"; "recon", the error a channel's
    removal leaves after calibration; "l2", "l1", "bn", "taylor" with ``taylor_loss`` or a labelled ultralytics
    ``data`` yaml, "random", or a callable ``(model, graph) -> scores``), combining a group's members with
    ``aggregate`` (``normalize_layers`` first divides each member by its mean); ``global_ranking`` compares
    channels across groups, each group losing at most ``max_ratio``: "recon" scores per MAC saved (fragile layers
    lose less), other scores normalised by their group's mean; False prunes every group by the same fraction (the
    default without ``calib``). With ``calib``, "recon" scores and ``global_ranking`` left None, a one-step prune
    without a latency cost is made both ways and the way whose detections on held-out images agree better with the
    unpruned model's is kept (``report.settings["allocation"]``). ``cost="latency"`` ranks globally by importance
    lost per millisecond saved instead, from a latency table of the model's convolutions timed with onnxruntime on this
    machine (cached per machine and thread count; the default for a latency target with ``calib``: without it, a
    latency target is met as a MACs target is, ``options.default_cost``). ``round_to`` keeps every
    pruned group's channel count a multiple of N. ``steps`` > 1 prunes toward the target in that many steps, calling
    ``between_steps(step, model)`` after each but the last (a short fine-tune); it may return False to stop early.

    What is kept: the family's outputs (recognised from its classes: ultralytics, YOLOv5, YOLOv7, YOLOX, or any
    ``nn.Module``), the detection head unless ``prune_head``, the first layer unless ``protect_first`` is False,
    and modules matching the ``ignore`` globs. ``policies`` adds ``Policy`` entries for custom blocks. The pruned
    forward is checked after every step; ``verify`` also checks the exactness property on ``example_inputs``.

    Calibrated: with ``calib`` (a folder of unlabelled images; the first ``calib_images`` are used), every layer whose
    inputs lost channels is refitted by least squares to reproduce the original's outputs, and norm statistics are
    re-estimated when that brings the outputs closer to the original's (``yoloprune.pruning.calibrate``). With
    ``steps``, every step is calibrated against the network as the step found it (after the previous fine-tune).
    """
    start = time.perf_counter()
    if settings is None:
        settings = PruneSettings(ratio=ratio, importance=importance, seed=seed, ignore=ignore, **options)
    elif ratio is not None or options:
        raise ValueError("give either settings or options, not both")
    if settings.importance == "taylor" and taylor_loss is None and data is not None:
        from yoloprune.pruning.taylor import taylor_loss_from

        taylor_loss = taylor_loss_from(data, int(example_inputs.shape[-1]))
    batches, held = _calibration_batches(model, example_inputs, settings, calib, calib_images) if calib else (None, [])
    results: list[Any] = []
    if batches is not None and _chooses_allocation(settings):
        report, results = _prune_best_allocation(model, example_inputs, settings, taylor_loss, policies, batches, held)
    else:
        after_step = _calibrating(batches, results) if batches is not None else None
        report = _prune(model, example_inputs, settings, taylor_loss, between_steps, policies, batches, after_step)
    if results:
        report.notes.extend(str(r) for r in results)
        report.settings["calibration"] = {
            "images": results[-1].images,
            "layers": sum(r.layers for r in results),
            "norms": sum(r.norms for r in results),
            "steps": len(results),
        }
    report.seconds = time.perf_counter() - start  # the whole call: images read, steps, calibration (timed once)
    return report


def _prune(
    model: nn.Module,
    example_inputs: Any,
    settings: PruneSettings,
    taylor_loss: Callable[[nn.Module], Any] | None,
    between_steps: Callable[[int, nn.Module], bool | None] | None,
    policies: Mapping[Any, Policy] | None,
    calib_batches: list[Any] | None = None,
    after_step: Callable[..., None] | None = None,
    score_cache: dict[Any, Any] | None = None,
) -> PruneReport:
    """``pruning.run.prune`` (``score_cache`` shared by calls that score the same network); with a latency cost or
    target, over a latency table of this model's convolutions timed
    with onnxruntime on this machine (cached). A target is predicted, then checked by timing the pruned model whole,
    each candidate (a fresh copy, uncalibrated) aimed by the ones timed before; the one that fits is pruned for real
    with ``after_step``. The candidates and the final prune share their channel scores."""
    from yoloprune.pruning import run

    scores = score_cache  # set for a latency target: its candidates score the same network alike

    def prune(net: nn.Module, latency: LatencyBudget | None, final: bool) -> PruneReport:
        return run.prune(
            net,
            example_inputs,
            settings,
            taylor_loss=taylor_loss,
            between_steps=between_steps if final else None,
            policies=policies,
            calib_batches=calib_batches,
            after_step=after_step if final else None,
            latency=latency,
            score_cache=scores,
        )

    if settings.cost != "latency" and settings.target_latency_ms is None:
        return prune(model, None, True)
    from yoloprune.export.latency_table import ConvTimer
    from yoloprune.options import default_threads

    if settings.latency_threads is None:
        settings = replace(settings, latency_threads=default_threads())
    traced = int(example_inputs.shape[-1])
    imgsz = settings.latency_imgsz or traced
    timer = ConvTimer(settings.latency_threads)

    def model_for(graph: Any) -> LatencyModel:
        return LatencyModel(graph, timer, scale=imgsz / traced)

    target = settings.target_latency_ms
    try:
        if target is None:
            return prune(model, LatencyBudget(model_for), True)
        scores = {}
        fraction, measured, unpruned_ms = _fit_latency(
            model,
            target,
            settings.latency_unpruned_ms,
            imgsz,
            settings,
            lambda net, f: prune(net, LatencyBudget(model_for, f), False),
        )
        report = prune(model, LatencyBudget(model_for, fraction), True)
    finally:
        timer.save()
    report.latency_ms = measured
    predicted = fraction * unpruned_ms
    report.settings["latency"] = {
        "unpruned_ms": unpruned_ms,
        "predicted_ms": predicted,
        "measured_ms": measured,
        "threads": settings.latency_threads,
        "imgsz": imgsz,
    }
    report.notes.append(
        f"latency at {imgsz}x{imgsz}, {settings.latency_threads} thread(s): {unpruned_ms:.1f} ms unpruned, "
        f"{predicted:.1f} predicted, {measured:.1f} measured (target {target:.1f} ms)"
    )
    return report


def _fit_latency(
    model: nn.Module,
    target: float,
    unpruned_ms: float | None,
    imgsz: int,
    settings: PruneSettings,
    prune_copy: Callable[[nn.Module, float], Any],
    tries: int = 6,
) -> tuple[float, float, float]:
    """The share of the predicted latency to prune to, its measured milliseconds and the unpruned model's (timed
    here unless given): start at the target's share of the unpruned latency, then aim each copy by the unpruned model
    and the copies timed so far (``latency.next_fraction``) until one lands within 3% under the target (a copy
    shaped like one timed before is not timed again: the share steps past it, ``_step_past``; at most 4 x ``tries``
    prunes). The
    unpruned model is exported once; each copy is timed against it in interleaved rounds, its milliseconds the ratio
    times ``unpruned_ms``, so the machine's drift between timings does not move the cut."""
    from yoloprune.export.bench import module_latency, relative_latency
    from yoloprune.export.onnx import export_onnx

    tried: list[float] = []
    seen: dict[tuple, float] = {}  # each timed copy's parameter shapes: its milliseconds
    refused: UnreachableTarget | None = None
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "unpruned.onnx"  # exported once, timed beside every copy
        unpruned = resolve(model, settings.family, settings.prune_head).module
        if unpruned_ms is None:
            unpruned_ms = module_latency(unpruned, imgsz, settings.latency_threads, onnx_path=reference)
        else:
            export_onnx(unpruned, reference, imgsz=imgsz)
        if unpruned_ms <= target:
            raise PruneError(f"the model already runs in {unpruned_ms:.1f} ms <= {target:.1f} ms; nothing to prune")
        timed = [(1.0, unpruned_ms)]
        seen[_shapes(unpruned)] = unpruned_ms
        fraction = target / unpruned_ms
        for _ in range(4 * tries):  # a copy shaped like one timed before costs a prune, not a timing
            if len(timed) > tries:
                break
            probe = copy.deepcopy(model)
            tried.append(fraction)
            try:
                prune_copy(probe, fraction)
            except UnreachableTarget as deepest:  # aimed past what max_ratio allows: time the deepest cut it allows
                refused = deepest
                if settings.steps > 1 or any(abs(deepest.reached - f) < 1e-4 for f in tried):
                    break  # with steps, ``reached`` is a share of the last step's start, not of the model
                fraction = deepest.reached
                continue
            net = resolve(probe, settings.family, settings.prune_head).module
            shape = _shapes(net)
            if shape in seen:  # a cut moving in steps (uniform, round_to) gave a copy timed already: step past it
                past = _step_past(fraction, seen[shape], target, tried, timed)
                if past is None:
                    break
                fraction = past
                continue
            ratio = relative_latency(net, reference, imgsz, settings.latency_threads)
            timed.append((fraction, ratio * unpruned_ms))
            seen[shape] = ratio * unpruned_ms
            fits = [t for t in timed if t[1] <= target]
            if fits and max(ms for _, ms in fits) >= 0.97 * target:
                break
            fraction = next_fraction(timed, target)
    fits = [t for t in timed if t[1] <= target]
    if not fits and refused is not None and len(timed) == 1:  # no copy was timed: the settings allow no such cut
        raise refused
    if not fits and len(timed) == 1:  # every cut tried left the model as it was
        raise PruneError(f"cannot reach {target:.1f} ms: no cut these settings allow changes the model")
    if not fits:
        raise PruneError(
            f"cannot reach {target:.1f} ms: the fastest copy these settings allow measured "
            f"{min(ms for _, ms in timed[1:]):.1f} ms at {imgsz}x{imgsz} with {settings.latency_threads} thread(s)"
        )
    return (*max(fits, key=lambda t: t[1]), unpruned_ms)


def _step_past(
    fraction: float, ms: float, target: float, tried: list[float], timed: list[tuple[float, float]]
) -> float | None:
    """The share to try after ``fraction`` gave a copy shaped like one timed at ``ms``: 2% toward the target, past
    every share tried; None past the unpruned model, or when ``fraction`` lies between the widest copy under the
    target and the deepest over it (no other shape lies between them at this step)."""
    under = [f for f, m in timed if m <= target]
    over = [f for f, m in timed if m > target]
    if under and over and max(under) < fraction < min(over):
        return None
    fraction = untried(fraction, tried, 0.98 if ms > target else 1 / 0.98)
    return None if fraction > 1.0 else fraction


def _shapes(net: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Every parameter's shape: two copies alike in it compute alike, whichever channels they kept."""
    return tuple(tuple(p.shape) for p in net.parameters())


HELD_OUT = 32
"""Images past the calibration ones that score the allocations a calibrated prune chooses between."""


def _calibration_batches(
    model: nn.Module, example_inputs: Any, settings: PruneSettings, calib: str | Path, images: int
) -> tuple[list[Any], list[Any]]:
    """The calibration images as batches, read (and refused) before anything is pruned, and up to ``HELD_OUT`` of the
    folder's images after them, held out (none when the folder has no more)."""
    from yoloprune.adapters import adapter, resolve
    from yoloprune.pruning.calibrate import calibration_images, image_batches

    if isinstance(images, bool) or not isinstance(images, int) or images < 2:
        raise ValueError(f"calib_images must be an integer >= 2 (one batch is held out), got {images}")
    spec = adapter(resolve(model, family=settings.family).family).PREPROCESS
    size, batch = int(example_inputs.shape[-1]), max(1, min(8, images // 2))
    paths = calibration_images(calib)
    if not paths:
        raise ValueError(f"--calib {calib}: no images there")
    held = paths[images : images + HELD_OUT]
    return image_batches(paths[:images], size, spec, batch), image_batches(held, size, spec, batch) if held else []


def _chooses_allocation(settings: PruneSettings) -> bool:
    """Whether a calibrated prune picks its allocation by measuring: with scores that rank across layers (recon) and
    nothing said of the ranking (``global_ranking`` None), one step, no latency cost, no fixed unit ratios."""
    from yoloprune.options import COMPARABLE, resolve_importance

    return (
        settings.global_ranking is None
        and resolve_importance(settings.importance, True) in COMPARABLE
        and settings.steps == 1
        and settings.cost != "latency"
        and settings.target_latency_ms is None
        and not settings.unit_ratios
    )


ALLOCATIONS = {"global": True, "uniform": False}
"""The allocations a calibrated prune chooses between: channels ranked across layers per MAC, or every group
losing the same fraction."""


def _prune_best_allocation(
    model: nn.Module,
    example_inputs: Any,
    settings: PruneSettings,
    taylor_loss: Callable[[nn.Module], Any] | None,
    policies: Mapping[Any, Policy] | None,
    batches: list[Any],
    held: list[Any],
) -> tuple[PruneReport, list[Any]]:
    """Prune and calibrate a copy of ``model`` each way of ``ALLOCATIONS``; keep the one whose detections on held-out
    images agree best with the unpruned model's (``evaluate.fidelity``: mAP against its confident detections). No
    ranking wins everywhere: on a COCO-trained YOLOv5n, global per-MAC ranking kept 41% of mAP at 90% MACs where
    uniform kept 70%. Without images past the calibration ones, the last quarter of those scores the copies."""
    from yoloprune.adapters import resolve
    from yoloprune.evaluate.fidelity import CONFIDENT, detections, fidelity_map

    family = resolve(model, family=settings.family).family
    scoring = held or batches[-max(1, len(batches) // 4) :]
    original = copy.deepcopy(model)
    truth = detections(original, scoring, CONFIDENT, family)
    scores: dict[Any, Any] = {}
    tried, refused = [], []
    for name, ranking in ALLOCATIONS.items():
        net, results = copy.deepcopy(original), []
        chosen = replace(settings, global_ranking=ranking)
        try:
            report = _prune(
                net,
                example_inputs,
                chosen,
                taylor_loss,
                None,
                policies,
                batches,
                _calibrating(batches, results),
                scores,
            )
        except UnreachableTarget as exc:  # a target one allocation cannot reach: the other may
            refused.append(exc)
            continue
        score = fidelity_map(truth, detections(net, scoring, 0.001, family))
        tried.append((score, name, net, report, results))
    if not tried:
        raise refused[0]
    score, name, net, report, results = max(tried, key=lambda t: t[0])  # ties: the first (global)
    training = model.training
    model.__dict__.update(net.__dict__)  # the caller's model becomes the chosen copy (its modules, pruned)
    model.train(training)
    images = sum(int(b.shape[0]) for b in scoring)
    where = "held-out" if held else "calibration"
    shown = ", ".join(f"{n} {s:.3f}" for s, n, *_ in tried)
    report.notes.append(
        f"allocation: {name}, the better fidelity to the unpruned model on {images} {where} images ({shown})"
    )
    report.settings["allocation"] = {
        "chosen": name,
        "fidelity": {n: s for s, n, *_ in tried},
        "images": images,
        "held_out": bool(held),
    }
    return report, results


def _calibrating(batches: list[Any], results: list[Any]) -> Callable[[nn.Module, nn.Module, Any], None]:
    """What runs after every prune step with images: the pruned network refitted against itself before the step
    (the original for a one-step prune; after a fine-tune between steps, the fine-tuned network), results kept."""
    from yoloprune.pruning.calibrate import calibrate

    def after_step(pruned: nn.Module, before: nn.Module, removal: Any) -> None:
        results.append(calibrate(pruned, before, batches, removal.modules))

    return after_step


def default_teacher(model: str | Path) -> str | None:
    """The teacher a fine-tune distils from when none is named: the unpruned checkpoint the prune started from (a
    config has no trained weights to teach with)."""
    path = Path(model)
    return str(path) if path.suffix in (".pt", ".pth") and path.is_file() else None


def prune_to_file(
    loaded: Loaded,
    imgsz: int,
    settings: PruneSettings,
    path: str | Path,
    *,
    overwrite: bool = False,
    taylor_loss: Callable[[nn.Module], Any] | None = None,
    between_steps: Callable[[int, nn.Module], bool | None] | None = None,
    calib: str | Path | None = None,
    calib_images: int = 64,
    **extra: Any,
) -> PruneReport:
    """Prune ``loaded.model`` in place (calibrated on the images in ``calib`` when given) and write it in its
    family's format with the section (``extra`` added)."""
    from yoloprune.adapters import save_model
    from yoloprune.images import example_input

    report = prune(
        loaded.model,
        example_input(imgsz),
        settings=settings,
        taylor_loss=taylor_loss,
        between_steps=between_steps,
        calib=calib,
        calib_images=calib_images,
    )
    save_model(loaded, path, checkpoint_section(report, imgsz, **extra), overwrite)
    return report


def recover(checkpoint: str | Path, data: str | Path, *, teacher: str | Path | None, **settings: Any) -> Path:
    """Fine-tune a pruned checkpoint (distilling from ``teacher`` when given); returns the best checkpoint."""
    from yoloprune.train import finetune

    return finetune(checkpoint, data, teacher=teacher, **settings).best


@dataclass
class Measured:
    """A model's cost and accuracy: MACs and params at ``imgsz``, mAP (None without data), ONNX latency (None
    without an export)."""

    macs: int
    params: int
    map50_95: float | None
    map50: float | None
    latency_ms: float | None
    onnx: Path | None
    seconds: float


def measure(
    checkpoint: str | Path,
    data: str | Path | None,
    imgsz: int,
    *,
    batch: int = 16,
    onnx: Path | None = None,
    threads: int = 1,
    runs: int = 30,
    warmup: int = 5,
    overwrite: bool = True,
    export: dict[str, Any] | None = None,
) -> Measured:
    """Count, evaluate (with ``data``), export to ``onnx`` and time it (with ``onnx``) one checkpoint."""
    from yoloprune.adapters import load_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.export.bench import onnx_latency
    from yoloprune.export.onnx import export_onnx
    from yoloprune.graph.counting import count_macs, count_params
    from yoloprune.images import example_input

    start = time.perf_counter()
    loaded = load_model(str(checkpoint))
    metrics = evaluate(loaded.model, data, imgsz=imgsz, batch=batch, family=loaded.family) if data else None
    latency = None
    if onnx is not None:
        export_onnx(loaded.model, onnx, imgsz=imgsz, family=loaded.family, overwrite=overwrite, **(export or {}))
        latency = onnx_latency(onnx, imgsz, threads, runs=runs, warmup=warmup).p50
    x = example_input(imgsz)
    return Measured(
        count_macs(loaded.model, x),
        count_params(loaded.model),
        metrics.map50_95 if metrics else None,
        metrics.map50 if metrics else None,
        latency,
        onnx,
        time.perf_counter() - start,
    )


__all__ = ["Measured", "checkpoint_section", "default_teacher", "measure", "prune", "prune_to_file", "recover"]
