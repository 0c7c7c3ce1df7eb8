"""YOLOX (``pixeltable-yolox``, import name ``yolox``; Megvii's own ``yolox`` package has the same import name and is
recognised too): the YoloxModule/YOLOX network of a CSPDarknet + PAFPN backbone and a decoupled head.

YOLOX checkpoints hold a state_dict only (``{'model': state_dict, ...}``), which cannot describe pruned widths: YOLOX's
own loaders either refuse a pruned state_dict (strict ``load_state_dict``) or, in the fine-tune path ``load_ckpt``,
skip every mismatched tensor and leave those layers random. ``yoloprune.load(path)`` is the way to read a pruned YOLOX
checkpoint: it rebuilds the network from the config and the plan in yoloprune's section. Everything written is
plain data and tensors, so ``torch.load(weights_only=True)`` (YOLOX's ``load_checkpoint``) reads the file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.adapters import Loaded, Target
from yoloprune.adapters.checkpoint import carried_plan, names_dict
from yoloprune.adapters.config_check import check_yolox
from yoloprune.adapters.detect import YOLOX_KEYS, YOLOX_MODELS, YOLOX_ZOO, yolox_name
from yoloprune.adapters.packages import MissingPackage, require
from yoloprune.graph.registry import Policy
from yoloprune.images import Preprocess
from yoloprune.io import load_data, save_atomic

INSTALL = "pip install 'yoloprune[yolox]'"
PLAN_KEY = "yoloprune"  # the attribute (a plain dict: config and plan) the network carries, and the file's section
POLICIES: dict[Any, Policy] = {}
# YOLOX's own evaluation feeds cv2 images as read: BGR, 0..255, padded with 114 (pixeltable-yolox's PIL helper
# feeds RGB, which does not match how the released weights were trained).
FAMILY = "yolox"
FIXED_PARAMETERS: tuple[str, ...] = ()
PREPROCESS = Preprocess(rgb=False, scale=1.0, fill=114)
IN_CHANNELS = [256, 512, 1024]
BACKBONES = ("YOLOPAFPN", "YoloPafpn")
HEADS = ("YOLOXHead", "YoloxHead")


def _network(model: Any) -> Any:
    """The nn.Module: pixeltable's ``Yolox`` wrapper holds it as ``.module``."""
    inner = getattr(model, "module", None)
    if type(model).__name__ == "Yolox" and isinstance(inner, nn.Module):
        return inner
    return model


def _is_yolox(obj: Any, names: tuple[str, ...]) -> bool:
    return type(obj).__name__ in names and type(obj).__module__.split(".")[0] == "yolox"


def matches(model: Any) -> bool:
    """YOLOX networks under Megvii's class names (YOLOX, YOLOPAFPN, YOLOXHead) or pixeltable's (YoloxModule,
    YoloPafpn, YoloxHead), from a module named ``yolox``."""
    net = _network(model)
    return isinstance(net, nn.Module) and _is_yolox(net, YOLOX_MODELS) and _is_yolox(getattr(net, "head", None), HEADS)


def _state(net: nn.Module) -> dict[str, Any]:
    state = net.__dict__.get(PLAN_KEY)
    if not isinstance(state, dict):
        state = {}
        net.__dict__[PLAN_KEY] = state
    return state


def target(model: Any, prune_head: bool = False) -> Target:
    """Prune a YOLOX network: backbone and PAFPN; the head's stems and cls/reg convs too with ``prune_head`` (its
    prediction convs always keep their channels). The config is read off the unpruned network the first time, so a
    pruned one can be saved and rebuilt."""
    net = _network(model)
    if not matches(net):
        raise ValueError(f"{type(net).__name__} is not a YOLOX network")
    state = _state(net)
    if "config" not in state and "plan" not in state:
        found = infer_config(net.state_dict())
        if found is not None:
            state["config"] = found
    ignore: tuple[str, ...] = () if prune_head else ("head",)

    def record(plan: dict[str, Any]) -> None:
        state["plan"] = plan

    return Target("yolox", net, None, POLICIES, ignore, history=state.get("plan"), record=record)


# ------------------------------------------------------------------------------------------ building and configs
def _classes() -> tuple[type, type, type]:
    models = require("yolox.models", "YOLOX", INSTALL)
    if hasattr(models, "YoloxModule"):
        return models.YoloxModule, models.YoloPafpn, models.YoloxHead
    if hasattr(models, "YOLOX"):
        return models.YOLOX, models.YOLOPAFPN, models.YOLOXHead
    raise MissingPackage(f"the installed yolox package has neither YoloxModule nor YOLOX: {INSTALL}")


def config_for(name: str, num_classes: int = 80) -> dict[str, Any]:
    depth, width, depthwise = YOLOX_ZOO[name]
    return {
        "name": name,
        "num_classes": num_classes,
        "depth": depth,
        "width": width,
        "depthwise": depthwise,
        "act": "silu",
    }


def build(config: dict[str, Any]) -> nn.Module:
    """A network with random weights (initialised as YOLOX's ``get_model`` does) from a config dict."""
    check_yolox(config, "this YOLOX config")
    module, pafpn, head = _classes()
    kw = {"in_channels": IN_CHANNELS, "depthwise": bool(config["depthwise"]), "act": config.get("act", "silu")}
    net = module(
        pafpn(config["depth"], config["width"], **kw),
        head(int(config["num_classes"]), config["width"], **kw),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
    if not net.head.cls_preds[0].weight.is_meta:
        net.head.initialize_biases(1e-2)
    _state(net)["config"] = dict(config)
    return net


def from_config(spec: str | dict[str, Any]) -> nn.Module:
    """A network with random weights from a zoo name (``yolox-s``) or a config dict."""
    if isinstance(spec, dict):
        return build(spec)
    name = yolox_name(spec)
    if name is None:
        known = ", ".join(n.replace("_", "-") for n in YOLOX_ZOO)
        raise FileNotFoundError(f"no such YOLOX model: {spec} (known: {known})")
    return build(config_for(name))


def infer_config(state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The config of an unpruned YOLOX state_dict, from its shapes (zoo scales first, then any depth and width);
    None when no config reproduces every shape. The activation cannot be seen and is taken to be SiLU."""
    if not all(k in state for k in YOLOX_KEYS):
        return None
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    num_classes = shapes["head.cls_preds.0.weight"][0]
    depthwise = any(".dconv." in k for k in shapes)
    base = shapes["backbone.backbone.stem.conv.conv.weight"][0]
    depth = len({k.split(".")[5] for k in shapes if k.startswith("backbone.backbone.dark2.1.m.")})
    candidates = [config_for(n, num_classes) for n, (_, _, dw) in YOLOX_ZOO.items() if dw == depthwise]
    for width in {base / 64, shapes["head.stems.0.conv.weight"][0] / 256}:
        candidates.append(
            {"name": "custom", "num_classes": num_classes, "depth": depth / 3, "width": width, "depthwise": depthwise}
        )
    for config in candidates:
        with torch.device("meta"):
            net = build({**config, "act": "silu"})
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
            return {**config, "act": "silu"}
    return None


# ------------------------------------------------------------------------------------------ loading and saving
def load(spec: str) -> Loaded:
    """A YOLOX network from a zoo name (random weights), a checkpoint of YOLOX's trainer or a plain state_dict (its
    config read off the shapes), or a checkpoint yoloprune wrote (rebuilt from its plan). Only tensors and plain
    data are read from files."""
    if yolox_name(spec) is not None and not Path(spec).is_file():
        net = from_config(spec)
        return Loaded(net, "yolox", spec, {})
    data = load_data(spec)
    section = data.get(PLAN_KEY)
    if isinstance(section, dict) and "plan" in section:
        meta = {"pruning": {k: section[k] for k in ("version", "settings", "report") if k in section}}
        return Loaded(rebuild(section), "yolox", str(spec), meta)
    state = next((data[k] for k in ("model", "ema", "state_dict") if isinstance(data.get(k), dict)), data)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    config = infer_config(state)
    if config is None:
        raise ValueError(f"{spec} is not a YOLOX checkpoint whose config can be read off its shapes; pass --family")
    net = build(config)
    net.load_state_dict(state, strict=True)
    return Loaded(net, "yolox", str(spec), {})


def save(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the checkpoint YOLOX's trainer writes (``{'model': state_dict, 'start_epoch', ...}``, fp32) plus
    yoloprune's section: the plan and the config it replays onto (the state_dict is stored once)."""
    net = _network(loaded.model)
    state = _state(net)
    if "config" not in state:
        raise ValueError("this YOLOX network does not say which config it was built from; build it with yoloprune")
    weights = {k: v.detach().float() for k, v in net.state_dict().items()}
    ckpt = {
        "start_epoch": 0,
        "model": weights,
        "optimizer": None,
        "best_ap": 0.0,
        "curr_ap": 0.0,
        PLAN_KEY: {
            **carried_plan(state, "plan"),
            **section,
            "family": "yolox",
            "config": dict(state["config"]),
            "names": names_dict(state.get("names")),
            "state_dict": weights,
        },
    }
    return save_atomic(ckpt, path, overwrite)


def rebuild(section: dict[str, Any]) -> nn.Module:
    """The pruned network from yoloprune's section: the config, the plan replayed onto it (traced with decoding off,
    which changes no channel), the saved state_dict loaded strictly."""
    from yoloprune.graph.plan import rebuild as replay_section

    def unpruned(config: Any) -> nn.Module:
        net = build(config)
        net.head.decode_in_inference = False
        return net

    from yoloprune.adapters.heads import replayer

    net, _ = replay_section(section, unpruned, target, replayer(section["plan"], set_classes))
    net.head.decode_in_inference = True
    if section.get("names"):
        _state(net)["names"] = dict(section["names"])
    return net.eval()


def classes(net: nn.Module) -> int:
    """How many classes the head predicts."""
    return int(_network(net).head.num_classes)


def set_classes(net: nn.Module, nc: int, names: Sequence[str] | None = None) -> None:
    """Give the head ``nc`` fresh class predictions (named ``names``), started as YOLOX starts them
    (``initialize_biases(1e-2)``); the regression and objectness branches are kept. The count is recorded in the
    plan (``yoloprune.load`` replays it)."""
    import math

    from yoloprune.adapters.heads import check_classes, record_classes, remap_rows

    nc, net = check_classes(nc), _network(net)
    head = net.head
    if names is not None:
        _state(net)["names"] = dict(enumerate(names))
    if int(head.num_classes) == nc:
        return
    prior = -math.log((1 - 1e-2) / 1e-2)
    for i, layer in enumerate(head.cls_preds):
        head.cls_preds[i] = remap_rows(layer, [None] * nc, prior)
    head.num_classes = nc
    if names is None:
        _state(net).pop("names", None)
    record_classes(target(net, prune_head=True), nc)


# ------------------------------------------------------------------------------------------------------ export
def export_module(net: nn.Module, dynamic: bool = False, end2end: bool = False) -> nn.Module:
    """A copy in YOLOX's deploy mode with decoding in the graph: one (B, N, 5 + nc) tensor of xywh boxes in
    pixels, objectness and class scores (YOLOX's exporter leaves decoding out unless ``--decode_in_inference``).
    No NMS-free head: ``end2end`` is refused."""
    if end2end:
        raise ValueError("YOLOX has no NMS-free head; export without --end2end (--nms embeds NMS)")
    model = copy.deepcopy(_network(net)).float().eval()
    model.head.decode_in_inference = True
    return model


def export_metadata(net: nn.Module, imgsz: int) -> dict[str, Any]:
    net = _network(net)
    nc = int(net.head.num_classes)
    names = names_dict(_state(net).get("names"))
    if not names and nc == 80:
        try:
            from yolox.data.datasets import COCO_CLASSES

            names = names_dict(list(COCO_CLASSES))
        except ImportError:
            names = {}
    return {
        "description": "pruned with yoloprune",
        "stride": int(max(net.head.strides)),
        "task": "detect",
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": names or {i: str(i) for i in range(nc)},
    }


def nms_layout(net: nn.Module) -> tuple[str, int]:
    """Decoded predictions are (B, N, 5 + nc): xywh, objectness and class scores (both after sigmoid)."""
    return "xywh-obj-class", int(_network(net).head.num_classes)


def train_loss(net: nn.Module, imgsz: int) -> Any:
    """YOLOX's own loss, computed by its head in training mode from targets (B, max_labels, 5) of class and
    xywh in pixels."""
    model = _network(net)

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = batch["img"]
        counts = torch.bincount(batch["batch_idx"].long(), minlength=images.shape[0])
        targets = torch.zeros(images.shape[0], max(int(counts.max()) if counts.numel() else 0, 1), 5)
        slot = torch.zeros(images.shape[0], dtype=torch.long)
        for i, cls, box in zip(
            batch["batch_idx"].long().tolist(), batch["cls"][:, 0].tolist(), (batch["bboxes"] * imgsz).tolist()
        ):
            targets[i, slot[i]] = torch.tensor([cls, *box])
            slot[i] += 1
        return model(images, targets.to(images.device))["total_loss"]

    return loss


def raw_outputs(out: Any) -> None:
    """Decoded predictions are not written in place here: distillation reads them, not raw maps."""
    return None
