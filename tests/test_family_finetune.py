"""YOLOv5, YOLOv7 and YOLOX fine-tune with their own losses (plus distillation) in yoloprune's loop."""

from __future__ import annotations

import copy
import json
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
    from yoloprune.adapters import Loaded, save_model

    net = randomize(model("yolov5"))
    yoloprune.prune(net, X, target_macs=0.6)
    path = save_model(Loaded(net, "yolov5", "x", {"half": False}), tmp_path / "p.pt", {})
    result = finetune(path, data, epochs=1, imgsz=64, batch=4, out=tmp_path / "ft", workers=0)
    assert result.best.is_file() and result.params == sum(p.numel() for p in net.parameters())
    assert yoloprune.adapters.load_model(str(result.best)).family == "yolov5"


def test_an_interrupted_family_finetune_resumes_from_its_last_epoch(data, tmp_path, monkeypatch):
    from yoloprune.adapters import Loaded, load_model, save_model

    net = randomize(model("yolov5"))
    yoloprune.prune(net, X, target_macs=0.6)
    path = save_model(Loaded(net, "yolov5", "x", {"half": False}), tmp_path / "p.pt", {})
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def crash_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # 8 images / batch 4: two steps an epoch
            raise KeyboardInterrupt
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(path, data, epochs=2, imgsz=64, batch=4, out=tmp_path / "ft", workers=0, lr0=0.02)
    state = torch.load(tmp_path / "ft" / "weights" / "last.state.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2
    scores = json.loads((tmp_path / "ft" / "weights" / "scores.json").read_text())
    assert sorted(scores) == ["0", "1"]  # the start and the one finished epoch, validated; best.pt the better
    with pytest.raises(ValueError, match="holds a training run"):
        finetune(path, data, epochs=2, imgsz=64, batch=4, out=tmp_path / "ft", workers=0)
    with pytest.raises(ValueError, match=r"as it was started \(its batch=4\); batch=8 would change it"):
        finetune(None, data, out=tmp_path / "ft", resume=True, batch=8)
    calls.clear()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or clip(*a, **k))
    result = finetune(None, data, out=tmp_path / "ft", resume=True, workers=0)
    assert len(calls) == 2 and result.metrics["train/steps"] == 4 and result.epochs == 2  # the second epoch only
    state = torch.load(tmp_path / "ft" / "weights" / "last.state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["initial_lr"] == 0.02
    assert result.params == sum(p.numel() for p in net.parameters())
    assert load_model(str(result.best)).family == "yolov5"


def test_a_family_finetune_hands_back_the_best_model_the_start_included(data, tmp_path, monkeypatch, capsys):
    from yoloprune.adapters import Loaded, load_model, save_model
    from yoloprune.evaluate import coco

    net = randomize(model("yolov5"))
    yoloprune.prune(net, X, target_macs=0.6)
    path = save_model(Loaded(net, "yolov5", "x", {"half": False}), tmp_path / "p.pt", {})
    scores = iter([0.30, 0.10, 0.20])  # the start, then two epochs that do worse
    monkeypatch.setattr(coco, "evaluate", lambda *a, **k: coco.EvalResult(next(scores), 0.0, 4, 0, 0.0, "m", "d", 64))
    result = finetune(path, data, epochs=2, imgsz=64, batch=4, out=tmp_path / "ft", workers=0, lr0=0.05)
    best, last = load_model(str(result.best)).model, load_model(str(result.last)).model
    start = net.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in best.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in last.state_dict().items())
    assert json.loads((tmp_path / "ft" / "weights" / "scores.json").read_text()) == {"0": 0.3, "1": 0.1, "2": 0.2}
    shown = capsys.readouterr().out
    assert "start: val mAP50-95 0.3000" in shown and "epoch 2/2: loss " in shown


def test_a_yolov5_model_of_another_class_list_learns_the_datas_classes(data, tmp_path, capsys):
    """80 classes -> the data's 3 in yoloprune's loop, distilling from the 80-class original: only the output
    convolutions change shape, and the result evaluates on the data with its names."""
    pytest.importorskip("yolov5")
    from yoloprune.adapters import Loaded, load_model, save_model
    from yoloprune.adapters.yolov5 import from_config
    from yoloprune.data.datasets import load_detection_set
    from yoloprune.evaluate.coco import evaluate

    coco = randomize(from_config("yolov5n.yaml"))
    teacher = save_model(Loaded(coco, "yolov5", "t", {"half": False}), tmp_path / "coco.pt", {})
    pruned = copy.deepcopy(coco)
    yoloprune.prune(pruned, X, target_macs=0.6)
    path = save_model(Loaded(pruned, "yolov5", "p", {"half": False}), tmp_path / "p.pt", {})
    # two epochs: the validation after the first leaves the head's grids cached for the second's distillation
    result = finetune(path, data, teacher=teacher, epochs=2, imgsz=64, batch=4, out=tmp_path / "ft", workers=0)
    assert "the model predicts 80 classes, the dataset has 3" in capsys.readouterr().out
    net = load_model(str(result.best)).model
    names = load_detection_set(data, "train").names
    assert net.model[-1].nc == 3 and net.names == [names[i] for i in sorted(names)]
    shapes, before = {k: v.shape for k, v in net.state_dict().items()}, pruned.state_dict()
    assert {k for k, v in before.items() if shapes[k] != v.shape} == {
        f"model.24.m.{i}.{w}" for i in range(3) for w in ("weight", "bias")
    }
    assert evaluate(result.best, data, imgsz=64, batch=4).images == 4
    rebuilt = yoloprune.load(result.best)
    assert rebuilt.model[-1].nc == 3
