"""The metrics a task adds to boxes (mask mAP for segmentation, keypoint mAP for pose), from ultralytics' own
validators: ``evaluate`` reports them beside pycocotools' box mAP for ultralytics segment and pose models."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from torch import nn

SUFFIXES = {"M": "mask", "P": "pose", "B": "box"}  # ultralytics' metric suffixes


def task_of(net: nn.Module | None) -> str | None:
    """The ultralytics task of a network (``detect``, ``segment``, ...); None for other families and for none."""
    from yoloprune.adapters import family_of_model

    if net is None or family_of_model(net) != "ultralytics":
        return None
    from ultralytics.nn.tasks import guess_model_task

    from yoloprune.adapters.ultralytics import _network

    return guess_model_task(_network(net))


def task_metrics(net: nn.Module, data: str | Path, *, imgsz: int, batch: int, split: str = "val") -> dict[str, float]:
    """mAP50-95 and mAP50 of the task's own outputs (``mask_map50_95``, ``pose_map50``, ...) by the task's ultralytics
    validator on a data yaml, for a copy of ``net``; nothing is written outside a temporary folder (label caches
    included)."""
    from yoloprune.adapters.packages import quiet
    from yoloprune.adapters.ultralytics import _network, task_validator
    from yoloprune.data.datasets import write_trainer_config
    from yoloprune.train.label_cache import label_cache_in

    net = copy.deepcopy(_network(net)).float()
    with tempfile.TemporaryDirectory() as folder:
        checked = write_trainer_config(data, folder)  # never the user's yaml: ultralytics would run its download
        args = {"data": str(checked), "imgsz": imgsz, "batch": batch, "split": split, "device": "cpu", "workers": 0}
        validator = task_validator(net)(
            save_dir=Path(folder), args={**args, "plots": False, "verbose": False, "save_json": False}
        )
        with label_cache_in(Path(folder)), quiet("ultralytics"):
            stats = validator(model=net.eval())
    out = {}
    for key, value in stats.items():
        metric, _, suffix = key.removeprefix("metrics/").partition("(")
        kind = SUFFIXES.get(suffix.rstrip(")"))
        if kind not in (None, "box") and metric in ("mAP50-95", "mAP50"):
            out[f"{kind}_{metric.lower().replace('-', '_')}"] = float(value)
    return out
