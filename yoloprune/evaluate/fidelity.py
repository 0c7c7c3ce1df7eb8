"""Fidelity: how much of a reference model's detection behaviour another model keeps, without labels.

The reference's confident detections (score >= ``conf``) on a batch of images are the ground truth; the other
model's detections are scored against them with pycocotools' mAP50-95, as mAP would score them against labels. A
pruned model's fidelity to its unpruned self is what pruning kept of it, on any images.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import torch

from yoloprune.evaluate.coco import decode, runner_for

CONFIDENT = 0.25
"""The reference's detections at or above this score are the ground truth (ultralytics' default for predictions)."""


def detections(model: Any, batches: Sequence[torch.Tensor], conf: float, family: str | None = None) -> list:
    """Per image ``(N, 6)`` detections (``x1, y1, x2, y2, score, class`` in the letterboxed frame) of ``model``."""
    runner = runner_for(model, family)
    return [d for batch in batches for d in decode(runner.run(batch), runner.layout, runner.nc, conf)]


def fidelity_map(truth: Sequence[torch.Tensor], found: Sequence[torch.Tensor]) -> float:
    """pycocotools' mAP50-95 of ``found`` (per image detections) against ``truth`` (per image, their classes and
    boxes); 1.0 when neither has a detection, 0.0 when only ``found`` has none."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 1, "height": 1} for i in range(len(truth))]
    annotations, classes = [], set()
    for i, det in enumerate(truth):
        for x1, y1, x2, y2, _, cls in det.tolist():
            classes.add(int(cls))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": i + 1, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        for i, det in enumerate(found)
        for x1, y1, x2, y2, score, cls in det.tolist()
    ]
    if not annotations:
        return 0.0 if results else 1.0
    if not results:
        return 0.0
    classes |= {r["category_id"] - 1 for r in results}
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c + 1} for c in classes]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def fidelity(
    model: Any, reference: Any, batches: Sequence[torch.Tensor], conf: float = CONFIDENT, family: str | None = None
) -> float:
    """mAP50-95 of ``model``'s detections against ``reference``'s confident ones on ``batches`` (letterboxed
    images): 1.0 for a model that detects what the reference does, as confidently ordered."""
    return fidelity_map(detections(reference, batches, conf, family), detections(model, batches, 0.001, family))


__all__ = ["CONFIDENT", "detections", "fidelity", "fidelity_map"]
