"""YOLOv5 (anchor-based, the ``yolov5`` package or a clone of the repository): detection and segmentation models.

Stock classes stay; nothing needs a policy. The Detect head decodes in eval mode with grids it caches as plain lists
of tensors, which are reset before tracing. A checkpoint written here is the train.py/``strip_optimizer`` format
(``{'model': fp16 model, 'ema': None, 'epoch': -1, ...}``), so ``attempt_load``, ``detect.py`` and ``val.py`` read it.
Torch >= 2.6 makes those call ``torch.load`` with ``weights_only=True``, which refuses every YOLOv5 checkpoint, pruned
or not: run them with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (trusted files only). Everything but what is below is
``AnchorFamily`` (shared with YOLOv7).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from yoloprune.adapters._anchor import AnchorFamily, head_of

HEADS = ("Detect", "Segment")


def reset_grids(net: nn.Module) -> None:
    """Drop the grids the head caches (plain lists of tensors that ``to()`` and meta copies do not move)."""
    head = head_of(net)
    if head is not None and type(head).__name__ in HEADS and hasattr(head, "nl"):
        if "anchor_grid" in head._buffers:  # checkpoints from YOLOv5 before 6.1 registered it as a buffer
            del head._buffers["anchor_grid"]
        head.grid = [torch.empty(0) for _ in range(head.nl)]
        head.anchor_grid = [torch.empty(0) for _ in range(head.nl)]


def _export_head(head: nn.Module, dynamic: bool) -> None:
    """export.py's mode: the head returns only its decoded predictions (and protos), grids rebuilt at every size
    when ``dynamic``."""
    head.export, head.dynamic, head.inplace = True, dynamic, True


def _on_load(net: nn.Module, meta: dict[str, Any], ckpt: dict[str, Any]) -> nn.Module:
    """Keep the checkpoint's ``opt`` for ``save``; add the attributes checkpoints of older YOLOv5 versions lack."""
    meta["opt"] = ckpt.get("opt")
    if not hasattr(net, "stride"):
        net.stride = torch.tensor([32.0])
    reset_grids(net)
    return net


_FAMILY = AnchorFamily(
    family="yolov5",
    label="YOLOv5",
    package="yolov5",
    install="pip install 'yoloprune[yolov5]'",
    heads=HEADS,
    networks=("DetectionModel", "SegmentationModel", "Model", "BaseModel"),
    wrappers=("AutoShape", "DetectMultiBackend"),
    loggers=("yolov5", "yolov5.models", "yolov5.utils"),
    model_class="DetectionModel",
    model_classes={"Segment": "SegmentationModel"},
    reset_grids=reset_grids,
    export_head=_export_head,
    no_head="{net} has no YOLOv5 Detect or Segment head (classification is not supported)",
    unsupported="{where}: only YOLOv5 detection and segmentation models are supported",
    missing_config=" (not a file, nor a config the yolov5 package ships)",
    config_folders=("", "hub", "segment"),
    sticky_activation=True,
    checkpoint_keys=lambda meta: {"opt": meta.get("opt") or {}, "git": None},
    on_load=_on_load,
)

FAMILY = _FAMILY.family
PREPROCESS = _FAMILY.PREPROCESS
FIXED_PARAMETERS = _FAMILY.FIXED_PARAMETERS
matches = _FAMILY.matches
detections = _FAMILY.detections
target = _FAMILY.target
config_path = _FAMILY.config_path
from_config = _FAMILY.from_config
load = _FAMILY.load
save = _FAMILY.save
rebuild = _FAMILY.rebuild
export_module = _FAMILY.export_module
export_metadata = _FAMILY.export_metadata
nms_layout = _FAMILY.nms_layout
train_loss = _FAMILY.train_loss
classes = _FAMILY.classes
set_classes = _FAMILY.set_classes
raw_outputs = _FAMILY.raw_outputs
