"""What the YOLOv5 and YOLOv7 adapters share: their checkpoints, rebuild, export layout and loss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.adapters.checkpoint import names_dict, read_checkpoint, set_requires_grad, write_checkpoint
from yoloprune.adapters.packages import _REPO


def anchor_checkpoint(
    net: nn.Module,
    meta: dict[str, Any],
    path: str | Path,
    section: dict[str, Any],
    family: str,
    package: str,
    extra: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a YOLOv5/YOLOv7 network (a copy with its grids reset) the way their ``strip_optimizer`` does: fp16
    unless the source was fp32, frozen parameters, classes named as in the source file; plus yoloprune's section
    (plan and settings, the original config, a state_dict sharing the model's storage). ``extra`` holds the family's
    own keys."""
    from datetime import datetime

    net = set_requires_grad(net.half() if meta.get("half", True) else net.float(), False)
    config = {k: v for k, v in (getattr(net, "yaml", None) or {}).items() if k != "yoloprune"}
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": net,
        "ema": None,
        "updates": None,
        "optimizer": None,
        **extra,
        "date": datetime.now().isoformat(),
        "yoloprune": {
            **section,
            "family": family,
            "config": config,
            "names": names_dict(getattr(net, "names", None)),
            "state_dict": net.state_dict(),
        },
    }
    return write_checkpoint(ckpt, path, package, bool(meta.get("bare")) and not _REPO, overwrite)


def read_anchor_checkpoint(
    spec: str, package: str, label: str, matches: Callable[[nn.Module], bool]
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A YOLOv5/YOLOv7 checkpoint's network (the EMA, else the model) in fp32 and trainable, the ``meta`` that
    ``anchor_checkpoint`` writes it back with (precision, class naming, earlier pruning), and the raw checkpoint."""
    ckpt, bare = read_checkpoint(spec, package)
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module) or not matches(net):
        kind = type(net).__name__ if net is not None else type(ckpt).__name__
        raise ValueError(f"{spec} is not a {label} detection checkpoint (its model is a {kind}); pass --family")
    half = any(p.dtype == torch.float16 for p in net.parameters())
    for m in net.modules():  # checkpoints written by torch < 1.11
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    meta: dict[str, Any] = {"half": half, "bare": bare}
    section = ckpt.get("yoloprune")
    if isinstance(section, dict):
        meta["pruning"] = {k: section[k] for k in ("version", "settings", "report") if k in section}
    return set_requires_grad(net.float(), True), meta, ckpt


def anchor_rebuild(section: dict[str, Any], from_config: Callable, target: Callable, reset: Callable) -> nn.Module:
    """A pruned YOLOv5/YOLOv7 network from yoloprune's checkpoint section: the original config, the plan replayed
    onto it, the saved state_dict loaded strictly (fp16 weights come back as fp32). No pickled module is used."""
    from yoloprune.graph.plan import rebuild as replay_section

    net, _ = replay_section(section, from_config, target)
    if section.get("names"):
        net.names = [section["names"][i] for i in sorted(section["names"])]
    reset(net)
    return net.eval()


def anchor_nms_layout(net: nn.Module, head: nn.Module | None) -> tuple[str, int]:
    """Export-mode predictions of YOLOv5/YOLOv7 heads are (B, N, 5 + nc [+ masks]): xywh, objectness, classes."""
    if head is None or not hasattr(head, "nc"):
        raise ValueError(f"{type(net).__name__} has no detection head to add NMS to")
    return "xywh-obj-class", int(head.nc)


def anchor_metadata(net: nn.Module, head: nn.Module | None, imgsz: int) -> dict[str, Any]:
    """Export metadata of a YOLOv5/YOLOv7 network in the keys ultralytics-style runtimes read."""
    stride = getattr(net, "stride", None)
    return {
        "description": "pruned with yoloprune",
        "stride": int(max(stride.tolist())) if isinstance(stride, torch.Tensor) else 32,
        "task": "segment" if type(head).__name__ == "Segment" else "detect",
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": names_dict(getattr(net, "names", None)),
    }


ANCHOR_HYP = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "fl_gamma": 0.0,
    "anchor_t": 4.0,
    "label_smoothing": 0.0,
}  # YOLOv5/YOLOv7 scratch-low gains


def anchor_loss(net: nn.Module, loss_class: type, imgsz: int) -> Any:
    """A YOLOv5/YOLOv7 ``ComputeLoss`` for ``net`` with the scratch-low gains scaled the way their train.py scales
    them (by the number of levels, classes and the image size); returns ``loss(batch) -> tensor``."""
    head = net.model[-1]
    hyp = dict(ANCHOR_HYP)
    hyp["box"] *= 3 / head.nl
    hyp["cls"] *= head.nc / 80 * 3 / head.nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / head.nl
    net.hyp, net.gr = hyp, 1.0
    compute = loss_class(net)

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = torch.cat([batch["batch_idx"][:, None], batch["cls"], batch["bboxes"]], 1).to(batch["img"].device)
        total, _ = compute(net(batch["img"]), targets)
        return total.sum()

    return loss


def raw_maps(out: Any) -> list[torch.Tensor]:
    """The raw per-level maps a YOLOv5/YOLOv7 head returns beside its decoded predictions in eval mode (decoding
    writes in place, so distillation must read these)."""
    if isinstance(out, list):
        return out
    for item in out if isinstance(out, tuple) else ():
        if isinstance(item, list):
            return item
    raise ValueError("the head returned no raw maps")
