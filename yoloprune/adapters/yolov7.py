"""YOLOv7 (WongKinYiu/yolov7; the ``yolov7detect`` package, import name ``yolov7``): Detect, IDetect, IAuxDetect heads.

RepConv stores its channel counts and builds its identity kernel from them when it is re-parameterised, so a fixup
keeps them current. The heads cache grids as plain lists of tensors, which are reset before tracing. No yolov7
package ships model configs: pass the path of one (``cfg/training/yolov7-tiny.yaml`` in a clone). A checkpoint written
here is the train.py/``strip_optimizer`` format (fp16 model, frozen parameters), which the repository's
``attempt_load`` reads; on torch >= 2.6 run it with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (trusted files only), as for
any YOLOv7 checkpoint.
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
from yoloprune.graph.registry import FixupContext, Policy
from yoloprune.images import Preprocess

PACKAGE = "yolov7"
INSTALL = "pip install 'yoloprune[yolov7]' && pip install --no-deps yolov7detect"
PLAN_KEY = "yoloprune"  # in model.yaml: the composed plan, ignored by YOLOv7's own parser
HEADS = ("Detect", "IDetect", "IAuxDetect", "IBin", "IKeypoint")
LOGGERS = ("yolov7", "yolov7.models", "yolov7.utils", "models", "utils")
FAMILY = "yolov7"
FIXED_PARAMETERS: tuple[str, ...] = ()
PREPROCESS = Preprocess(rgb=True, scale=1 / 255, fill=114)  # letterboxed RGB in [0, 1]


def _repconv(module: nn.Module, context: FixupContext) -> None:
    """RepConv builds its identity kernel from ``in_channels`` when it fuses; keep both counts current."""
    conv = getattr(module, "rbr_reparam", None)
    if not isinstance(conv, nn.Conv2d):
        conv = module.rbr_dense[0] if isinstance(module.rbr_dense, nn.Sequential) else module.rbr_dense
    module.in_channels, module.out_channels = conv.in_channels, conv.out_channels
    if hasattr(module, "id_tensor"):
        del module.id_tensor


def _implicit(module: nn.Module, context: FixupContext) -> None:
    module.channel = module.implicit.shape[1]


POLICIES: dict[Any, Policy] = {
    "RepConv": Policy(fixup=_repconv),
    "ImplicitA": Policy(fixup=_implicit),
    "ImplicitM": Policy(fixup=_implicit),
}


def _yolo() -> Any:
    return require(f"{source(PACKAGE)}models.yolo", "YOLOv7", INSTALL)


def _network(model: Any) -> nn.Module:
    """The Model: ``autoShape`` wrappers hold it as ``.model``."""
    while type(model).__name__ == "autoShape" and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model
    return model


def _head(net: nn.Module) -> nn.Module | None:
    layers = getattr(net, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers):
        return layers[-1]
    return None


def matches(model: Any) -> bool:
    """YOLOv7 networks, from a package (``yolov7.models.*``) or a clone (``models.yolo``/``models.common``)."""
    net = _network(model)
    if not isinstance(net, nn.Module) or type(net).__name__ != "Model":
        return False
    head = _head(net)
    if head is None or type(head).__name__ not in HEADS:
        return False
    return hasattr(type(head), "include_nms") or family_of(class_names(net)) == "yolov7"


def detections(out: Any) -> Any:
    """The eval-mode outputs that must stay intact: the decoded predictions, not the raw maps."""
    if isinstance(out, tuple):
        kept = tuple(o for o in out if not isinstance(o, list))
        return kept[0] if len(kept) == 1 else kept
    return out


def reset_grids(net: nn.Module) -> None:
    """Drop the grids the head caches (a plain list of tensors that ``to()`` and meta copies do not move)."""
    head = _head(net)
    if head is not None and isinstance(getattr(head, "grid", None), list):
        head.grid = [torch.zeros(1) for _ in range(head.nl)]


def target(model: Any, prune_head: bool = False) -> Target:
    """Prune a YOLOv7 network: backbone and neck (the head's ImplicitA follows its input); with ``prune_head``
    nothing more is prunable, since the head holds only its output convolutions."""
    net = _network(model)
    head = _head(net)
    if head is None or type(head).__name__ not in HEADS:
        raise ValueError(f"{type(net).__name__} has no YOLOv7 detection head")
    reset_grids(net)
    ignore: tuple[str, ...] = () if prune_head else (f"model.{len(net.model) - 1}",)
    history = (getattr(net, "yaml", None) or {}).get(PLAN_KEY)

    def record(plan: dict[str, Any]) -> None:
        net.yaml = {**(getattr(net, "yaml", None) or {}), PLAN_KEY: plan}

    return Target("yolov7", net, detections, POLICIES, ignore, history=history, record=record)


# ------------------------------------------------------------------------------------------ loading and saving
def from_config(spec: str | dict) -> nn.Module:
    """A network with random weights from a config file or dict (as a model's ``.yaml``)."""
    import yaml

    yolo = _yolo()
    if isinstance(spec, dict):
        cfg, name = copy.deepcopy(spec), None
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"no such model config: {spec}. The yolov7 packages ship no configs: pass the path of one "
                "(cfg/training/yolov7-tiny.yaml in a clone of WongKinYiu/yolov7)"
            )
        cfg, name = yaml.safe_load(path.read_text()), path.name
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name or 'this config'}: a model config must be a mapping")
    cfg.pop(PLAN_KEY, None)
    head = str(cfg["head"][-1][2]) if cfg.get("head") else ""
    if head not in HEADS:
        raise ValueError(f"{name or 'this config'}: only YOLOv7 detection models are supported (head {head!r})")
    check_anchor(cfg, name or "this config", yolo)
    with quiet(*LOGGERS):
        net = yolo.Model(cfg)
    if name:
        net.yaml_file = name
    return net


def load(spec: str) -> Loaded:
    """A YOLOv7 network from a config file (random weights) or a checkpoint (the EMA, else the model, in fp32),
    with the checkpoint's class naming and precision kept for ``save``."""
    if Path(spec).suffix in (".yaml", ".yml"):
        return Loaded(from_config(spec), "yolov7", spec, {"half": True, "bare": False})
    _yolo()
    net, meta, _ = read_anchor_checkpoint(spec, PACKAGE, "YOLOv7", matches)
    return Loaded(net, "yolov7", str(spec), meta)


def save(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the checkpoint ``strip_optimizer`` writes (frozen parameters, which ``attempt_load``'s fuse outside
    ``no_grad`` needs), with yoloprune's section (see ``anchor_checkpoint``)."""
    net = copy.deepcopy(_network(loaded.model)).eval()
    reset_grids(net)
    extra = {"training_results": None, "wandb_id": None}
    return anchor_checkpoint(net, loaded.meta, path, section, "yolov7", PACKAGE, extra, overwrite)


def rebuild(section: dict[str, Any]) -> nn.Module:
    """The pruned network from yoloprune's checkpoint section (see ``anchor_rebuild``)."""
    return anchor_rebuild(section, from_config, target, reset_grids)


# ------------------------------------------------------------------------------------------------------ export
def export_module(net: nn.Module, dynamic: bool = False) -> nn.Module:
    """A copy in YOLOv7's export mode (export.py ``--grid``): RepConv re-parameterised, Conv+BN and the implicit
    layers fused, the head returning one decoded (B, N, 5 + nc) tensor. The head rebuilds its cached grid whenever
    the input size changes (a dynamic export checked at a second size matched PyTorch)."""
    model = copy.deepcopy(_network(net)).float().eval()
    with torch.no_grad(), quiet(*LOGGERS):
        model = model.fuse() if hasattr(model, "fuse") else model
    head = _head(model)
    reset_grids(model)
    head.concat, head.export, head.end2end, head.include_nms = True, False, False, False
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
    compute = require(f"{source(PACKAGE)}utils.loss", "YOLOv7", INSTALL).ComputeLoss
    return anchor_loss(_network(net), compute, imgsz)


def raw_outputs(out: Any) -> list[torch.Tensor]:
    """The head's raw maps, what distillation compares (see ``yoloprune.train.kd.anchor_kd``)."""
    return raw_maps(out)
