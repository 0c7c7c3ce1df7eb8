"""YOLOv5 (anchor-based, the ``yolov5`` package or a clone of the repository): detection and segmentation models.

Stock classes stay; nothing needs a policy. The Detect head decodes in eval mode with grids it caches as plain lists
of tensors, which are reset before tracing. A checkpoint written here is the train.py/``strip_optimizer`` format
(``{'model': fp16 model, 'ema': None, 'epoch': -1, ...}``), so ``attempt_load``, ``detect.py`` and ``val.py`` read it.
Torch >= 2.6 makes those call ``torch.load`` with ``weights_only=True``, which refuses every YOLOv5 checkpoint, pruned
or not: run them with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (trusted files only).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.adapters import Loaded, Target
from yoloprune.adapters._anchor import (
    anchor_checkpoint,
    anchor_loss,
    anchor_metadata,
    anchor_nms_layout,
    anchor_rebuild,
    raw_maps,
    read_anchor_checkpoint,
)
from yoloprune.adapters.config_check import ConfigError, check_anchor
from yoloprune.adapters.detect import class_names, family_of
from yoloprune.adapters.packages import quiet, require, source
from yoloprune.graph.registry import Policy
from yoloprune.images import Preprocess

PACKAGE = "yolov5"
INSTALL = "pip install 'yoloprune[yolov5]'"
POLICIES: dict[Any, Policy] = {}
FAMILY = "yolov5"
FIXED_PARAMETERS: tuple[str, ...] = ()
PREPROCESS = Preprocess(rgb=True, scale=1 / 255, fill=114)  # letterboxed RGB in [0, 1]
PLAN_KEY = "yoloprune"  # in model.yaml: the composed plan, ignored by YOLOv5's own parser
HEADS = ("Detect", "Segment")
NETWORKS = ("DetectionModel", "SegmentationModel", "Model", "BaseModel")
LOGGERS = ("yolov5", "yolov5.models", "yolov5.utils")


def _yolo() -> Any:
    return require(f"{source(PACKAGE)}models.yolo", "YOLOv5", INSTALL)


def _network(model: Any) -> Any:
    """The DetectionModel: ``AutoShape`` and ``DetectMultiBackend`` wrappers hold it as ``.model``."""
    while type(model).__name__ in ("AutoShape", "DetectMultiBackend") and isinstance(
        getattr(model, "model", None), nn.Module
    ):
        model = model.model
    return model


def _head(net: nn.Module) -> nn.Module | None:
    layers = getattr(net, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers):
        return layers[-1]
    return None


def matches(model: Any) -> bool:
    """YOLOv5 networks, whether their classes come from the package (``yolov5.models.*``) or a clone
    (``models.yolo``/``models.common``), matched by class name and module, never by identity."""
    net = _network(model)
    if not isinstance(net, nn.Module) or type(net).__name__ not in NETWORKS:
        return False
    head = _head(net)
    if head is None or type(head).__name__ not in HEADS or hasattr(type(head), "include_nms"):  # YOLOv7's Detect
        return False
    return family_of(class_names(net)) == "yolov5"


def detections(out: Any) -> Any:
    """The eval-mode outputs that must stay intact: the decoded predictions (and mask protos), not the raw maps."""
    if isinstance(out, tuple):
        kept = tuple(o for o in out if not isinstance(o, list))
        return kept[0] if len(kept) == 1 else kept
    return out


def reset_grids(net: nn.Module) -> None:
    """Drop the grids the head caches (plain lists of tensors that ``to()`` and meta copies do not move)."""
    head = _head(net)
    if head is not None and type(head).__name__ in HEADS and hasattr(head, "nl"):
        if "anchor_grid" in head._buffers:  # checkpoints from YOLOv5 before 6.1 registered it as a buffer
            del head._buffers["anchor_grid"]
        head.grid = [torch.empty(0) for _ in range(head.nl)]
        head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]


def _compat(net: nn.Module) -> nn.Module:
    """Attributes that checkpoints written by older YOLOv5 versions lack (torch's: see ``read_anchor_checkpoint``)."""
    if not hasattr(net, "stride"):
        net.stride = torch.tensor([32.0])
    reset_grids(net)
    return net


def target(model: Any, prune_head: bool = False) -> Target:
    """Prune a YOLOv5 network: backbone and neck; the head's inner layers (Segment's Proto) too with ``prune_head``."""
    net = _network(model)
    head = _head(net)
    if head is None or type(head).__name__ not in HEADS:
        raise ValueError(f"{type(net).__name__} has no YOLOv5 Detect or Segment head (classification is not supported)")
    reset_grids(net)
    ignore: tuple[str, ...] = () if prune_head else (f"model.{len(net.model) - 1}",)
    history = (getattr(net, "yaml", None) or {}).get(PLAN_KEY)

    def record(plan: dict[str, Any]) -> None:
        net.yaml = {**(getattr(net, "yaml", None) or {}), PLAN_KEY: plan}

    return Target("yolov5", net, detections, POLICIES, ignore, history=history, record=record)


# ------------------------------------------------------------------------------------------ loading and saving
def config_path(spec: str) -> Path:
    """A path, or a config name the package ships (``yolov5s.yaml``, ``yolov5n6.yaml``, ``yolov5n-seg.yaml``)."""
    path = Path(spec)
    if path.is_file():
        return path
    root = Path(_yolo().__file__).parent
    for folder in (root, root / "hub", root / "segment"):
        if (folder / path.name).is_file():
            return folder / path.name
    raise FileNotFoundError(f"no such model config: {spec} (not a file, nor a config the yolov5 package ships)")


def from_config(spec: str | dict) -> nn.Module:
    """A network with random weights from a config name or path, or a config dict (as a model's ``.yaml``)."""
    import yaml

    yolo = _yolo()
    if isinstance(spec, dict):
        cfg, name = copy.deepcopy(spec), None
    else:
        path = config_path(spec)
        cfg, name = yaml.safe_load(path.read_text()), path.name
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name or 'this config'}: a model config must be a mapping")
    cfg.pop(PLAN_KEY, None)
    head = str(cfg["head"][-1][2]) if cfg.get("head") else ""
    if head not in HEADS:
        raise ValueError(f"{name or 'this config'}: only YOLOv5 detection and segmentation models are supported")
    check_anchor(cfg, name or "this config", yolo)
    if not cfg.get("activation"):  # parse_model sets this class attribute for good when a config names one
        yolo.Conv.default_act = nn.SiLU()
    with quiet(*LOGGERS):
        net = (yolo.SegmentationModel if head == "Segment" else yolo.DetectionModel)(cfg)
    if name:
        net.yaml_file = name
    return net


def load(spec: str) -> Loaded:
    """A YOLOv5 network from a config (random weights) or a checkpoint (the EMA, else the model, in fp32), with
    the checkpoint's class naming and precision kept for ``save``."""
    if Path(spec).suffix in (".yaml", ".yml"):
        return Loaded(from_config(spec), "yolov5", spec, {"half": True, "bare": False})
    _yolo()
    net, meta, ckpt = read_anchor_checkpoint(spec, PACKAGE, "YOLOv5", matches)
    meta["opt"] = ckpt.get("opt")
    return Loaded(_compat(net), "yolov5", str(spec), meta)


def save(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the checkpoint ``strip_optimizer`` writes, with yoloprune's section (see ``anchor_checkpoint``)."""
    net = copy.deepcopy(_network(loaded.model)).eval()
    reset_grids(net)
    extra = {"opt": loaded.meta.get("opt") or {}, "git": None}
    return anchor_checkpoint(net, loaded.meta, path, section, "yolov5", PACKAGE, extra, overwrite)


def rebuild(section: dict[str, Any]) -> nn.Module:
    """The pruned network from yoloprune's checkpoint section (see ``anchor_rebuild``)."""
    return anchor_rebuild(section, from_config, target, reset_grids)


# ------------------------------------------------------------------------------------------------------ export
def export_module(net: nn.Module, dynamic: bool = False) -> nn.Module:
    """A copy in YOLOv5's own export mode (export.py): Conv+BN fused, the head returning only its decoded
    predictions (and protos), grids rebuilt at every size when ``dynamic``."""
    model = copy.deepcopy(_network(net)).float().eval()
    with torch.no_grad(), quiet(*LOGGERS):
        model = model.fuse() if hasattr(model, "fuse") else model
    head = _head(model)
    reset_grids(model)
    head.export, head.dynamic, head.inplace = True, dynamic, True
    return model


def export_metadata(net: nn.Module, imgsz: int) -> dict[str, Any]:
    """Metadata in the keys ultralytics-style runtimes read (stride, task, names, imgsz)."""
    net = _network(net)
    return anchor_metadata(net, _head(net), imgsz)


def nms_layout(net: nn.Module) -> tuple[str, int]:
    """Export-mode predictions: see ``anchor_nms_layout``."""
    return anchor_nms_layout(net, _head(_network(net)))


def train_loss(net: nn.Module, imgsz: int) -> Any:
    """The family's own detection loss (``ComputeLoss``) on batches of letterboxed images with normalised labels."""
    compute = require(f"{source(PACKAGE)}utils.loss", "YOLOv5", INSTALL).ComputeLoss
    return anchor_loss(_network(net), compute, imgsz)


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The head's raw maps, what distillation compares (see ``yoloprune.train.kd.anchor_kd``)."""
    return raw_maps(out)
