"""YOLOv5, YOLOv7 and YOLOX fine-tune with their own losses (plus distillation) in yoloprune's loop."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from helpers import randomize

import yoloprune
from yoloprune.data import synthesize
from yoloprune.train import finetune
from yoloprune.train.loop import fit

X = torch.zeros(1, 3, 64, 64)
CONFIGS = Path(__file__).parent / "family_configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("fam") / "d", train=8, val=4, imgsz=64, classes=3, seed=6)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model(family: str) -> torch.nn.Module:
    if family == "yolov5":
        pytest.importorskip("yolov5")
        from yoloprune.adapters.yolov5 import config_path, from_config

        return from_config({**yaml.safe_load(config_path("yolov5n.yaml").read_text()), "nc": 3})
    if family == "yolov7":
        pytest.importorskip("yolov7")
        from yoloprune.adapters.yolov7 import from_config

        return from_config({**yaml.safe_load((CONFIGS / "yolov7-tiny.yaml").read_text()), "nc": 3})
    pytest.importorskip("yolox")
    from yoloprune.adapters.yolox import build, config_for

    return build(config_for("yolox_nano", num_classes=3))


@pytest.mark.parametrize("family", ["yolov5", "yolov7", "yolox"])
def test_family_loss_trains_the_pruned_network_with_distillation(family, data):
    teacher = randomize(model(family))
    student = copy.deepcopy(teacher)
    yoloprune.prune(student, X, target_macs=0.6)
    shapes = [p.shape for p in student.parameters()]
    before = [p.detach().clone() for p in student.parameters()]
    result = fit(student, data, epochs=1, teacher=teacher, imgsz=64, batch=4)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.last_loss)) and result.last_loss > 0
    assert [p.shape for p in student.parameters()] == shapes  # still the pruned network
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert not student.training


def test_finetune_dispatches_other_families_to_the_loop(data, tmp_path):
    from yoloprune.adapters import Loaded
    from yoloprune.models import save_model

    net = randomize(model("yolov5"))
    yoloprune.prune(net, X, target_macs=0.6)
    path = save_model(Loaded(net, "yolov5", "x", {"half": False}), tmp_path / "p.pt", {})
    result = finetune(path, data, epochs=1, imgsz=64, batch=4, out=tmp_path / "ft", workers=0)
    assert result.best.is_file() and result.params == sum(p.numel() for p in net.parameters())
    assert yoloprune.models.load_model(str(result.best)).family == "yolov5"
