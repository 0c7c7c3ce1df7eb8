"""COCO evaluation: an oracle scores 1.0 through letterbox, decode, NMS and category mapping; bad data fails early."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from yoloprune.data import synthesize
from yoloprune.data.datasets import DatasetError, load_detection_set
from yoloprune.evaluate.coco import Runner, decode, evaluate
from yoloprune.images import Preprocess, letterbox, read_image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, train=4, val=6, imgsz=96, classes=4, seed=5)
    return root


def oracle(ds, imgsz: int, layout: str, jitter: float = 0.0) -> Runner:
    """Replays the ground truth of the images in order, as the model's raw output would."""
    state = {"next": 0}

    def run(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for _ in range(x.shape[0]):
            index = state["next"]
            state["next"] += 1
            image = read_image(ds.images[index])
            _, scale, (left, top) = letterbox(image, imgsz)
            anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[ds.image_ids[index]]))
            rows = []
            for a in anns:
                x0, y0, w, h = np.array(a["bbox"]) * scale + [left, top, 0, 0]
                k = ds.category_ids.index(a["category_id"])
                onehot = [0.0] * ds.nc
                onehot[k] = 0.9
                rows.append([x0 + w / 2 + jitter, y0 + h / 2, w, h, *onehot])
            rows += [[5, 5, 2, 2, *([0.0] * ds.nc)]] * (8 - len(rows))  # padding anchors with no score
            outs.append(torch.tensor(rows[:8] if len(rows) <= 8 else rows, dtype=torch.float32))
        width = max(o.shape[0] for o in outs)
        batch = torch.stack([torch.cat([o, torch.zeros(width - o.shape[0], o.shape[1])]) for o in outs])
        return batch.transpose(1, 2) if layout == "xywh-class" else batch

    return Runner(run, layout, ds.nc, Preprocess())


@pytest.mark.parametrize("source", ["yaml", "coco"])
def test_oracle_scores_one(dataset, source):
    data = dataset / "data.yaml" if source == "yaml" else dataset / "annotations" / "instances_val.json"
    ds = load_detection_set(data)
    result = evaluate(oracle(ds, 128, "xywh-class"), ds, imgsz=128, batch=4)
    assert result.images == 6 and result.map50_95 == pytest.approx(1.0) and result.map50 == pytest.approx(1.0)


def test_shifted_boxes_score_less(dataset):
    ds = load_detection_set(dataset / "data.yaml")
    shifted = evaluate(oracle(ds, 128, "xywh-class", jitter=3.0), ds, imgsz=128, batch=3)
    assert 0.2 < shifted.map50_95 < 0.95


def test_decode_layouts_agree():
    boxes = torch.tensor([[20.0, 20.0, 10.0, 10.0], [21.0, 20.0, 10.0, 10.0], [60.0, 60.0, 8.0, 8.0]])
    cls = torch.tensor([[0.9, 0.1], [0.8, 0.05], [0.05, 0.7]])
    ultra = torch.cat([boxes, cls], 1).T[None]  # (1, 4 + nc, A)
    v5 = torch.cat([boxes, torch.ones(3, 1), cls], 1)[None]  # (1, A, 5 + nc)
    a = decode(ultra, "xywh-class", 2, conf=0.25)[0]
    b = decode(v5, "xywh-obj-class", 2, conf=0.25)[0]
    assert torch.equal(a, b) and a.shape == (2, 6)  # the second box is suppressed by NMS
    assert a[:, 5].tolist() == [0.0, 1.0] and a[0, :4].tolist() == [15.0, 15.0, 25.0, 25.0]


def test_ultralytics_model_runs_end_to_end(dataset):
    from yoloprune.adapters.ultralytics import from_config

    model = from_config("yolov8n.yaml")
    with pytest.raises(DatasetError, match="class count mismatch: the model predicts 80 classes"):
        evaluate(model, dataset / "data.yaml", imgsz=64)
    model = from_config({**model.yaml, "nc": 4})
    result = evaluate(model, dataset / "data.yaml", imgsz=64, batch=4)
    assert result.images == 6 and 0.0 <= result.map50_95 <= 1.0 and result.detections > 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("broken_json", "is not readable JSON"),
        ("label_out_of_range", "class 9 is out of range 0..3"),
        ("bad_label_line", "expected 'class cx cy w h'"),
        ("no_images", "no images in"),
        ("unknown_category", "unknown category_id"),
    ],
)
def test_bad_datasets_fail_with_a_clear_message(dataset, tmp_path, damage, message):
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    target = root / "data.yaml"
    if damage == "broken_json":
        (root / "annotations" / "instances_val.json").write_text("{nope")
        target = root / "annotations" / "instances_val.json"
    elif damage == "label_out_of_range":
        next((root / "labels" / "val").glob("*.txt")).write_text("9 0.5 0.5 0.1 0.1\n")
    elif damage == "bad_label_line":
        next((root / "labels" / "val").glob("*.txt")).write_text("1 0.5\n")
    elif damage == "no_images":
        for p in (root / "images" / "val").iterdir():
            p.unlink()
    elif damage == "unknown_category":
        path = root / "annotations" / "instances_val.json"
        coco = json.loads(path.read_text())
        coco["annotations"][0]["category_id"] = 77
        path.write_text(json.dumps(coco))
        target = path
    if damage != "broken_json" and damage != "unknown_category":
        data = target.read_text().replace(str(dataset), str(root))
        target.write_text(data)
    with pytest.raises(DatasetError, match=message):
        load_detection_set(target)


def test_onnx_file_evaluates_like_its_pytorch_model(dataset, tmp_path):
    from yoloprune.adapters.ultralytics import from_config
    from yoloprune.evaluate.coco import runner_for
    from yoloprune.export.onnx import export_onnx

    torch.manual_seed(0)
    model = from_config({**from_config("yolov8n.yaml").yaml, "nc": 4})
    with torch.no_grad():
        for branch in model.model[-1].cv3:
            branch[-1].bias.fill_(1.0)  # enough confident detections to compare
    onnx = tmp_path / "m.onnx"
    export_onnx(model, onnx, imgsz=64)
    ours, theirs = runner_for(model), runner_for(onnx)
    assert (theirs.layout, theirs.nc, theirs.preprocess) == (ours.layout, ours.nc, ours.preprocess)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(ours.run(x), theirs.run(x), rtol=1e-3, atol=1e-3)
    a = evaluate(model, dataset / "data.yaml", imgsz=64, batch=2)
    b = evaluate(onnx, dataset / "data.yaml", imgsz=64)
    # random weights score every anchor alike, so NMS ties may flip a few boxes, never many
    assert a.images == b.images == 6 and a.detections > 100
    assert abs(a.detections - b.detections) <= 0.05 * a.detections
