"""Segmentation and pose end to end: prune -> fine-tune (the task's own trainer, new classes, distillation) -> evaluate
(boxes by pycocotools, masks or keypoints by the task's validator) -> export a verified ONNX file."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

import yoloprune
from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.data import synthesize
from yoloprune.evaluate.coco import evaluate
from yoloprune.export.onnx import export_onnx
from yoloprune.train import finetune

X = torch.zeros(1, 3, 64, 64)
FAST = {"imgsz": 64, "batch": 4, "nbs": 4, "workers": 0, "mosaic": 0.0, "warmup_epochs": 0}


def task_data(root: Path, task: str) -> Path:
    """The synthetic set with its boxes rewritten as the task's labels: rectangle polygons for segmentation, one
    visible keypoint at the box centre for pose (``kpt_shape: [1, 3]``)."""
    data = synthesize(root, train=8, val=4, imgsz=64, classes=3, seed=1)
    for label in (root / "labels").rglob("*.txt"):
        rows = []
        for line in label.read_text().splitlines():
            cls, cx, cy, w, h = line.split()
            x, y, w, h = float(cx), float(cy), float(w), float(h)
            x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
            if task == "segment":
                rows.append(f"{cls} {x1:.6f} {y1:.6f} {x2:.6f} {y1:.6f} {x2:.6f} {y2:.6f} {x1:.6f} {y2:.6f}")
            else:
                rows.append(f"{line} {x:.6f} {y:.6f} 2")
        label.write_text("\n".join(rows) + "\n")
    shutil.rmtree(root / "annotations")  # the COCO json holds the boxes only: evaluation reads the yaml
    if task == "pose":
        data.write_text(data.read_text() + "kpt_shape: [1, 3]\nflip_idx: [0]\n")
    return data


@pytest.mark.parametrize(
    ("task", "config", "metric"), [("segment", "yolov8n-seg.yaml", "mask"), ("pose", "yolo11n-pose.yaml", "pose")]
)
def test_a_pruned_task_model_fine_tunes_evaluates_and_exports(task, config, metric, tmp_path):
    data = task_data(tmp_path / "data", task)
    cfg = from_config(config).yaml
    base = from_config({**cfg, "kpt_shape": [1, 3]} if task == "pose" else cfg)  # 80 classes, the data has 3
    pruned = copy.deepcopy(base)
    yoloprune.prune(pruned, X, target_macs=0.5)
    teacher = save(Loaded(base, "ultralytics", "t", {"train_args": {}}), tmp_path / "t.pt", {})
    path = save(
        Loaded(pruned, "ultralytics", "p", {"train_args": {}}), tmp_path / "p.pt", {"plan": pruned.yaml["yoloprune"]}
    )
    result = finetune(path, data, teacher=teacher, epochs=1, out=tmp_path / "run", **FAST)
    assert result.metrics[f"train/{'seg' if task == 'segment' else 'pose'}_loss"] > 0  # the task's own loss trained
    assert result.metrics["train/kd_loss"] > 0
    net = yoloprune.load(result.best)
    head = net.model[-1]
    assert type(head).__name__ == type(pruned.model[-1]).__name__ and head.nc == 3
    shapes, before = {k: v.shape for k, v in net.state_dict().items()}, pruned.state_dict()
    last = len(pruned.model) - 1  # only the class layers of the head changed shape: the pruned body is kept
    assert {k.rsplit(".", 1)[0] for k, v in before.items() if shapes[k] != v.shape} == {
        f"model.{last}.cv3.{level}.2" for level in range(3)
    }
    scores = evaluate(result.best, data, imgsz=64, batch=4)
    assert set(scores.task) == {f"{metric}_map50_95", f"{metric}_map50"}
    assert all(0.0 <= v <= 1.0 for v in scores.task.values()) and f"{metric} mAP50-95" in str(scores)
    exported = export_onnx(net, tmp_path / "m.onnx", imgsz=64)  # raises unless onnxruntime matches PyTorch
    assert exported.outputs[0][1] == 4 + 3 + (32 if task == "segment" else 3)
