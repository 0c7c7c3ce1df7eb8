"""End-to-end NMS for exports: decoded predictions in, ``(N, 6)`` detections (x1, y1, x2, y2, score, class) out."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from .graph.tracer import tensors_in


class NMSHead(nn.Module):
    """Wraps an export-mode network (batch 1) with score filtering and class-aware NMS (ONNX NonMaxSuppression).

    ``layout``: ``"xywh-class"`` for (B, 4 + nc [+ extra], N) predictions (ultralytics), ``"xywh-obj-class"`` for
    (B, N, 5 + nc) ones (YOLOv5, YOLOv7, YOLOX), ``"end2end"`` for models that already return (B, K, 6).
    """

    def __init__(self, net: nn.Module, layout: str, nc: int, conf: float = 0.25, iou: float = 0.45, max_det: int = 300):
        super().__init__()
        self.net, self.layout, self.nc, self.conf, self.iou, self.max_det = net, layout, nc, conf, iou, max_det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = tensors_in(self.net(x))[0]
        if self.layout == "end2end":
            return p[0]
        if self.layout == "xywh-class":
            p = p.transpose(1, 2)
            boxes, scores = p[0, :, :4], p[0, :, 4 : 4 + self.nc]
        else:
            boxes, scores = p[0, :, :4], p[0, :, 5 : 5 + self.nc] * p[0, :, 4:5]
        xy, wh = boxes[:, :2], boxes[:, 2:] / 2
        boxes = torch.cat([xy - wh, xy + wh], 1)
        conf, cls = scores.max(1)
        keep = conf > self.conf
        boxes, conf, cls = boxes[keep], conf[keep], cls[keep]
        index = torchvision.ops.batched_nms(boxes, conf, cls, self.iou)[: self.max_det]
        return torch.cat([boxes[index], conf[index, None], cls[index, None].to(boxes.dtype)], 1)


def with_nms(net: nn.Module, adapter: Any) -> NMSHead:
    """``net`` (already in export mode) followed by NMS, in the layout its family's adapter declares."""
    if adapter is None or not hasattr(adapter, "nms_layout"):
        raise ValueError("--nms needs a detection family (its output layout); this model has none")
    layout, nc = adapter.nms_layout(net)
    return NMSHead(net, layout, nc)
