"""Exactness and concrete channel counts on stock ultralytics detectors built from yamls (random weights)."""

from __future__ import annotations

import pytest
import torch
from helpers import prune_exact, randomize

from yoloprune.adapters.ultralytics import detections

ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def build(cfg: str) -> DetectionModel:
    return randomize(DetectionModel(cfg, verbose=False))


def out_channels(model, *names):
    return tuple(model.get_submodule(n).out_channels for n in names)


def test_yolov8n_exact_with_concrete_counts():
    m = build("yolov8n.yaml")
    report = prune_exact(m, X, ratio=0.3, outputs=detections)
    assert report.family == "ultralytics"
    # the first conv is protected by default; everything else loses floor(0.3 * n)
    assert out_channels(m, "model.0.conv", "model.1.conv", "model.2.cv1.conv", "model.2.cv2.conv") == (16, 23, 24, 23)
    assert m.model[2].c == 12 and m.model[8].c == 90  # C2f.c follows cv1's halves
    x = torch.rand(1, 23, 16, 16)  # forward_split (split by self.c) still works
    assert torch.allclose(m.model[2].forward_split(x), m.model[2](x), atol=1e-6)
    head = m.model[22]
    assert out_channels(m, "model.22.cv2.0.2", "model.22.cv3.0.2", "model.22.cv2.0.0.conv") == (64, 80, 64)
    assert head.cv2[0][0].conv.in_channels == m.model[15].cv2.conv.out_channels == 45
    # torch's FLOP counter: 43.7M MACs at 64x64 = 8.7 GFLOPs at 640, the figure ultralytics publishes
    assert report.macs_before == 43_719_936 and 0.6 < report.macs_ratio < 0.7


def test_yolo11n_exact_attention_kept():
    m = build("yolo11n.yaml")
    prune_exact(m, X, ratio=0.3, outputs=detections)
    assert out_channels(m, "model.2.cv1.conv", "model.2.m.0.cv1.conv", "model.4.cv2.conv") == (24, 6, 90)
    assert m.model[2].c == 12  # C3k2
    assert m.model[10].c == 128 and m.model[10].m[0].attn.qkv.conv.out_channels == 256  # C2PSA heads kept


def test_yolov5nu_exact():
    m = build("yolov5nu.yaml")
    prune_exact(m, X, ratio=0.3, outputs=detections)
    assert out_channels(m, "model.2.cv1.conv", "model.2.cv3.conv", "model.4.cv3.conv") == (12, 23, 45)


def test_yolo_object_and_prune_head():
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml")
    randomize(yolo.model)
    report = prune_exact(yolo.model, X, ratio=0.3, outputs=detections, prune_head=True)
    assert report.settings["prune_head"] is True
    assert yolo.model.model[22].cv2[0][0].conv.out_channels == 45  # head stem pruned
    assert yolo.model.model[22].cv2[0][2].out_channels == 64  # box output intact
