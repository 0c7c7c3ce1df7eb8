"""Ultralytics detectors (YOLOv3u/v5u/v6/v8/v9/v10/11/12/26): what the generic graph needs to know about them.

Stock classes stay: blocks whose forward splits channels with sizes kept in an attribute get a fixup that updates the
attribute; attention blocks, whose forward reshapes values back to the input's channel count, keep their channels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.adapters import Loaded, Target
from yoloprune.adapters.checkpoint import carried_plan
from yoloprune.adapters.config_check import ConfigError, building, check_ultralytics
from yoloprune.graph.registry import FixupContext, Policy
from yoloprune.images import Preprocess
from yoloprune.io import load_checkpoint, save_atomic


def _half_of_cv1(module: nn.Module, context: FixupContext) -> None:
    """Blocks with ``self.c`` = half of ``cv1``'s output channels (C2f and kin, ELAN, PSA)."""
    module.c = module.cv1.conv.out_channels // 2


def _cblinear(module: nn.Module, context: FixupContext) -> None:
    if context.splits:
        module.c2s = list(context.splits[0])


POLICIES: dict[Any, Policy] = {
    "C2f": Policy(fixup=_half_of_cv1),  # also C3k2, C2fCIB, C2fPSA (subclasses)
    "C2fAttn": Policy(fixup=_half_of_cv1),
    "RepNCSPELAN4": Policy(fixup=_half_of_cv1),  # also ELAN1
    "PSA": Policy(splits="equal", fixup=_half_of_cv1),
    "C2PSA": Policy(splits="equal", fixup=_half_of_cv1),
    "CBLinear": Policy(splits="free", fixup=_cblinear),
    "Attention": Policy(frozen_io=True),
    "AAttn": Policy(frozen_io=True),
}

FIXED_PARAMETERS = (".dfl.",)  # the DFL projection is a fixed arange, never trained
FAMILY = "ultralytics"
PREPROCESS = Preprocess(rgb=True, scale=1 / 255, fill=114)  # letterboxed RGB in [0, 1]
HEADS = ("Detect", "Segment", "Pose", "OBB", "Classify", "v10Detect", "WorldDetect", "YOLOEDetect", "RTDETRDecoder")


def _is_ultralytics(obj: Any) -> bool:
    return any(c.__module__.startswith("ultralytics.") for c in type(obj).__mro__)


def matches(model: Any) -> bool:
    """Ultralytics ``YOLO`` objects and the ``BaseModel`` networks inside them."""
    return _is_ultralytics(model)


def _network(model: Any) -> nn.Module:
    """The ``BaseModel`` network: ``YOLO`` objects hold it as ``.model``."""
    if any(c.__module__ == "ultralytics.engine.model" for c in type(model).__mro__):
        model = model.model
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(model).__name__} holds no ultralytics network")
    return model


def detections(out: Any) -> Any:
    """The eval-mode outputs that must stay intact: the decoded predictions, not the head's input features."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], dict):
        return out[0]
    return out


def head_names(net: nn.Module) -> list[str]:
    """Qualified names of the detection heads among the network's top-level layers."""
    layers = getattr(net, "model", None)
    if not isinstance(layers, nn.Sequential):
        return []
    return [f"model.{i}" for i, m in enumerate(layers) if any(c.__name__ in HEADS for c in type(m).__mro__)]


def target(model: Any, prune_head: bool = False) -> Target:
    """Prune an ultralytics network: backbone and neck; the head's inner stems too with ``prune_head``."""
    net = _network(model)
    _check_supported(net)
    heads = head_names(net)
    ignore: tuple[str, ...] = () if prune_head else tuple(heads)
    history = (getattr(net, "yaml", None) or {}).get(PLAN_KEY)

    def record(plan: dict[str, Any]) -> None:
        net.yaml = {**(getattr(net, "yaml", None) or {}), PLAN_KEY: plan}

    return Target("ultralytics", net, detections, POLICIES, ignore, history=history, record=record)


# ------------------------------------------------------------------------------------------ loading and saving
PLAN_KEY = "yoloprune"  # in model.yaml: the composed plan, ignored by ultralytics' own parser
TASK_MODELS = {
    "detect": "DetectionModel",
    "segment": "SegmentationModel",
    "pose": "PoseModel",
    "obb": "OBBModel",
    "classify": "ClassificationModel",
}
UNSUPPORTED = ("World", "YOLOE", "RTDETR")
GUARD = (
    "yoloprune: this network is pruned, and training it from its yaml (YOLO(...).train, yolo train) would rebuild "
    "the unpruned network; fine-tune it with `yoloprune finetune MODEL --data DATA` instead"
)
"""What a pruned network's first layer is named in the checkpoints yoloprune writes. Stock ultralytics loads, predicts,
validates and exports the pickled network as it is, but its trainer rebuilds the network from ``model.yaml``: that
stops there at once, with this sentence as the error, instead of silently training the unpruned network."""
GUARD_KEY = "yoloprune_layer"  # in a guarded model.yaml: the first layer's real name


def guarded(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (a model.yaml dict) with the stock-trainer guard, when it carries a pruning plan."""
    backbone = cfg.get("backbone")
    if PLAN_KEY not in cfg or not backbone or backbone[0][2] == GUARD:
        return cfg
    first = list(backbone[0])
    name, first[2] = first[2], GUARD
    return {**cfg, "backbone": [first, *backbone[1:]], GUARD_KEY: name}


def unguarded(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the stock-trainer guard (the first layer's real name back)."""
    backbone = cfg.get("backbone")
    if not isinstance(backbone, list) or not backbone or not isinstance(backbone[0], (list, tuple)):
        return cfg
    if len(backbone[0]) != 4 or backbone[0][2] != GUARD:
        return cfg
    name = cfg.get(GUARD_KEY)
    if not isinstance(name, str):
        raise ValueError("a guarded model.yaml without its first layer's name")
    first = list(backbone[0])
    first[2] = name
    return {**{k: v for k, v in cfg.items() if k != GUARD_KEY}, "backbone": [first, *backbone[1:]]}


def unguard(net: nn.Module) -> nn.Module:
    """``net`` with the guard taken off its ``yaml`` (in place), as yoloprune works on it."""
    if isinstance(getattr(net, "yaml", None), dict):
        net.yaml = unguarded(net.yaml)
    return net


def guard(net: nn.Module) -> nn.Module:
    """``net`` with the guard put on its ``yaml`` (in place) when it is pruned, before it is written for others."""
    if isinstance(getattr(net, "yaml", None), dict):
        net.yaml = guarded(net.yaml)
    return net


def _check_supported(net: nn.Module) -> None:
    name = type(net).__name__
    if any(word in name for word in UNSUPPORTED):
        raise ValueError(f"{name} models (open-vocabulary or transformer-decoder) are not supported yet")


def from_config(spec: str | dict) -> nn.Module:
    """A network with random weights from a config name or path (``yolov8s.yaml``: the scale comes from the name)
    or a config dict."""
    from ultralytics.nn import tasks

    if isinstance(spec, dict):
        cfg = copy.deepcopy(unguarded(spec))
    else:
        try:
            cfg = tasks.yaml_model_load(spec)
        except (FileNotFoundError, OSError) as exc:
            raise FileNotFoundError(f"no such model config: {spec}") from exc
        except Exception as exc:  # YAML syntax, or a file that is no mapping: the reader's own error
            raise ConfigError(f"{spec}: not a readable model config ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{spec if isinstance(spec, str) else 'this config'}: a model config must be a mapping")
    cfg.pop(PLAN_KEY, None)
    name = str(cfg.get("yaml_file", spec if isinstance(spec, str) else ""))[:200]
    where = name or "this config"
    check_ultralytics(cfg, where)
    if any(word in name.lower() for word in ("world", "yoloe", "rtdetr")):
        raise ValueError(f"{Path(name).name}: open-vocabulary and RT-DETR models are not supported yet")
    with building(where, "ultralytics"):
        task = tasks.guess_model_task(cfg)
        if task not in TASK_MODELS:
            raise ConfigError(f"{where}: {task} models are not supported yet")
        return getattr(tasks, TASK_MODELS[task])(cfg, verbose=False)


def load(spec: str) -> Loaded:
    """An ultralytics network from a config (random weights) or a checkpoint (the trainer's EMA, else its model,
    converted to fp32; through ``yoloprune.io.load_checkpoint``)."""
    if Path(spec).suffix in (".yaml", ".yml"):
        return Loaded(from_config(spec), "ultralytics", spec, {"train_args": {}})
    ckpt = load_checkpoint(spec)
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module) or not _is_ultralytics(net):
        kind = type(net).__name__ if net is not None else type(ckpt).__name__
        raise ValueError(f"{spec} is not an ultralytics checkpoint (its model is a {kind}); pass --family")
    _check_supported(net)
    net = unguard(net.float())
    check_stored_config(net, spec)
    meta = {"train_args": _plain_settings(ckpt.get("train_args"))}
    section = ckpt.get(PLAN_KEY)
    if isinstance(section, dict):
        meta["pruning"] = {k: section[k] for k in ("version", "settings", "report") if k in section}
    return Loaded(net, "ultralytics", str(spec), meta)


def check_stored_config(net: nn.Module, spec: Any) -> None:
    """The config a checkpoint's network carries (``model.yaml``) is what ``save`` writes into yoloprune's section and
    ``yoloprune.load`` rebuilds from: it is checked when the file is read, so a file whose config ``yoloprune.load``
    would refuse is refused before any work, not written pruned."""
    cfg = getattr(net, "yaml", None)
    if cfg is not None:
        cfg = unguarded(cfg) if isinstance(cfg, dict) else cfg
        check_ultralytics(
            {k: v for k, v in cfg.items() if k != PLAN_KEY} if isinstance(cfg, dict) else cfg, f"{spec}: its model.yaml"
        )


def _plain_settings(args: Any) -> dict[str, Any]:
    """The trainer settings a checkpoint carries, kept only where plain (a number, string, boolean, None or a flat
    list of those): all ultralytics writes, and nothing a crafted file nests thousands deep is copied into outputs."""
    plain = (str, int, float, bool, type(None))
    return {
        str(k): v
        for k, v in (args.items() if isinstance(args, dict) else ())
        if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v))
    }


def save(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write an ultralytics checkpoint that stock ``YOLO(path)`` loads: fp16 as ``yolo train`` leaves its weights
    (fp32 with ``loaded.meta["half"]`` False, for training to continue from), a pruned one guarded against stock
    training (``GUARD``), plus yoloprune's section (plan,
    settings, the original config and a state_dict sharing the model's storage, so it costs no extra space)."""
    import ultralytics

    net = unguard(copy.deepcopy(loaded.model).float().eval())
    config = {k: v for k, v in (getattr(net, "yaml", None) or {}).items() if k != PLAN_KEY}
    guard(net)
    if loaded.meta.get("half", True):
        net = net.half()
    ckpt = {
        "date": datetime.now().isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "epoch": -1,
        "best_fitness": None,
        "model": net,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": loaded.meta.get("train_args", {}),
        "train_metrics": None,
        "train_results": None,
        PLAN_KEY: {
            **carried_plan(getattr(net, "yaml", None), PLAN_KEY),
            **section,
            "family": "ultralytics",
            "config": config,
            "names": dict(getattr(net, "names", {}) or {}),
            "state_dict": net.state_dict(),
        },
    }
    return save_atomic(ckpt, path, overwrite)


def rebuild(section: dict[str, Any]) -> nn.Module:
    """The pruned network from yoloprune's checkpoint section: the original config, the plan replayed onto it, the
    saved state_dict loaded strictly. No pickled module is used."""
    from yoloprune.adapters.heads import replayer
    from yoloprune.graph.plan import rebuild as replay_section

    net, _ = replay_section(section, from_config, target, replayer(section["plan"], set_classes))
    net.names = section.get("names") or getattr(net, "names", None)
    return net.eval()


# ------------------------------------------------------------------------------------------------------ export
class BinAxisDFL(nn.Module):
    """ultralytics' DFL (a box side's expected distance over ``c1`` bins), computed on the axis the bins already lie
    on: softmax over axis 2 of (B, 4, c1, A), then the bins' weighted sum. DFL itself moves the bins to axis 1 first
    and sums them with a 1x1 convolution; the transpose alone made it take about 10x longer in onnxruntime here.
    Equal to it to float rounding. From ONNX opset 13: below it the exporter transposes around any softmax off the
    last axis."""

    def __init__(self, dfl: nn.Module) -> None:
        super().__init__()
        self.c1 = dfl.c1
        self.register_buffer("weight", dfl.conv.weight.detach().reshape(1, 1, -1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return (x.view(b, 4, self.c1, a).softmax(2) * self.weight).sum(2)


def export_module(net: nn.Module, dynamic: bool = False, end2end: bool = False) -> nn.Module:
    """A copy in ultralytics' own ONNX export mode: Conv+BN fused, heads returning only their predictions, C2f-style
    blocks on ``forward_split`` (which reads the ``c`` the fixups keep current). The dense one-to-many predictions
    by default, as ``yolo export`` writes them; with ``end2end`` the NMS-free one-to-one head's (B, 300, 6)
    detections (YOLO26, YOLOv10: ``yolo export nms=False``). The DFL is computed without its transpose
    (``BinAxisDFL``)."""
    model = copy.deepcopy(net).float().eval()
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if end2end:
        if getattr(head, "one2one_cv2", None) is None:
            raise ValueError(f"{type(head).__name__} has no NMS-free one-to-one head (YOLO26 and YOLOv10 have)")
        head.end2end = True
    elif head is not None and hasattr(type(head), "end2end"):
        head.end2end = False
    if hasattr(model, "fuse"):
        model = model.fuse(verbose=False)
    for m in model.modules():
        names = {c.__name__ for c in type(m).__mro__}
        if names & set(HEADS):
            m.export, m.format, m.dynamic = True, "onnx", dynamic
        elif "C2f" in names or "RepNCSPELAN4" in names:
            m.forward = m.forward_split
    for m in list(model.modules()):
        for name, child in m.named_children():
            if type(child).__name__ == "DFL":
                setattr(m, name, BinAxisDFL(child))
    return model


def export_metadata(net: nn.Module, imgsz: int) -> dict[str, Any]:
    """Metadata in the keys ultralytics' own runtime reads from an ONNX file (names, stride, task, imgsz)."""
    from ultralytics.nn.tasks import guess_model_task

    stride = getattr(net, "stride", None)
    return {
        "description": "pruned with yoloprune",
        "stride": int(max(stride.tolist())) if isinstance(stride, torch.Tensor) else 32,
        "task": guess_model_task(net),
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": dict(getattr(net, "names", None) or {}),
    }


def nms_layout(net: nn.Module) -> tuple[str, int]:
    """How the export-mode predictions are laid out, and the number of classes."""
    head = net.model[-1] if isinstance(getattr(net, "model", None), nn.Sequential) else None
    if head is None or not hasattr(head, "nc"):
        raise ValueError(f"{type(net).__name__} has no detection head to add NMS to")
    if getattr(head, "end2end", False):
        return "end2end", int(head.nc)
    return "xywh-class", int(head.nc)


def classes(net: nn.Module) -> int:
    """How many classes the head predicts."""
    net = _network(net)
    head = net.model[-1] if isinstance(getattr(net, "model", None), nn.Sequential) else None
    if head is None or not hasattr(head, "nc"):
        raise ValueError(f"{type(net).__name__} has no head with classes")
    return int(head.nc)


def set_classes(net: nn.Module, nc: int, names: Sequence[str] | None = None) -> None:
    """Give the head ``nc`` fresh class outputs (named ``names``) as ultralytics starts them when it trains on a
    dataset with other classes (a new last layer of every class branch, biases from ``Detect.bias_init``'s prior; a
    classifier gets a new linear layer). The box branch, the class branch's inner layers and the pruned body stay; the
    count is recorded in the plan (``yoloprune.load`` replays it)."""
    import math

    from yoloprune.adapters.heads import check_classes, record_classes, remap_rows

    nc, net = check_classes(nc), _network(net)
    head = net.model[-1]
    if names is not None:
        net.names = dict(enumerate(names))
    if int(head.nc) == nc:
        return
    if type(head).__name__ == "Classify":
        head.linear = remap_rows(head.linear, [None] * nc, 0.0)
    else:
        strides = head.stride.tolist() if isinstance(head.stride, torch.Tensor) and head.stride.numel() else []
        for name in ("cv3", "one2one_cv3"):
            for level, branch in enumerate(getattr(head, name, None) or ()):
                stride = strides[level] if level < len(strides) else 8 * 2**level
                prior = math.log(5 / nc / (640 / stride) ** 2)
                branch[-1] = remap_rows(branch[-1], [None] * nc, prior)
        head.no = nc + head.reg_max * 4
    head.nc = nc
    record_classes(target(net, prune_head=True), nc)


def task_validator(net: nn.Module) -> type:
    """ultralytics' validator of ``net``'s task: detection, segmentation (box and mask mAP), pose (box and keypoint
    mAP) or OBB; a clear error for the others."""
    from ultralytics.models.yolo import detect, obb, pose, segment
    from ultralytics.nn.tasks import guess_model_task

    validators = {
        "detect": detect.DetectionValidator,
        "segment": segment.SegmentationValidator,
        "pose": pose.PoseValidator,
        "obb": obb.OBBValidator,
    }
    task = guess_model_task(_network(net))
    if task not in validators:
        raise ValueError(f"{task} models have no detection validator; prune and export them")
    return validators[task]


def raw_outputs(out: Any) -> None:
    """Decoded predictions are not written in place here: distillation reads them, not raw maps."""
    return None


def train_loss(net: nn.Module, imgsz: int) -> Any:
    """ultralytics' own criterion for ``net`` (the gains the model carries, else ultralytics' defaults), as
    ``loss(batch) -> tensor``; the model's ``args`` and ``criterion`` are left as they were."""
    from ultralytics.cfg import get_cfg

    saved = getattr(net, "args", None)
    gains = {k: v for k, v in saved.items() if k in ("box", "cls", "dfl")} if isinstance(saved, dict) else None
    args = saved if hasattr(saved, "box") else get_cfg(overrides=gains)

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kept = getattr(net, "args", None), getattr(net, "criterion", None)
        net.args, net.criterion = args, None
        try:
            return net.loss(batch)[0].sum()
        finally:
            net.args, net.criterion = kept

    return loss
