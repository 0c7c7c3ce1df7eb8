"""YOLOv7 (WongKinYiu/yolov7; the ``yolov7detect`` package, import name ``yolov7``): Detect, IDetect, IAuxDetect heads.

RepConv stores its channel counts and builds its identity kernel from them when it is re-parameterised, so a fixup
keeps them current; the head's ImplicitA follows its input, and ``prune_head`` adds nothing (the head holds only its
output convolutions). The heads cache grids as plain lists of tensors, which are reset before tracing. No yolov7
package ships model configs: pass the path of one (``cfg/training/yolov7-tiny.yaml`` in a clone). A checkpoint written
here is the train.py/``strip_optimizer`` format (fp16 model, frozen parameters), which the repository's
``attempt_load`` reads; on torch >= 2.6 run it with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (trusted files only), as for
any YOLOv7 checkpoint. Everything but what is below is ``AnchorFamily`` (shared with YOLOv5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from yoloprune.adapters._anchor import AnchorFamily, head_of
from yoloprune.adapters.config_check import NN_LAYERS
from yoloprune.graph.registry import FixupContext, Policy


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


def reset_grids(net: nn.Module) -> None:
    """Drop the grids the head caches (a plain list of tensors that ``to()`` and meta copies do not move)."""
    head = head_of(net)
    if head is not None and isinstance(getattr(head, "grid", None), list):
        head.grid = [torch.zeros(1) for _ in range(head.nl)]


def _export_head(head: nn.Module, dynamic: bool) -> None:
    """export.py ``--grid``'s mode (after RepConv and the implicit layers are fused): one decoded (B, N, 5 + nc)
    tensor. The head rebuilds its cached grid whenever the input size changes (a dynamic export checked at a second
    size matched PyTorch), so ``dynamic`` needs nothing."""
    head.concat, head.export, head.end2end, head.include_nms = True, False, False, False


_FAMILY = AnchorFamily(
    family="yolov7",
    label="YOLOv7",
    package="yolov7",
    install="pip install 'yoloprune[yolov7]' && pip install --no-deps yolov7detect",
    heads=("Detect", "IDetect", "IAuxDetect", "IBin", "IKeypoint"),
    networks=("Model",),
    wrappers=("autoShape",),
    loggers=("yolov7", "yolov7.models", "yolov7.utils", "models", "utils"),
    model_class="Model",
    reset_grids=reset_grids,
    export_head=_export_head,
    no_head="{net} has no YOLOv7 detection head",
    unsupported="{where}: only YOLOv7 detection models are supported (head {head!r})",
    missing_config=(
        ". The yolov7 packages ship no configs: pass the path of one "
        "(cfg/training/yolov7-tiny.yaml in a clone of WongKinYiu/yolov7)"
    ),
    nms_heads=True,
    policies=POLICIES,
    nn_layers=NN_LAYERS | {"Conv2d"},  # YOLOv7's parser gives nn.Conv2d its input channels
    checkpoint_keys=lambda meta: {"training_results": None, "wandb_id": None},
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
