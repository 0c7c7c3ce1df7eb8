"""Every detection config the installed ultralytics ships, at its smallest scale, prunes exactly at ratio 0.3.

The list is discovered at run time, so a new ultralytics release's yamls are picked up by themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import prune_exact, randomize

from yoloprune.adapters.ultralytics import detections, from_config

ultralytics = pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import guess_model_task, yaml_model_load  # noqa: E402

OPEN_VOCABULARY = ("world", "yoloe", "rtdetr")


def smallest(path: Path) -> str:
    """The config name ultralytics resolves to ``path`` at its first (smallest) scale."""
    cfg = yaml_model_load(path)
    scales = cfg.get("scales") or {}
    if not scales or re.search(r"\d+[nsmlxtcebs](?:[-.]|$)", path.stem):
        return path.name
    return re.sub(r"(\d+)", lambda m: m.group(1) + next(iter(scales)), path.stem, count=1) + path.suffix


def configs(task: str) -> list[str]:
    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    found = []
    for path in sorted(root.rglob("*.yaml")):
        if any(word in path.name for word in OPEN_VOCABULARY):
            continue
        if guess_model_task(yaml_model_load(path)) == task:
            found.append(smallest(path))
    return found


DETECT = [*configs("detect"), "yolov8s.yaml", "yolo11s.yaml"]
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_discovery_finds_every_family():
    names = " ".join(DETECT)
    for expected in ("yolov3", "yolov5n", "yolov6n", "yolov8n", "yolov9t", "yolov10n", "yolo11n", "yolo12n", "yolo26n"):
        assert expected in names
    assert len(DETECT) >= 30


@pytest.mark.parametrize("cfg", DETECT)
def test_detection_config_is_exact(cfg):
    model = randomize(from_config(cfg))
    report = prune_exact(model, X, ratio=0.3, outputs=detections)
    assert 0.3 < report.macs_ratio < 0.95 and report.groups_pruned >= 10


@pytest.mark.parametrize("cfg", ["yolov8n-seg.yaml", "yolo11n-pose.yaml", "yolo11n-obb.yaml", "yolov8n-cls.yaml"])
def test_other_tasks_prune_exactly_too(cfg):
    model = randomize(from_config(cfg))
    prune_exact(model, X, ratio=0.3, outputs=detections)


@pytest.mark.parametrize("cfg", ["yolov8s-worldv2.yaml", "yoloe-11s.yaml", "rtdetr-l.yaml"])
def test_unsupported_models_say_so(cfg):
    with pytest.raises(ValueError, match="not supported yet"):
        from_config(cfg)
