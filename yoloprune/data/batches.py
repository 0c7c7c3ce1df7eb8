"""Labelled batches in ultralytics' format (``img``, ``cls``, normalised xywh ``bboxes``, ``batch_idx``), read
straight from a dataset: for losses outside ultralytics' trainer (Taylor importance, the training loop of the other
families)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from yoloprune.data.datasets import load_detection_set
from yoloprune.images import Preprocess, letterbox, read_image, to_tensor


class LabelledImages(Dataset):
    """Letterboxed images with their boxes as ``(n, 5)`` rows of class and normalised cx, cy, w, h."""

    def __init__(self, data: str | Path, split: str, imgsz: int, spec: Preprocess | None = None, flip: bool = False):
        self.set, self.imgsz, self.flip = load_detection_set(data, split), imgsz, flip
        self.spec = spec or Preprocess()

    def __len__(self) -> int:
        return len(self.set.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(self.set.images[index])
        boxed, scale, (left, top) = letterbox(image, self.imgsz, self.spec.fill)
        rows = []
        for ann in self.set.coco.loadAnns(self.set.coco.getAnnIds(imgIds=[self.set.image_ids[index]])):
            x, y, w, h = (np.array(ann["bbox"]) * scale).tolist()
            cx, cy = (x + left + w / 2) / self.imgsz, (y + top + h / 2) / self.imgsz
            rows.append([self.set.category_ids.index(ann["category_id"]), cx, cy, w / self.imgsz, h / self.imgsz])
        labels = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
        if self.flip and torch.rand(()) < 0.5:
            boxed = np.ascontiguousarray(boxed[:, ::-1])
            labels[:, 1] = 1 - labels[:, 1]
        return to_tensor(boxed, self.spec)[0], labels


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack images; concatenate labels with the index of their image."""
    images = torch.stack([image for image, _ in items])
    labels = [rows for _, rows in items]
    index = torch.cat([torch.full((len(rows),), float(i)) for i, rows in enumerate(labels)])
    rows = torch.cat(labels) if labels else torch.zeros(0, 5)
    return {"img": images, "cls": rows[:, :1], "bboxes": rows[:, 1:5], "batch_idx": index}


def labelled_batches(
    data: str | Path,
    imgsz: int,
    batch: int = 8,
    count: int = 4,
    split: str = "train",
    seed: int = 0,
    spec: Preprocess | None = None,
) -> list[dict[str, torch.Tensor]]:
    """``count`` fixed batches drawn at random (seeded) from a split."""
    dataset = LabelledImages(data, split, imgsz, spec)
    order = np.random.default_rng(seed).permutation(len(dataset))[: batch * count]
    return [collate([dataset[int(i)] for i in order[k : k + batch]]) for k in range(0, len(order), batch)]
