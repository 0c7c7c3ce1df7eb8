"""Labelled batches in ultralytics' format, straight from a dataset, for losses outside the trainer (Taylor
importance, sensitivity)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.datasets import load_detection_set
from ..images import Preprocess, letterbox, read_image, to_tensor


def labelled_batches(
    data: str | Path, imgsz: int, batch: int = 8, count: int = 4, split: str = "train", seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of letterboxed images with their boxes (normalised xywh), classes and image indices."""
    dataset = load_detection_set(data, split)
    order = np.random.default_rng(seed).permutation(len(dataset.images))[: batch * count]
    batches = []
    for k in range(0, len(order), batch):
        images, cls, boxes, index = [], [], [], []
        for j, i in enumerate(order[k : k + batch]):
            image = read_image(dataset.images[i])
            boxed, scale, (left, top) = letterbox(image, imgsz)
            images.append(to_tensor(boxed, Preprocess()))
            for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[dataset.image_ids[i]])):
                x, y, w, h = (np.array(ann["bbox"]) * scale).tolist()
                cx, cy = x + left + w / 2, y + top + h / 2
                boxes.append([cx / imgsz, cy / imgsz, w / imgsz, h / imgsz])
                cls.append([dataset.category_ids.index(ann["category_id"])])
                index.append(j)
        batches.append(
            {
                "img": torch.cat(images),
                "cls": torch.tensor(cls, dtype=torch.float32).reshape(-1, 1),
                "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "batch_idx": torch.tensor(index, dtype=torch.float32),
            }
        )
    return batches


def detection_loss(batches: list[dict[str, torch.Tensor]]) -> Callable[[nn.Module], torch.Tensor]:
    """A loss function of an ultralytics network over fixed batches (its own criterion, default gains)."""

    def loss(net: nn.Module) -> torch.Tensor:
        from ultralytics.cfg import get_cfg

        saved = getattr(net, "args", None)
        if not hasattr(saved, "box"):
            net.args = get_cfg(
                overrides={k: v for k, v in (saved or {}).items() if k in ("box", "cls", "dfl")}
                if isinstance(saved, dict)
                else None
            )
        net.criterion = None
        net.train()
        try:
            return sum(net.loss(b)[0].sum() for b in batches)
        finally:
            net.criterion, net.args = None, saved

    return loss
