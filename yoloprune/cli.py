"""The ``yoloprune`` command line."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from yoloprune import __version__
from yoloprune.options import AGGREGATES, COSTS, CRITERIA, SWEEP_BY, default_threads

BASIC_ERRORS = (FileNotFoundError, ValueError, TypeError)
"""Bad input that Python itself names: told apart without importing anything."""


def user_errors() -> tuple[type[BaseException], ...]:
    """yoloprune's own exceptions that mean bad input: printed as one line with exit status 2 like ``BASIC_ERRORS``
    (imported only for an error of another type, so ``--help``, usage errors and bad settings answer without loading
    torch)."""
    from yoloprune.data.datasets import DatasetError
    from yoloprune.export.onnx import ExportError
    from yoloprune.graph import PruneError, TraceError

    return (TraceError, PruneError, ExportError, DatasetError)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _prune(args: argparse.Namespace) -> int:
    from yoloprune.io import check_output
    from yoloprune.pruning.settings import PruneSettings

    out = check_output(args.output, [args.model], args.overwrite)
    if (args.importance == "taylor" or args.finetune_epochs) and not args.data:
        raise ValueError("--importance taylor and --finetune-epochs need --data (a labelled data yaml)")
    unit_ratios, units_by = None, "stage"
    if args.ratios_from:
        from yoloprune.workflows.sensitivity import read_ratios

        chosen = read_ratios(args.ratios_from)
        unit_ratios, units_by = chosen["ratios"], chosen["by"]
    settings = PruneSettings(  # every option checked before the model is read
        ratio=args.ratio,
        unit_ratios=unit_ratios,
        units_by=units_by,
        importance=args.importance,
        seed=args.seed,
        ignore=tuple(args.ignore),
        target_macs=args.target_macs,
        target_params=args.target_params,
        target_latency_ms=args.target_latency_ms,
        latency_imgsz=args.imgsz,
        latency_threads=_threads(args),
        latency_unpruned_ms=args.latency_unpruned_ms,
        global_ranking=args.global_ranking,
        cost=args.cost,
        max_ratio=args.max_ratio,
        round_to=args.round_to,
        aggregate=args.aggregate,
        steps=args.steps,
        protect_first=not args.prune_first,
        prune_head=args.prune_head,
        family=args.family,
    )
    _size_for(args)
    from yoloprune.adapters import load_model
    from yoloprune.workflows.pipeline import prune_to_file, summary

    loaded = load_model(args.model, args.family)
    settings.family = loaded.family
    taylor_loss, between = None, None
    if args.importance == "taylor":
        from yoloprune.pruning.taylor import taylor_loss_from

        taylor_loss = taylor_loss_from(args.data, args.imgsz)
    if args.finetune_epochs:
        between = _between_steps(loaded, args, out.parent / f"{out.stem}-steps")
    report = prune_to_file(
        loaded,
        args.imgsz,
        settings,
        out,
        overwrite=args.overwrite,
        taylor_loss=taylor_loss,
        between_steps=between,
        calib=args.calib,
        calib_images=args.calib_images,
        source=str(args.model),
    )
    if args.json:
        print(json.dumps({"output": str(out), **summary(report)}, indent=1))
        return 0
    how = next(
        f"{k.replace('_', ' ')} {v}"
        for k, v in report.settings.items()
        if k.startswith(("ratio", "target", "unit")) and v
    )
    print(f"{args.model} ({report.family}) pruned with {args.importance} to {how} in {report.seconds:.2f} s")
    print(
        f"  MACs   {_human(report.macs_before)} -> {_human(report.macs_after)} ({report.macs_ratio:.1%}) "
        f"at {args.imgsz}x{args.imgsz}"
    )
    print(f"  params {_human(report.params_before)} -> {_human(report.params_after)} ({report.params_ratio:.1%})")
    print(f"  removed {report.channels_removed} channels in {report.groups_pruned} groups")
    if report.latency_ms is not None:
        print(
            f"  onnxruntime latency {report.latency_ms:.1f} ms ({_threads(args)} thread(s), {args.imgsz}x{args.imgsz})"
        )
    for note in report.notes:
        print(f"  note: {note}")
    print(f"saved {out}")
    return 0


def _between_steps(loaded, args: argparse.Namespace, folder: Path):
    """After each pruning step: a short fine-tune (distilling from the input checkpoint) and, with --max-drop, a
    stop when validation mAP50-95 fell more than that below the unpruned model's."""
    from yoloprune.adapters import save_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.io import load_checkpoint
    from yoloprune.workflows.pipeline import default_teacher, recover

    teacher = default_teacher(args.model)
    base = evaluate(loaded.model, args.data, imgsz=args.imgsz).map50_95 if args.max_drop is not None else None

    def callback(step: int, model) -> bool:
        checkpoint = save_model(loaded, folder / f"step{step}.pt", {}, overwrite=True)
        best = recover(
            checkpoint,
            args.data,
            teacher=teacher,
            epochs=args.finetune_epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            out=folder / f"step{step}",
            overwrite=True,
        )
        loaded.model.load_state_dict(load_checkpoint(best)["model"].float().state_dict())
        if base is None:
            return True
        current = evaluate(loaded.model, args.data, imgsz=args.imgsz).map50_95
        print(f"  step {step}: mAP50-95 {current:.4f} (unpruned {base:.4f})")
        return base - current <= args.max_drop

    return callback


def _export(args: argparse.Namespace) -> int:
    from yoloprune.io import check_output

    out = check_output(args.output, [args.model], args.overwrite)
    if args.int8 and not args.calib:
        raise ValueError("--int8 needs --calib DIR (a folder of representative images)")
    from yoloprune.adapters import load_model
    from yoloprune.export.onnx import check_opset, export_onnx

    check_opset(args.opset, args.int8)
    _size_for(args)
    loaded = load_model(args.model, args.family)
    pruning = loaded.meta.get("pruning")
    result = export_onnx(
        loaded.model,
        out,
        imgsz=args.imgsz,
        opset=args.opset,
        dynamic=args.dynamic,
        simplify=args.simplify,
        split_convs=args.split_convs,
        half=args.half,
        nms=args.nms,
        end2end=args.end2end,
        int8_calib=args.calib if args.int8 else None,
        family=loaded.family,
        image=args.image,
        metadata={"yoloprune": json.dumps(pruning, default=str)} if pruning else None,
        overwrite=args.overwrite,
    )
    print(result)
    for note in result.notes:
        print(f"  note: {note}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from yoloprune.export.bench import bench

    _size_for(args)
    result = bench(args.model, imgsz=args.imgsz, threads=_threads(args), runs=args.runs, warmup=args.warmup)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from yoloprune.io import folder_lock

    if not args.resume and args.model is None:
        raise ValueError("give MODEL (or --resume to continue the run in -o)")
    settings = _settings(args.train_set)
    for key in FLAGGED.keys() & settings.keys():  # epochs=3 as yolo train takes it: the same as --epochs 3
        value = settings.pop(key)
        if isinstance(value, bool) or not isinstance(value, FLAGGED[key]):
            raise ValueError(f"{key}={value}: {key} takes {' or '.join(t.__name__ for t in FLAGGED[key])}")
        if key in AT_LEAST and value < AT_LEAST[key]:
            raise ValueError(f"{key}={value}: {key} must be at least {AT_LEAST[key]}")
        setattr(args, key, str(value) if key == "device" else value)
    from yoloprune.train import finetune

    if not args.resume:
        _size_for(args)
    with folder_lock(args.output):
        result = finetune(
            args.model,
            args.data,
            epochs=args.epochs,
            teacher=args.teacher,
            kd_weight=args.kd_weight,
            sparsity=args.sparsity,
            sparsity_kind=args.sparsity_kind,
            imgsz=args.imgsz,
            batch=args.batch,
            device=args.device,
            lr0=args.lr0,
            out=args.output,
            workers=args.workers,
            resume=args.resume,
            overwrite=args.overwrite,
            **settings,
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    print(f"fine-tuned {result.epochs} epoch(s) in {result.seconds:.0f} s; {result.params / 1e6:.3f}M params")
    for key in ("metrics/mAP50-95(B)", "metrics/mAP50(B)"):
        if key in result.metrics:
            print(f"  {key}: {result.metrics[key]:.4f}")
    print(f"saved {result.best} (and {result.last.name})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from yoloprune.evaluate.coco import evaluate

    _size_for(args)
    result = evaluate(
        args.model,
        args.data,
        imgsz=args.imgsz,
        batch=args.batch,
        conf=args.conf,
        iou=args.iou,
        family=args.family,
        split=args.split,
        max_images=args.max_images,
    )
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0


def _settings(items: list[str]) -> dict:
    """``KEY=VALUE`` trainer settings (values parsed as yaml: numbers, booleans, strings)."""
    from yoloprune.options import parse_assignment

    out = {}
    for item in items:
        parts, value = parse_assignment(item, "--train-set")
        out[".".join(parts)] = value
    return out


def _sweep(args: argparse.Namespace) -> int:
    from yoloprune.io import folder_lock
    from yoloprune.options import parse_fractions
    from yoloprune.workflows.sweep import sweep

    targets = parse_fractions(args.targets, "--targets")
    settings = _settings(args.train_set)
    _size_for(args)
    with folder_lock(args.output):
        points = sweep(
            args.model,
            args.data,
            args.output,
            targets,
            finetune_epochs=args.finetune_epochs,
            kd_weight=args.kd_weight,
            importance=args.importance,
            global_ranking=args.global_ranking,
            cost=args.cost,
            by=args.by,
            round_to=args.round_to,
            imgsz=args.imgsz,
            batch=args.batch,
            threads=_threads(args),
            runs=args.runs,
            device=args.device,
            finetune_args=settings,
            calib=args.calib,
            calib_images=args.calib_images,
        )
    print((Path(args.output) / "report.md").read_text())
    print(f"wrote {len(points)} points to {args.output} (results.csv, results.json, pareto.png, report.md)")
    if args.importance == "auto" and not args.calib:
        print(
            "note: no --calib: every point was ranked by weight magnitude (l2) and not calibrated; a trained model "
            "keeps far more with --calib DIR (unlabelled images, e.g. the data's train images)"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from yoloprune.io import check_links
    from yoloprune.workflows.demo import demo

    check_links(args.output)
    demo(args.output, quick=args.quick, model=args.model)
    return 0


def _run(args: argparse.Namespace) -> int:
    from yoloprune.io import folder_lock
    from yoloprune.workflows.recipe import load_recipe, run

    recipe = load_recipe(args.recipe, args.set)
    out = Path(args.output or f"runs/{recipe['name']}")
    with folder_lock(out):
        results = run(recipe, out, args.overwrite, inputs=[args.recipe])
    print(json.dumps(results, indent=1, default=str))
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from yoloprune.io import folder_lock
    from yoloprune.options import parse_fractions
    from yoloprune.workflows.sensitivity import OUTPUTS, analyse, write_ratios  # torch only once it runs

    ratios = tuple(parse_fractions(args.ratios, "--ratios"))
    if 1.0 in ratios:
        raise ValueError("--ratios are fractions in (0, 1): a unit cannot lose all its channels")
    with folder_lock(args.output):
        if any((Path(args.output) / name).exists() for name in OUTPUTS) and not args.overwrite:
            raise ValueError(f"{args.output} holds a sensitivity analysis; pass --overwrite to replace it")
        _size_for(args)
        rows = analyse(
            args.model,
            args.data,
            args.output,
            ratios=ratios,
            by=args.by,
            imgsz=args.imgsz,
            batch=args.batch,
            max_images=args.max_images,
            overwrite=args.overwrite,
        )
        plan = write_ratios(args.output, rows, args.target_macs, args.by, args.overwrite)
    print(f"{len(rows)} measurements over {len({r.unit for r in rows})} units -> {args.output}/sensitivity.csv")
    print(
        f"ratios for {args.target_macs:.0%} MACs (predicted {plan['predicted_macs']:.1%}, mAP50-95 drop "
        f"{plan['predicted_drop']:.4f}): {plan['ratios']}"
    )
    print(f"prune with: yoloprune prune {args.model} --ratios-from {args.output} -o OUT.pt")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from yoloprune.data import synthesize
    from yoloprune.io import check_links

    check_links(args.output)

    start = time.perf_counter()
    path = synthesize(
        args.output,
        args.train,
        args.val,
        args.imgsz,
        args.classes,
        args.seed,
        progress=True,
        difficulty=args.difficulty,
    )
    print(f"wrote {path} ({args.train} train + {args.val} val images) in {time.perf_counter() - start:.1f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from yoloprune.adapters import load_model, resolve
    from yoloprune.graph import build
    from yoloprune.images import example_input

    _size_for(args)
    loaded = load_model(args.model, args.family)
    target = resolve(loaded.model, family=loaded.family, prune_head=args.prune_head)
    start = time.perf_counter()
    graph = build(
        target.module,
        example_input(args.imgsz),
        outputs=target.outputs,
        ignore=tuple(target.ignore) + tuple(args.ignore),
        policies=target.policies,
    )
    seconds = time.perf_counter() - start
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "family": target.family,
                    "imgsz": args.imgsz,
                    "seconds": round(seconds, 3),
                    **graph.to_dict(),
                },
                indent=1,
            )
        )
        return 0
    s = graph.summary()
    print(
        f"{args.model} ({target.family}, {args.imgsz}x{args.imgsz}, {s['ops']} ops traced in {seconds:.2f} s): "
        f"{s['groups']} groups, {s['prunable_groups']} prunable; "
        f"{s['channels']} channels, {s['prunable_channels']} prunable"
    )
    print(f"{'id':>4} {'ch':>5}  {'state':<10} members")
    for g in graph.groups:
        state = "prunable" if g.prunable else "frozen"
        if g.tie is not None:
            state += f" tie{g.tie}"
        members = g.members
        shown = ", ".join(members[:3]) + (f", +{len(members) - 3} more" if len(members) > 3 else "")
        print(f"{g.id:>4} {g.channels:>5}  {state:<10} {shown}")
        if g.frozen:
            print(f"{'':>12}why: {g.frozen}")
    return 0


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _imgsz(text: str) -> int:
    """A model's ``--imgsz``, checked while parsing: before any model is loaded or tensor allocated."""
    from yoloprune.options import check_imgsz

    value = _integer(text)
    try:
        return check_imgsz(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--imgsz ")) from None


def _count(low: int) -> Callable[[str], int]:
    """An integer flag of at least ``low`` (runs, threads, a batch size), checked while parsing."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _threads(args: argparse.Namespace) -> int:
    """``--threads``, or every core this process may use."""
    return default_threads() if args.threads is None else args.threads


def _ranking_options(p: argparse.ArgumentParser) -> None:
    """Which channels go: ``--importance``, ``--global``/``--uniform`` and ``--cost`` (prune and sweep)."""
    p.add_argument(
        "--importance", default="auto", choices=CRITERIA, help="channel ranking (auto: recon with --calib, else l2)"
    )
    ranking = p.add_mutually_exclusive_group()
    ranking.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        default=None,
        help="rank channels across groups (default with --calib: per MAC, by recon error)",
    )
    ranking.add_argument(
        "--uniform", dest="global_ranking", action="store_false", help="every group loses the same fraction"
    )
    p.add_argument(
        "--cost",
        choices=COSTS,
        default=None,
        help="rank channels globally per MAC or per millisecond they save (latency: a table of the model's "
        "convolutions timed with onnxruntime here, cached; the default for latency targets ranked by recon, "
        "as with --calib)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="yoloprune", description="Prune YOLO detectors physically and exactly.")
    parser.add_argument("--version", action="version", version=f"yoloprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument(
        "--trust", action="store_true", help="load pickled checkpoints fully (they can run code): trusted files only"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="show upstream logs and progress bars, and an error's traceback"
    )
    common.add_argument(
        "--repo", metavar="DIR", help="a YOLOv5/YOLOv7 clone whose models/ the checkpoint was made with"
    )
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore[method-assign]

    p = sub.add_parser("demo", help="the whole job on the synthetic benchmark: train, prune, fine-tune, eval, export")
    p.add_argument("-o", "--output", default="runs/demo", metavar="DIR", help="output folder (runs/demo)")
    p.add_argument("--quick", action="store_true", help="a two-minute smoke version")
    p.add_argument(
        "--model", default="yolov8n", help="ultralytics detector to train and prune: yolov8n, yolo11n, yolo26n"
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser("inspect", help="list a model's coupled channel groups (members, size, frozen and why)")
    p.add_argument("model", help="model config, zoo name (yolox-s) or checkpoint")
    p.add_argument("--imgsz", type=_imgsz, help=f"input size to trace at ({TRAINED})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB", help="keep these modules' channels")
    p.add_argument("--prune-head", action="store_true", help="let the detection head's inner layers be pruned")
    p.add_argument(
        "--family", default=None, help="model family when the file cannot tell: ultralytics, yolov5, yolov7, yolox"
    )
    p.set_defaults(func=_inspect)

    p = sub.add_parser("prune", help="remove channels physically and write a checkpoint in the family's format")
    p.add_argument("model", help="model config (yolov8s.yaml) or checkpoint (best.pt)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="where to write the pruned checkpoint")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=float, help="fraction of each group's channels to remove (default 0.3)")
    how.add_argument("--target-macs", type=float, metavar="F", help="MACs as a fraction of the original (0.5)")
    how.add_argument("--target-params", type=float, metavar="F", help="params as a fraction of the original")
    how.add_argument(
        "--target-latency",
        dest="target_latency_ms",
        type=float,
        metavar="MS",
        help="onnxruntime CPU ms on this machine",
    )
    how.add_argument("--ratios-from", metavar="DIR", help="per-stage ratios from `yoloprune sensitivity`")
    _ranking_options(p)
    p.add_argument("--aggregate", default="mean", choices=AGGREGATES, help="combine a group's layers (mean)")
    p.add_argument("--max-ratio", type=float, default=0.8, help="most any group may lose with --global (0.8)")
    p.add_argument("--round-to", type=_count(1), default=8, help="keep pruned widths multiples of N (8; 1 disables)")
    p.add_argument("--steps", type=_count(1), default=1, help="reach the target in this many steps (1)")
    p.add_argument(
        "--threads", type=_count(1), default=None, help="onnxruntime threads for latency (default: every core here)"
    )
    p.add_argument(
        "--unpruned-ms",
        dest="latency_unpruned_ms",
        type=float,
        metavar="MS",
        help="the unpruned model's ms with --target-latency when already timed: aim from it, not a new timing",
    )
    p.add_argument("--prune-first", action="store_true", help="let the first layer be pruned too")
    p.add_argument("--data", help="labelled data yaml for --importance taylor and --finetune-epochs")
    p.add_argument(
        "--calib",
        metavar="DIR",
        help="unlabelled images: refit the layers that lost inputs to reproduce the original's outputs",
    )
    p.add_argument("--calib-images", type=_count(1), default=64, metavar="N", help="calibration images to use (64)")
    p.add_argument("--finetune-epochs", type=_count(0), default=0, help="fine-tune between --steps (0)")
    p.add_argument("--batch", type=_count(1), default=16, help="batch size for fine-tuning between steps (16)")
    p.add_argument("--max-drop", type=float, help="stop the steps when mAP50-95 drops more than this")
    p.add_argument("--seed", type=int, default=0, help="seed for random importance")
    p.add_argument("--imgsz", type=_imgsz, help=f"input size for tracing and MACs ({TRAINED})")
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB", help="keep these modules' channels")
    p.add_argument("--prune-head", action="store_true", help="also prune the detection head's inner layers")
    p.add_argument(
        "--family", default=None, help="model family when the file cannot tell: ultralytics, yolov5, yolov7, yolox"
    )
    p.add_argument("--overwrite", "--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_prune)

    p = sub.add_parser("export", help="export to ONNX, verified against PyTorch on a real image")
    p.add_argument("model", help="checkpoint or config")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--imgsz", type=_imgsz, help=f"input size ({TRAINED})")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17; 11..20, 13..20 with --int8)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=True, help="run onnxslim (on)")
    p.add_argument(
        "--split-convs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each part of a channel split gets its own convolution (same outputs, faster on onnxruntime CPU; on)",
    )
    p.add_argument("--half", action="store_true", help="fp16 weights and compute (inputs and outputs stay fp32)")
    p.add_argument("--nms", action="store_true", help="append score filtering and NMS (batch 1)")
    p.add_argument(
        "--end2end", action="store_true", help="the NMS-free one-to-one head's (B, 300, 6) detections (YOLO26, YOLOv10)"
    )
    p.add_argument("--int8", action="store_true", help="static INT8 quantization (needs --calib)")
    p.add_argument("--calib", metavar="DIR", help="folder of calibration images for --int8")
    p.add_argument("--image", help="verification image (default: ultralytics' bus.jpg)")
    p.add_argument(
        "--family", default=None, help="model family when the file cannot tell: ultralytics, yolov5, yolov7, yolox"
    )
    p.add_argument("--overwrite", "--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="MACs, params and CPU latency (onnxruntime and PyTorch)")
    p.add_argument("model", help="checkpoint, config or .onnx file")
    p.add_argument("--imgsz", type=_imgsz, help=f"input size ({TRAINED})")
    p.add_argument(
        "--threads", type=_count(1), default=None, help="intra-op threads for both runtimes (default: every core here)"
    )
    p.add_argument("--runs", type=_count(1), default=50, help="timed runs (50)")
    p.add_argument("--warmup", type=_count(0), default=10, help="untimed warm-up runs (10)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_bench)

    p = sub.add_parser("finetune", help="recover accuracy: train the pruned network as it is, optionally with KD")
    p.add_argument("model", nargs="?", help="pruned checkpoint (or any checkpoint of a supported family)")
    p.add_argument(
        "--data",
        required=True,
        help="data yaml (YOLO labels; another class list gives the head the data's classes), or a folder of images "
        "to distil on (needs --teacher)",
    )
    p.add_argument("-o", "--output", default="runs/finetune", metavar="DIR", help="run folder (runs/finetune)")
    p.add_argument("--epochs", type=_count(AT_LEAST["epochs"]), help="epochs (10; --resume keeps the run's)")
    p.add_argument("--teacher", help="unpruned checkpoint to distil from")
    p.add_argument("--kd-weight", type=float, help="distillation loss weight (1.0)")
    p.add_argument("--sparsity", type=float, help="sparsity training strength (0: off)")
    p.add_argument(
        "--sparsity-kind",
        choices=("bn", "group"),
        help="bn: BN-L1 (network slimming); group: group lasso",
    )
    p.add_argument("--imgsz", type=_imgsz, help=f"training size ({TRAINED}; --resume keeps the run's)")
    p.add_argument("--batch", type=_count(AT_LEAST["batch"]), help="batch size (16; --resume keeps the run's)")
    p.add_argument("--device", default="cpu", help="cpu, 0, or 0,1 for DDP (cpu)")
    p.add_argument("--lr0", type=float, help="initial learning rate (ultralytics' default)")
    p.add_argument("--workers", type=_count(AT_LEAST["workers"]), default=2, help="dataloader workers (2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in -o")
    p.add_argument("--overwrite", action="store_true", help="start over when -o already holds a run")
    p.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any ultralytics trainer setting (mosaic=0, nbs=16, optimizer=SGD, ...); bare KEY=VALUE words after the "
        "arguments work too, as in yolo train (epochs=3 is --epochs 3)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("eval", help="COCO mAP50-95 / mAP50 with pycocotools (checkpoints, configs, .onnx files)")
    p.add_argument("model", help="checkpoint, config or .onnx file")
    p.add_argument("--data", required=True, help="data yaml, COCO annotation JSON, or a dataset folder")
    p.add_argument("--imgsz", type=_imgsz, help=f"inference size ({TRAINED})")
    p.add_argument("--batch", type=_count(1), default=16, help="batch size (16)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (0.001)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU (0.7)")
    p.add_argument("--split", default="val", help="dataset split (val)")
    p.add_argument("--max-images", type=_count(1), help="evaluate only the first N images")
    p.add_argument(
        "--family", default=None, help="model family when the file cannot tell: ultralytics, yolov5, yolov7, yolox"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "sweep", help="mAP versus latency over MACs or latency targets: table, JSON, CSV and a Pareto plot"
    )
    p.add_argument("model", help="checkpoint to prune (every point starts from it)")
    p.add_argument("--data", required=True, help="data yaml or COCO dataset to evaluate (and fine-tune) on")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="sweep folder (resumable)")
    p.add_argument(
        "--targets", default="0.9,0.75,0.6,0.5,0.4,0.3", help="fractions of the unpruned (0.9,0.75,0.6,0.5,0.4,0.3)"
    )
    p.add_argument(
        "--by",
        choices=SWEEP_BY,
        default="macs",
        help="what --targets are fractions of: MACs, or the unpruned point's measured latency (each point then "
        "pruned to a latency target)",
    )
    p.add_argument("--finetune-epochs", type=_count(0), default=0, help="fine-tune each point this many epochs (0)")
    p.add_argument("--calib", metavar="DIR", help="unlabelled images to calibrate every pruned point on")
    p.add_argument("--calib-images", type=_count(1), default=64, metavar="N", help="calibration images to use (64)")
    p.add_argument("--kd-weight", type=float, default=1.0, help="distillation weight when fine-tuning (1.0)")
    _ranking_options(p)
    p.add_argument("--round-to", type=_count(1), default=8, help="keep pruned widths multiples of N (8)")
    p.add_argument("--imgsz", type=_imgsz, help=f"size for evaluation, export and latency ({TRAINED})")
    p.add_argument("--batch", type=_count(1), default=16, help="batch size (16)")
    p.add_argument(
        "--threads", type=_count(1), default=None, help="onnxruntime threads for latency (default: every core here)"
    )
    p.add_argument("--runs", type=_count(1), default=30, help="timed runs per point (30)")
    p.add_argument("--device", default="cpu", help="device for fine-tuning (cpu)")
    p.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ultralytics trainer setting for the fine-tunes (mosaic=0, nbs=16, ...); bare KEY=VALUE words too",
    )
    p.set_defaults(func=_sweep)

    p = sub.add_parser("run", help="run a recipe (prune, fine-tune, eval, export, bench) from recipes/*.yaml")
    p.add_argument("recipe", help="recipe yaml")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an entry (prune.target_macs=0.4)"
    )
    p.add_argument("-o", "--output", metavar="DIR", help="results folder (runs/<recipe name>)")
    p.add_argument("--overwrite", action="store_true", help="replace the results a previous run left in -o")
    p.set_defaults(func=_run)

    p = sub.add_parser("sensitivity", help="mAP cost of pruning each stage alone, and ratios for a MACs target")
    p.add_argument("model", help="trained checkpoint")
    p.add_argument("--data", required=True, help="data yaml or COCO dataset (val split)")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--ratios", default="0.25,0.5,0.75", help="ratios to try per unit (0.25,0.5,0.75)")
    p.add_argument("--by", default="stage", choices=("stage", "group"), help="unit of analysis (stage)")
    p.add_argument("--target-macs", type=float, default=0.5, help="MACs fraction to allocate ratios for (0.5)")
    p.add_argument("--imgsz", type=_imgsz, help=f"evaluation size ({TRAINED})")
    p.add_argument("--batch", type=_count(1), default=16, help="batch size (16)")
    p.add_argument("--max-images", type=_count(1), help="evaluate on the first N validation images only")
    p.add_argument("--overwrite", action="store_true", help="replace the analysis a previous run left in -o")
    p.set_defaults(func=_sensitivity)

    data = sub.add_parser("data", help="datasets: `yoloprune data synth` writes the synthetic benchmark")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_sub.add_parser = functools.partial(data_sub.add_parser, parents=[common])  # type: ignore[method-assign]
    p = data_sub.add_parser("synth", help="a deterministic synthetic detection dataset (COCO JSON + YOLO labels)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--train", type=int, default=800, help="training images (800)")
    p.add_argument("--val", type=int, default=200, help="validation images (200)")
    p.add_argument("--imgsz", type=int, default=320, help="image side in pixels (320)")
    p.add_argument("--classes", type=int, default=6, help="number of shape classes (6, at most 12)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--difficulty", default="hard", choices=("hard", "easy"), help="hard: the benchmark (default)")
    p.set_defaults(func=_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status: user errors print one line and return 2, Ctrl-C prints one line and
    returns 130 (outputs are written atomically, so an interrupted command leaves nothing half-written). Nothing is
    downloaded: ``YOLO_OFFLINE=1`` is set for ultralytics unless the environment says otherwise. ultralytics' own logs
    and progress bars show with ``--verbose`` (``YOLO_VERBOSE=False`` is set otherwise, unless the environment says
    otherwise); yoloprune prints one line per step and per epoch."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        _take_overrides(parser, args, extra)
    except SystemExit as exc:  # usage errors (one line, status 2), --help, --version
        return int(exc.code or 0)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if not getattr(args, "verbose", False):  # ultralytics' logs and progress bars only with --verbose
        os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        _failed(args, "interrupted")
        return 130
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        return 0
    except RecursionError:  # a crafted file nested thousands deep
        _failed(args, "error: an input is nested too deeply to process")
        return 2
    except Exception as exc:
        if not isinstance(exc, BASIC_ERRORS) and not isinstance(exc, user_errors()):
            raise
        _failed(args, f"error: {' '.join(str(exc).split()) or type(exc).__name__}")
        return 2


MODEL_FILES = (".pt", ".pth", ".onnx")
"""Model arguments that can only be files (configs and zoo names may be resolved elsewhere)."""
OVERRIDES = {"finetune": "train_set", "sweep": "train_set", "run": "set"}
"""Commands that take ultralytics-style ``key=value`` words after their arguments, and the option they extend."""
FLAGGED = {
    "epochs": (int,),
    "imgsz": (int,),
    "batch": (int,),
    "device": (str, int),
    "lr0": (float, int),
    "workers": (int,),
}
"""finetune settings that have flags of their own, and the types they take as ``key=value``."""
AT_LEAST = {"epochs": 1, "batch": 1, "workers": 0}
"""The least value of finetune's counts, as ``key=value`` words and as flags."""
ASSIGNMENT = re.compile(r"[A-Za-z_][\w.]*=.*", re.S)


def _take_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> None:
    """``yoloprune finetune M --data D epochs=3 lr0=0.001`` as ``yolo train`` takes settings: bare ``key=value``
    words join ``--train-set`` (``--set`` for ``run``); anything else left over is an error, as argparse says it."""
    dest = OVERRIDES.get(getattr(args, "command", ""))
    unknown = [word for word in extra if dest is None or not ASSIGNMENT.fullmatch(word)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        setattr(args, dest, [*getattr(args, dest), *extra])


def _dispatch(args: argparse.Namespace) -> int:
    from yoloprune.io import trusting
    from yoloprune.options import SETTINGS, check_numbers

    check_numbers(**{name: value for name, value in vars(args).items() if name in SETTINGS})
    model = getattr(args, "model", None)  # --resume reads the run in -o, not MODEL
    if (
        model
        and not getattr(args, "resume", False)
        and Path(model).suffix.lower() in MODEL_FILES
        and not Path(model).exists()
    ):
        raise FileNotFoundError(f"no such model: {model}")  # told before torch loads; the loaders say it too
    data = getattr(args, "data", None)  # a data yaml, a COCO JSON or a dataset folder: always a path
    if data and not Path(data).exists():
        raise FileNotFoundError(f"no such dataset: {data}")
    if getattr(args, "repo", None):
        from yoloprune.adapters.packages import use_repo

        use_repo(args.repo)
    with trusting(getattr(args, "trust", False)):
        return args.func(args)


TRAINED = "default: the size the checkpoint was trained at, else 640"
"""What ``--imgsz`` is when not given, for every command that reads a model."""
FAR_FROM_TRAINED = 2.0  # an --imgsz this many times larger or smaller than the training size is worth a word


def _size_for(args: argparse.Namespace) -> None:
    """``--imgsz`` when not given: the size the checkpoint says it was trained at (ultralytics and YOLOv5 record it;
    yoloprune keeps it), else 640, said on stderr; a given size far from the training size gets a note there too."""
    from yoloprune.adapters import trained_imgsz

    model = getattr(args, "model", None)
    trained = trained_imgsz(model) if model and Path(model).suffix.lower() in (".pt", ".pth") else None
    if args.imgsz is None:
        args.imgsz = trained or 640
        if trained:
            print(f"yoloprune: --imgsz {trained}, the size {model} was trained at", file=sys.stderr)
    elif trained and max(args.imgsz, trained) >= FAR_FROM_TRAINED * min(args.imgsz, trained):
        print(f"yoloprune: note: --imgsz {args.imgsz}, but {model} was trained at {trained}", file=sys.stderr)


def _failed(args: argparse.Namespace, what: str) -> None:
    if getattr(args, "verbose", False):
        traceback.print_exc()
    print(f"yoloprune {args.command}: {what}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
