"""Recognising a model's family from what a file or an object names, without building anything."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

# Class names that exist in YOLOv7's model modules and not in YOLOv5's (both define Conv, Concat, Detect, Model...).
YOLOV7_ONLY = frozenset(
    "BottleneckCSPA BottleneckCSPB BottleneckCSPC Chuncat ConvBN DownC Foldcut Ghost GhostCSPA GhostCSPB GhostCSPC "
    "GhostSPPCSPC GhostStem IAuxDetect IBin IDetect IKeypoint ImplicitA ImplicitM MP Mlp_v2 OREPA_3x3_RepConv ReOrg "
    "RepBottleneck RepBottleneckCSPA RepBottleneckCSPB RepBottleneckCSPC RepConv RepConv_OREPA RepRes RepResCSPA "
    "RepResCSPB RepResCSPC RepResX RepResXCSPA RepResXCSPB RepResXCSPC Res ResCSPA ResCSPB ResCSPC ResX ResXCSPA "
    "ResXCSPB ResXCSPC RobustConv RobustConv2 SP SPPCSPC ST2CSPA ST2CSPB ST2CSPC STCSPA STCSPB STCSPC Shortcut Stem "
    "SwinTransformer2Block SwinTransformerBlock SwinTransformerLayer SwinTransformerLayer_v2 WindowAttention_v2 "
    "autoShape".split()
)
YOLOV7_PREFIXES = ("yolov7.", "yolov7_package.")
YOLOV5_PREFIXES = ("yolov5.",)
YOLOX_PREFIXES = ("yolox.",)
# The YOLOX network classes: Megvii's name, then pixeltable-yolox's (same attributes, so the same state_dict keys).
YOLOX_MODELS = ("YOLOX", "YoloxModule")
YOLOX_KEYS = ("backbone.backbone.stem.conv.conv.weight", "head.cls_preds.0.weight")


# YOLOX zoo names: depth, width, depthwise
YOLOX_ZOO = {
    "yolox_nano": (0.33, 0.25, True),
    "yolox_tiny": (0.33, 0.375, False),
    "yolox_s": (0.33, 0.50, False),
    "yolox_m": (0.67, 0.75, False),
    "yolox_l": (1.0, 1.0, False),
    "yolox_x": (1.33, 1.25, False),
}


def yolox_name(spec: str) -> str | None:
    """The YOLOX zoo name a spec means (``yolox-s``, ``yolox_s``, ``yolox-nano``...), or None."""
    key = Path(spec).name.lower().replace("-", "_")
    return key if key in YOLOX_ZOO else None


def class_names(model: nn.Module) -> list[tuple[str, str]]:
    """(module, name) of the class of every submodule."""
    return [(type(m).__module__, type(m).__name__) for m in model.modules()]


def family_of(classes: Iterable[tuple[str, str]]) -> str | None:
    """The repository-style family that (module, name) class references point to, or None."""
    classes = list(classes)
    modules = {m for m, _ in classes}
    if any(m.startswith(YOLOV7_PREFIXES) for m in modules):
        return "yolov7"
    if any(m.startswith(YOLOV5_PREFIXES) for m in modules):
        return "yolov5"
    bare = {n for m, n in classes if m.split(".")[0] == "models"}
    if bare:
        return "yolov7" if bare & YOLOV7_ONLY else "yolov5"
    if any(m.startswith(YOLOX_PREFIXES) for m in modules):
        return "yolox"
    return None


def peek(path: str | Path) -> tuple[Any, list[tuple[str, str]]]:
    """The plain data of a checkpoint (tensors left out) and the classes it names, read with
    ``yoloprune.unpickle`` in names-only mode (nothing imported or created); (None, []) if it is unreadable."""
    from yoloprune.unpickle import names_in

    try:
        data, names = names_in(path)
    except Exception:  # not a zip checkpoint, or not a checkpoint at all: the family's own loader explains
        return None, []
    return data, [tuple(n.rsplit(".", 1)) for n in names if "." in n]  # type: ignore[misc]


def guess_family(spec: str) -> str | None:
    """The family a model file belongs to, from what it contains; None when it does not say (ultralytics' loader
    then decides, and explains when it cannot read the file)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        return _config_family(path) if path.is_file() else None
    if not path.is_file():
        return "yolox" if yolox_name(spec) else None
    data, classes = peek(path)
    section = data.get("yoloprune") if isinstance(data, dict) else None
    if isinstance(section, dict) and "family" in section:
        from yoloprune.adapters import section_family

        return section_family(section, path)
    if any(m.startswith("ultralytics.") for m, _ in classes):
        return "ultralytics"
    found = family_of(classes)
    if found is not None or not isinstance(data, dict):
        return found
    states = [data, *(data[k] for k in ("model", "ema", "state_dict") if isinstance(data.get(k), dict))]
    return "yolox" if any(all(k in s for k in YOLOX_KEYS) for s in states) else None


def _config_family(path: Path) -> str | None:
    """YOLOv5 and YOLOv7 configs list anchors; ultralytics configs never do."""
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or "anchors" not in cfg or not isinstance(cfg.get("head"), list):
        return None
    layers = [*(cfg.get("backbone") or []), *cfg["head"]]
    used = {str(layer[2]) for layer in layers if isinstance(layer, list) and len(layer) > 2}
    return "yolov7" if used & YOLOV7_ONLY else "yolov5"
