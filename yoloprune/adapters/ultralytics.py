"""Ultralytics detectors (YOLOv3u/v5u/v6/v8/v9/v10/11/12/26): what the generic graph needs to know about them.

Stock classes stay: blocks whose forward splits channels with sizes kept in an attribute get a fixup that updates the
attribute; attention blocks, whose forward reshapes values back to the input's channel count, keep their channels.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..graph.registry import FixupContext, Policy
from . import Target


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

HEADS = ("Detect", "Segment", "Pose", "OBB", "v10Detect", "WorldDetect", "YOLOEDetect", "RTDETRDecoder")


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
    heads = head_names(net)
    ignore: tuple[str, ...] = () if prune_head else tuple(heads)
    return Target("ultralytics", net, outputs=detections, policies=POLICIES, ignore=ignore)


def load(spec: str) -> nn.Module:
    """An ultralytics detection network from a config name or path (``yolov8s.yaml``: scale from the name, random
    weights)."""
    from ultralytics.nn.tasks import DetectionModel, guess_model_task, yaml_model_load

    try:
        cfg = yaml_model_load(spec)
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"no such model config: {spec}") from exc
    task = guess_model_task(cfg)
    if task != "detect":
        raise ValueError(f"{spec} is a {task} model; only detection models are supported yet")
    return DetectionModel(cfg, verbose=False)
