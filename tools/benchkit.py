"""What the pruning benchmarks in tools/ share: the fine-tune settings they recover with and the point they start
from (imported as ``benchkit``: ``python tools/NAME.py`` puts tools/ on the path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINETUNE = {"mosaic": 0.0, "close_mosaic": 0, "warmup_epochs": 0, "verbose": False, "nbs": 16}
"""ultralytics settings of the benchmarks' fine-tunes: no mosaic at 160 px, no warm-up (its bias learning rate of
0.1 undoes a calibrated start), a step every batch."""


@dataclass
class Start:
    """A benchmark's starting point: the trained network, an input at the benchmark's size, the calibration folder
    (the train split's images; their labels are never read) and the unpruned model's mAP50-95 on the val split."""

    base: Any
    x: Any
    calib: Path
    unpruned: float


def start(model: str | Path, data: str | Path, out: str | Path, imgsz: int) -> Start:
    """Read ``model`` and ``data``, create ``out`` and evaluate the unpruned model (pycocotools)."""
    import torch

    from yoloprune.adapters import load_model
    from yoloprune.data.datasets import load_detection_set
    from yoloprune.evaluate.coco import evaluate

    Path(out).mkdir(parents=True, exist_ok=True)
    base = load_model(str(model)).model
    calib = Path(load_detection_set(data, "train").images[0]).parent
    return Start(base, torch.zeros(1, 3, imgsz, imgsz), calib, evaluate(base, data, imgsz=imgsz).map50_95)
