"""End-to-end NMS for exports: decoded predictions in, ``(N, 6)`` detections (x1, y1, x2, y2, score, class) out."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from yoloprune.graph.nest import tensors_in


class NMSHead(nn.Module):
    """Wraps an export-mode network (batch 1) with score filtering and class-aware NMS (ONNX NonMaxSuppression).

    ``layout``: ``"xywh-class"`` for (B, 4 + nc [+ extra], N) predictions (ultralytics), ``"xywh-obj-class"`` for
    (B, N, 5 + nc) ones (YOLOv5, YOLOv7, YOLOX), ``"end2end"`` for models that already return (B, K, 6).
    """

    def __init__(self, net: nn.Module, layout: str, nc: int, conf: float = 0.25, iou: float = 0.45, max_det: int = 300):
        super().__init__()
        self.net, self.layout, self.nc, self.conf, self.iou, self.max_det = net, layout, nc, conf, iou, max_det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "end2end":
            return tensors_in(self.net(x))[0][0]
        boxes, conf, cls = self.candidates(x)
        index = torchvision.ops.batched_nms(boxes, conf, cls, self.iou)[: self.max_det]
        return torch.cat([boxes[index], conf[index, None], cls[index, None].to(boxes.dtype)], 1)

    def candidates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes (xyxy), scores and classes of the predictions above the score threshold, before NMS."""
        p = tensors_in(self.net(x))[0]
        if self.layout == "xywh-class":
            p = p.transpose(1, 2)
            boxes, scores = p[0, :, :4], p[0, :, 4 : 4 + self.nc]
        else:
            boxes, scores = p[0, :, :4], p[0, :, 5 : 5 + self.nc] * p[0, :, 4:5]
        xy, wh = boxes[:, :2], boxes[:, 2:] / 2
        boxes = torch.cat([xy - wh, xy + wh], 1)
        conf, cls = scores.max(1)
        keep = conf > self.conf
        return boxes[keep], conf[keep], cls[keep]


def check_nms(head: NMSHead, x: torch.Tensor, detections: torch.Tensor) -> str | None:
    """Why ``detections`` (from another runtime) are not a valid NMS result of ``head`` on ``x``, or None.

    Valid: every detection is one of the candidates (same class, values within 1e-3 relative), no two detections of
    a class overlap beyond the IoU threshold, and there are at most ``max_det``. Which of two near-tied boxes NMS
    keeps may differ between runtimes; this check does not depend on it.
    """
    if head.layout == "end2end":
        return None
    with torch.no_grad():
        boxes, conf, cls = head.candidates(x)
    if len(detections) > head.max_det:
        return f"{len(detections)} detections exceed max_det {head.max_det}"
    if not len(detections):
        return None if not len(boxes) else "no detections although candidates exist"
    rows = torch.cat([boxes, conf[:, None], cls[:, None].to(boxes.dtype)], 1)
    scale = max(float(rows[:, :5].abs().max()), 1e-12)
    distance = (detections[:, None, :5] - rows[None, :, :5]).abs().amax(-1)
    distance = distance + 1e9 * (detections[:, None, 5] != rows[None, :, 5])
    if (distance.min(1).values > 1e-3 * scale).any():
        return "a detection matches no candidate box"
    same = detections[:, None, 5] == detections[None, :, 5]
    overlap = torchvision.ops.box_iou(detections[:, :4], detections[:, :4]) * same
    overlap.fill_diagonal_(0)
    if (overlap > head.iou + 1e-4).any():
        return "two detections of one class overlap beyond the NMS IoU"
    return None


def with_nms(net: nn.Module, adapter: Any) -> NMSHead:
    """``net`` (already in export mode) followed by NMS, in the layout its family's adapter declares."""
    if adapter.FAMILY == "generic":
        raise ValueError("--nms needs a detection family (its output layout); this model has none")
    layout, nc = adapter.nms_layout(net)
    return NMSHead(net, layout, nc).eval()  # a new module starts in training mode, which the exporter restores
