"""Recipes: one yaml file that says how to prune, fine-tune, export and benchmark a model, checked strictly.

An unknown key or a value of the wrong type is an error that names the key. ``--set section.key=value`` overrides
entries; the resolved recipe is written next to the results and into the pruned checkpoint.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

import yaml

from yoloprune.io import OversizedSection, check_output, check_sections, write_atomic
from yoloprune.options import SETTINGS, number_problem, parse_assignment
from yoloprune.pruning.settings import AMOUNTS, PruneSettings
from yoloprune.workflows.pipeline import default_teacher, recover

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
SET_BY_RECIPE = ("family", "latency_imgsz", "latency_threads")  # from the recipe's family, imgsz and bench.threads

SCHEMA: dict[str, Any] = {
    "name": str,
    "description": str,
    "family": (str, type(None)),
    "model": str,
    "data": (str, type(None)),
    "imgsz": int,
    "prune": PruneSettings.schema(SET_BY_RECIPE),
    "finetune": {
        "epochs": int,
        "teacher": bool,
        "kd_weight": NUMBER,
        "batch": int,
        "device": (str, int),
        "lr0": OPTIONAL_NUMBER,
        "workers": int,
        "images": (str, type(None)),
        "overrides": dict,
    },
    "export": {"opset": int, "half": bool, "dynamic": bool, "simplify": bool, "split_convs": bool, "nms": bool},
    "bench": {"threads": int, "runs": int},
    "expected": dict,
}
ITEMS: dict[str, type] = {"prune.ignore": str}
"""What the entries of the recipe's lists must be, by key."""
DEFAULTS: dict[str, Any] = {
    "name": "recipe",
    "description": "",
    "family": None,
    "data": None,
    "imgsz": 640,
    "prune": {**PruneSettings.defaults(SET_BY_RECIPE), "round_to": 8},  # target_macs: DEFAULT_TARGET_MACS if no amount
    "finetune": {
        "epochs": 0,
        "teacher": True,
        "kd_weight": 1.0,
        "batch": 16,
        "device": "cpu",
        "lr0": None,
        "workers": 2,
        "images": None,
        "overrides": {},
    },
    "export": {"opset": 17, "half": False, "dynamic": False, "simplify": True, "split_convs": True, "nms": False},
    "bench": {"threads": 1, "runs": 50},
    "expected": {},
}


DEFAULT_TARGET_MACS = 0.5


MAX_RECIPE_BYTES = 1 << 20
"""The largest recipe file read (one is a few hundred bytes)."""


class RecipeError(ValueError):
    """A recipe that does not validate."""


def _check(node: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(node, dict):
            raise RecipeError(f"{where or 'recipe'} must be a mapping, got {type(node).__name__}")
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in schema:
                raise RecipeError(f"unknown key {path!r}; allowed here: {', '.join(schema)}")
            _check(value, schema[key], path)
        return
    kinds = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(node, bool) and bool not in kinds:
        raise RecipeError(f"{where} must be {'/'.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(node, kinds):
        raise RecipeError(f"{where} must be {'/'.join(k.__name__ for k in kinds)}, got {type(node).__name__}")
    name = where.rpartition(".")[2]
    if isinstance(node, (list, tuple)) and where in ITEMS:
        for item in node:
            if not isinstance(item, ITEMS[where]) or isinstance(item, bool):
                kind = "bool" if isinstance(item, bool) else type(item).__name__
                raise RecipeError(f"{where} must be a list of {ITEMS[where].__name__}, got {kind} in it")
    if name in SETTINGS and node is not None and (problem := number_problem(name, node)):
        raise RecipeError(f"{where} {problem}, got {node}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_recipe(path: str | Path, sets: list[str] = ()) -> dict[str, Any]:
    """A recipe file with ``key.sub=value`` overrides applied, validated and completed with defaults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such recipe: {path}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path} is larger than {MAX_RECIPE_BYTES:,} bytes; a recipe is a few hundred")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise RecipeError(f"{path} is not valid yaml: {_yaml_problem(exc)}") from None
    try:  # before any work: a free-form section (expected:) of yaml anchors may stand for billions of values
        check_sections(path, recipe)
    except OversizedSection as exc:
        raise RecipeError(str(exc)) from None
    _check(recipe, SCHEMA, "")
    for item in sets:
        try:
            parts, value = parse_assignment(item)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        node = recipe
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        if parts[:1] == ["prune"] and len(parts) == 2 and parts[1] in AMOUNTS:
            for other in AMOUNTS:  # a --set amount replaces the recipe's, whichever way that one says it
                node.pop(other, None)
        node[parts[-1]] = value
    _check(recipe, SCHEMA, "")
    if "model" not in recipe:
        raise RecipeError("the recipe names no model")
    _check_name(recipe.get("name", DEFAULTS["name"]))
    resolved = _merge(DEFAULTS, recipe)
    _check_amount(resolved["prune"])
    _check_sizes(resolved)
    return resolved


def _yaml_problem(exc: BaseException) -> str:
    """What is wrong with a yaml file and where, in one line without the file's text (yaml's own message quotes the
    offending line)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    text = "".join(c for c in str(problem).splitlines()[0] if c.isprintable()) if str(problem) else type(exc).__name__
    return f"{text[:120]}{where}"


def _check_amount(prune: dict[str, Any]) -> None:
    """How much to prune: the recipe's one amount, else ``DEFAULT_TARGET_MACS``; every prune option is checked by
    ``PruneSettings``, as the command line and the Python API check them."""
    if all(prune[key] is None for key in AMOUNTS) and not prune.get("unit_ratios"):
        prune["target_macs"] = DEFAULT_TARGET_MACS
    try:
        PruneSettings(**prune)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"prune: {exc}") from None


def _check_sizes(recipe: dict[str, Any]) -> None:
    """The image size and ONNX opset, refused now rather than after pruning and fine-tuning."""
    from yoloprune.export.onnx import check_opset
    from yoloprune.images import check_imgsz

    try:
        check_imgsz(recipe["imgsz"])
        check_opset(recipe["export"]["opset"])
    except ValueError as exc:
        raise RecipeError(f"recipe: {exc}") from None


def _check_name(name: str) -> None:
    """The name is the default results folder, ``runs/<name>``: one plain folder name, nothing that leaves runs/."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or PureWindowsPath(name).drive:
        raise RecipeError(f"name must be a single folder name (no '/', '\\', '..' or drive), got {name!r}")


def outputs(recipe: dict[str, Any], out: Path) -> list[Path]:
    """Every file ``run`` writes into ``out``."""
    files = [out / name for name in ("recipe.resolved.yaml", "pruned.pt", "pruned.onnx", "results.json")]
    if recipe["finetune"]["epochs"] > 0:
        files += [out / "finetune" / "weights" / name for name in ("last.pt", "best.pt")]
    return files


def check_outputs(
    recipe: dict[str, Any], out: Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> None:
    """Refuse, before any work, a run whose outputs exist (unless ``overwrite``) or include one of its inputs (the
    recipe's model, ``inputs``; even with ``overwrite``)."""
    from yoloprune.train.recover import check_inputs

    for path in outputs(recipe, out):
        check_output(path, [recipe["model"], *inputs], overwrite)
    if recipe["finetune"]["epochs"] > 0:
        check_inputs(out / "finetune", {"model": recipe["model"]})


def run(
    recipe: dict[str, Any], out: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Prune, fine-tune, evaluate, export and benchmark as the recipe says; returns (and writes) the results.
    Existing outputs in ``out`` are replaced only with ``overwrite``, inputs (the model, ``inputs``) never."""
    from yoloprune.adapters import load_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.export.bench import onnx_latency
    from yoloprune.export.onnx import export_onnx
    from yoloprune.workflows.pipeline import prune_to_file

    start = time.perf_counter()
    out = Path(out)
    check_outputs(recipe, out, overwrite, inputs)
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(recipe, sort_keys=False).encode()
    write_atomic(out / "recipe.resolved.yaml", lambda f: f.write(resolved), overwrite)
    imgsz = recipe["imgsz"]
    loaded = load_model(recipe["model"], recipe["family"])
    settings = PruneSettings(
        **recipe["prune"], latency_imgsz=imgsz, latency_threads=recipe["bench"]["threads"], family=loaded.family
    )
    checkpoint = out / "pruned.pt"
    report = prune_to_file(loaded, imgsz, settings, checkpoint, overwrite=overwrite, recipe=recipe)
    results: dict[str, Any] = {
        "recipe": recipe["name"],
        "prune": {k: v for k, v in report.to_dict().items() if k != "removed"},
    }
    f = recipe["finetune"]
    if f["epochs"] > 0:
        checkpoint = _finetune(recipe, checkpoint, out, loaded.family, overwrite)
        results["finetune"] = str(checkpoint)
    final = load_model(str(checkpoint), loaded.family)
    if recipe["data"]:
        results["eval"] = evaluate(
            final.model, recipe["data"], imgsz=imgsz, batch=f["batch"], family=final.family
        ).to_dict()
    e = recipe["export"]
    onnx = out / "pruned.onnx"
    export_onnx(
        final.model,
        onnx,
        imgsz=imgsz,
        opset=e["opset"],
        dynamic=e["dynamic"],
        simplify=e["simplify"],
        split_convs=e["split_convs"],
        half=e["half"],
        nms=e["nms"],
        family=final.family,
        overwrite=overwrite,
    )
    results["onnx"] = str(onnx)
    b = recipe["bench"]
    results["latency_p50_ms"] = onnx_latency(onnx, imgsz, b["threads"], runs=b["runs"]).p50
    results["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(results, indent=1, default=str).encode()
    write_atomic(out / "results.json", lambda f: f.write(text), overwrite)
    return results


def _finetune(recipe: dict[str, Any], checkpoint: Path, out: Path, family: str, overwrite: bool) -> Path:
    """Recover the pruned checkpoint: with the recipe's labelled data, or (YOLOv5/v7/YOLOX) by distillation on
    ``finetune.images``; the teacher is the recipe's model when ``finetune.teacher`` is true."""
    f = recipe["finetune"]
    teacher = default_teacher(recipe["model"]) if f["teacher"] else None
    if family == "ultralytics":
        if not recipe["data"]:
            raise RecipeError("finetune.epochs > 0 needs data (an ultralytics data yaml)")
        data, extra = recipe["data"], {**({"lr0": f["lr0"]} if f["lr0"] is not None else {}), **f["overrides"]}
    elif f["images"] and teacher:
        data, extra = f["images"], {"lr0": f["lr0"]}  # a folder of images: label-free distillation
    else:
        raise RecipeError(f"{family} models recover by distillation: set finetune.images and finetune.teacher")
    return recover(
        checkpoint,
        data,
        teacher=teacher,
        epochs=f["epochs"],
        kd_weight=f["kd_weight"],
        imgsz=recipe["imgsz"],
        batch=f["batch"],
        device=str(f["device"]),
        workers=f["workers"],
        out=out / "finetune",
        overwrite=overwrite,
        **extra,
    )
