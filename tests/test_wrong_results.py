"""Inputs that used to give silently wrong results: EXIF-rotated photos, polygon labels, a sweep folder reused with
other settings, non-finite numbers, wrapped models, empty evaluations, broken labels and custom scores."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps
from torch import nn

import yoloprune
from yoloprune.adapters import resolve
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.data.batches import LabelledImages
from yoloprune.data.datasets import load_detection_set
from yoloprune.evaluate.coco import Runner, evaluate
from yoloprune.images import Preprocess, image_size, read_image
from yoloprune.workflows import pipeline
from yoloprune.workflows import sweep as sweep_module
from yoloprune.workflows.sensitivity import write_ratios

ORIENTATION = 0x0112
# Stored pixels whose EXIF orientation shows them as the upright image (PIL's exif_transpose undoes these).
STORED = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _write_jpeg(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """``upright`` (RGB) written as a JPEG stored turned, with the EXIF tag that shows it upright again."""
    image = Image.fromarray(upright)
    if STORED.get(orientation):
        image = image.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95, exif=exif.tobytes())
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- EXIF orientation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_size_and_pixels_are_upright_for_every_orientation(tmp_path, orientation):
    stored = np.zeros((32, 64, 3), np.uint8)  # four distinct quadrants, so any wrong turn or flip shows
    stored[:16, :32], stored[:16, 32:], stored[16:, :32], stored[16:, 32:] = (250, 0, 0), (0, 250, 0), (0, 0, 250), 250
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # Pillow's reading of the tag is the reference
    pixels = read_image(path)[..., ::-1]
    assert image_size(path) == (shown.shape[1], shown.shape[0]) == (pixels.shape[1], pixels.shape[0])
    assert image_size(path) == ((32, 64) if orientation >= 5 else (64, 32))
    assert np.abs(pixels.astype(int) - shown.astype(int)).mean() < 2


def _box_finder(x: torch.Tensor) -> torch.Tensor:
    """A perfect detector of the one bright rectangle in a letterboxed batch of one: (1, 6) x1 y1 x2 y2 score class."""
    ys, xs = (x[0].mean(0) > 0.75).nonzero(as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 1.0, 0.0]])


def _rectangles(root: Path, orientations: tuple[int, ...]) -> Path:
    """A one-class yaml dataset of 64x32 upright images, each stored turned for its EXIF ``orientations`` entry."""
    boxes = [(16, 8, 40, 24), (8, 0, 56, 16)]  # x1 y1 x2 y2 in upright pixels, on 8-pixel JPEG block edges
    for k, (orientation, (x1, y1, x2, y2)) in enumerate(zip(orientations, boxes)):
        upright = np.full((32, 64, 3), 20, np.uint8)
        upright[y1:y2, x1:x2] = 235
        _write_jpeg(root / "images" / f"{k}.jpg", upright, orientation)
        (root / "labels").mkdir(exist_ok=True)
        label = f"0 {(x1 + x2) / 128} {(y1 + y2) / 64} {(x2 - x1) / 64} {(y2 - y1) / 32}\n"
        (root / "labels" / f"{k}.txt").write_text(label)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images\nval: images\nnames: [box]\n")
    return root / "data.yaml"


def test_rotated_photos_score_like_the_same_photos_stored_upright(tmp_path):
    upright = _rectangles(tmp_path / "upright", (1, 1))
    rotated = _rectangles(tmp_path / "rotated", (6, 8))
    detector = Runner(_box_finder, "nms", 1, Preprocess(), batch_limit=1)
    scores = {}
    for name, data in (("upright", upright), ("rotated", rotated)):
        ds = load_detection_set(data)
        assert [(im["width"], im["height"]) for im in ds.coco.dataset["images"]] == [(64, 32), (64, 32)]
        result = evaluate(detector, ds, imgsz=64, batch=1)
        scores[name] = (result.map50_95, result.map50)
    assert scores["rotated"] == scores["upright"] == (pytest.approx(1.0), pytest.approx(1.0))
    a, b = LabelledImages(upright, "val", 64), LabelledImages(rotated, "val", 64)  # training batches agree too
    for k in range(2):
        assert torch.equal(a[k][1], b[k][1]) and (a[k][0] - b[k][0]).abs().mean() < 0.01


# --- polygon labels ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("wrong") / "data", train=2, val=2, imgsz=64, classes=2, seed=1).parent


def _copy(dataset: Path, tmp_path: Path, label: str | None = None, extra: str = "") -> tuple[Path, Path]:
    """A copy of the dataset whose first val label file reads ``label``; returns the yaml and that label file."""
    root = tmp_path / "copy"
    shutil.copytree(dataset, root)
    data = root / "data.yaml"
    data.write_text(data.read_text().replace(str(dataset), str(root)) + extra)
    first = sorted((root / "labels" / "val").glob("*.txt"))[0]
    if label is not None:
        first.write_text(label)
    return data, first


@pytest.mark.parametrize(
    ("label", "extra"),
    [
        ("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n", ""),  # a segment polygon
        ("0 0.25 0.5 0.5 0.25 0.75 0.5 0.5 0.75\n", ""),  # OBB corners (a diamond)
        ("0 0.5 0.5 0.5 0.5 0.1 0.2 2 0.3 0.4 1\n", "kpt_shape: [2, 3]\n"),  # a pose row: keypoints after the box
    ],
    ids=["segment", "obb", "pose"],
)
def test_polygon_and_pose_labels_become_their_boxes(dataset, tmp_path, label, extra):
    data, _ = _copy(dataset, tmp_path, label, extra)
    ds = load_detection_set(data)
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[ds.image_ids[0]]))
    assert [a["bbox"] for a in anns] == [pytest.approx([16.0, 16.0, 32.0, 32.0])]


LABEL_ERRORS = [
    ("0 0.5 0.5 0.2 0.2 0.1\n", 1, "expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...'"),
    ("0 0.1 0.1 0.5 0.1 0.5 0.5 0.1\n", 1, "expected 'class cx cy w h' or a polygon"),  # an odd coordinate count
    ("0 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.5 0.1 0.5 0.5\n", None, "mixes boxes and polygons (lines 1 and 2)"),
    ("1 0.5 0.5 0.2 0.2\n0 0.5 0.5 -0.005 0.2\n", 2, "box width and height must not be negative, got -0.005, 0.2"),
    ("0 nan 0.5 0.2 0.2\n", 1, "holds a value that is not a finite number"),
    ("0 0.1 0.1 0.5 0.1 0.5 inf\n", 1, "holds a value that is not a finite number"),
    ("0 0.1 0.1 1.5 0.1 0.5 0.5\n", 1, "the polygon's coordinates are not normalised to [0, 1]"),
]


@pytest.mark.parametrize(("label", "line", "message"), LABEL_ERRORS)
def test_bad_label_lines_fail_naming_file_and_line(dataset, tmp_path, capsys, label, line, message):
    data, first = _copy(dataset, tmp_path, label)
    before = _digest(first)
    assert main(["eval", "yolov8n.yaml", "--data", str(data), "--imgsz", "64"]) == 2
    where = f"{first}:{line}:" if line else f"{first}:"
    assert _err(capsys).startswith(f"yoloprune eval: error: {where} {message}")
    assert _digest(first) == before


# --- COCO files -------------------------------------------------------------------------------------------------


def _damage_coco(coco: dict, damage: str) -> None:
    if damage == "image id twice":
        coco["images"][1]["id"] = coco["images"][0]["id"]
    elif damage == "annotation id twice":
        coco["annotations"][1]["id"] = coco["annotations"][0]["id"]
    elif damage == "category id twice":
        coco["categories"][1]["id"] = coco["categories"][0]["id"]
    elif damage == "image without id":
        del coco["images"][1]["id"]
    elif damage == "NaN box":
        coco["annotations"][0]["bbox"][0] = float("nan")
    elif damage == "negative width":
        coco["annotations"][0]["bbox"][2] = -3.0
    elif damage == "text in box":
        coco["annotations"][0]["bbox"][1] = "7"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("image id twice", "image id 1 appears more than once"),
        ("annotation id twice", "annotation id 1 appears more than once"),
        ("category id twice", "category id 1 appears more than once"),
        ("image without id", "image #1 has no integer 'id' (of at most 18 digits)"),
        ("NaN box", "annotation 1 has a malformed 'bbox' (want four finite numbers"),
        ("negative width", "annotation 1 has a malformed 'bbox' (want four finite numbers"),
        ("text in box", "annotation 1 has a malformed 'bbox' (want four finite numbers"),
    ],
)
def test_bad_coco_files_fail_naming_the_file(dataset, tmp_path, capsys, damage, message):
    _, _ = _copy(dataset, tmp_path)
    path = tmp_path / "copy" / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    _damage_coco(coco, damage)
    path.write_text(json.dumps(coco))
    before = _digest(path)
    assert main(["eval", "yolov8n.yaml", "--data", str(path), "--imgsz", "64"]) == 2
    err = _err(capsys)
    assert err.startswith(f"yoloprune eval: error: {path}: {message}"), err
    assert _digest(path) == before


# --- evaluation size --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["0", "-1"])
def test_max_images_below_one_is_refused(dataset, capsys, count):
    argv = ["eval", "yolov8n.yaml", "--data", str(dataset / "data.yaml"), "--imgsz", "64", "--max-images", count]
    assert main(argv) == 2
    expected = f"yoloprune eval: error: argument --max-images: must be at least 1, got {count} (see yoloprune eval"
    assert _err(capsys) == f"{expected} --help)"


# --- non-finite and out-of-range numbers ------------------------------------------------------------------------

NUMBER_CASES = {
    "prune --target-latency nan": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--target-latency", "nan"],
        "target_latency_ms must be positive, got nan",
    ),
    "prune --ratio nan": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--ratio", "nan"],
        "ratio must be in (0, 1), got nan",
    ),
    "prune --target-macs inf": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--target-macs", "inf"],
        "target_macs is a fraction of the original and must be in (0, 1), got inf",
    ),
    "prune --target-params nan": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--target-params", "nan"],
        "target_params is a fraction of the original and must be in (0, 1), got nan",
    ),
    "prune --max-ratio nan": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--max-ratio", "nan"],
        "max_ratio must be in (0, 1], got nan",
    ),
    "prune --max-drop nan": (
        ["prune", "yolov8n.yaml", "-o", "{out}/o.pt", "--max-drop", "nan"],
        "max_drop must be in [0, 1], got nan",
    ),
    "sensitivity --target-macs nan": (
        ["sensitivity", "yolov8n.yaml", "--data", "{data}", "-o", "{out}", "--target-macs", "nan"],
        "target_macs is a fraction of the original and must be in (0, 1), got nan",
    ),
    "finetune --kd-weight nan": (
        ["finetune", "yolov8n.yaml", "--data", "{data}", "-o", "{out}", "--kd-weight", "nan"],
        "kd_weight must be >= 0, got nan",
    ),
    "finetune --sparsity -1": (
        ["finetune", "yolov8n.yaml", "--data", "{data}", "-o", "{out}", "--sparsity", "-1"],
        "sparsity must be >= 0, got -1.0",
    ),
    "finetune --lr0 0": (
        ["finetune", "yolov8n.yaml", "--data", "{data}", "-o", "{out}", "--lr0", "0"],
        "lr0 must be positive, got 0.0",
    ),
    "sweep --kd-weight inf": (
        ["sweep", "yolov8n.yaml", "--data", "{data}", "-o", "{out}", "--kd-weight", "inf"],
        "kd_weight must be >= 0, got inf",
    ),
    "eval --conf nan": (
        ["eval", "yolov8n.yaml", "--data", "{data}", "--conf", "nan"],
        "conf must be in [0, 1], got nan",
    ),
    "eval --iou 1.5": (["eval", "yolov8n.yaml", "--data", "{data}", "--iou", "1.5"], "iou must be in [0, 1], got 1.5"),
    "recipe target_latency_ms .nan": (
        ["run", "{recipe}", "-o", "{out}"],
        "prune.target_latency_ms must be positive, got nan",
    ),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_non_finite_and_out_of_range_numbers_are_refused(dataset, tmp_path, capsys, case):
    argv, message = NUMBER_CASES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: yolov8n.yaml\nprune: {target_macs: null, target_latency_ms: .nan}\n")
    out = tmp_path / "out"
    argv = [a.format(data=dataset / "data.yaml", recipe=recipe, out=out) for a in argv]
    assert main(argv) == 2
    assert _err(capsys) == f"yoloprune {argv[0]}: error: {message}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: yoloprune.prune(m, torch.zeros(1, 3, 8, 8), target_latency_ms=math.nan), "target_latency_ms must"),
        (lambda m: yoloprune.prune(m, torch.zeros(1, 3, 8, 8), max_ratio=math.inf), "max_ratio must be in (0, 1]"),
        (lambda m: evaluate(m, "unused", imgsz=64, conf=math.nan), "conf must be in [0, 1], got nan"),
        (lambda m: yoloprune.finetune(m, "unused", kd_weight=math.nan), "kd_weight must be >= 0, got nan"),
        (lambda m: write_ratios("unused", [], math.nan, "stage"), "target_macs is a fraction of the original"),
    ],
)
def test_the_python_api_refuses_them_too(call, message):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(ValueError) as info:
        call(model)
    assert message in str(info.value)


# --- wrapped models ---------------------------------------------------------------------------------------------


def test_data_parallel_models_prune_as_their_inner_model():
    x = torch.zeros(1, 3, 64, 64)
    plain, inner = from_config("yolov8n.yaml"), from_config("yolov8n.yaml")
    inner.load_state_dict(plain.state_dict())
    expected = yoloprune.prune(plain, x, ratio=0.3)
    report = yoloprune.prune(nn.DataParallel(inner), x, ratio=0.3)
    assert report.family == "ultralytics" == expected.family
    assert report.removed == expected.removed and report.plan == expected.plan != {}
    assert report.params_after == expected.params_after == sum(p.numel() for p in inner.parameters())


def test_distributed_data_parallel_resolves_to_its_inner_model(tmp_path):
    import torch.distributed as dist

    model = from_config("yolov8n.yaml")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        target = resolve(nn.parallel.DistributedDataParallel(model))
    finally:
        dist.destroy_process_group()
    assert target.family == "ultralytics" and target.module is model


# --- custom importance ------------------------------------------------------------------------------------------


def too_few(model, graph):
    return np.ones(3)


def with_nan(model, graph):
    scores = np.arange(graph.num_comps, dtype=float)
    scores[1] = np.nan
    return torch.from_numpy(scores)


def as_column(model, graph):
    return np.ones((graph.num_comps, 1))


@pytest.mark.parametrize(
    ("importance", "message"),
    [
        (too_few, "returned scores of shape (3,); the graph has {n} channels, one score each"),
        (with_nan, "returned 1 NaN or infinite scores of {n}"),
        (as_column, "returned scores of shape ({n}, 1); the graph has {n} channels, one score each"),
    ],
)
def test_custom_importance_with_wrong_scores_is_refused(importance, message):
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    x = torch.zeros(1, 3, 16, 16)
    n = yoloprune.graph.build(model, x).num_comps
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        yoloprune.prune(model, x, ratio=0.5, importance=importance)
    where = f"importance {importance.__qualname__} (module {importance.__module__})"
    assert str(info.value) == f"{where} {message.format(n=n)}"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was pruned


# --- sweep folders ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_sweep(dataset, tmp_path_factory):
    """A sweep folder with its points done (measurement stubbed: only the keying matters here)."""
    root = tmp_path_factory.mktemp("sweep")
    model, other = "yolov8n.yaml", root / "other.pt"
    other.write_bytes(b"another model")  # refused before it is read
    out = root / "s"
    argv = ["sweep", model, "--data", str(dataset / "data.yaml"), "-o", str(out), "--targets", "0.7"]
    argv += ["--imgsz", "32", "--threads", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "measure", _fake_measure)
        mp.setattr(sweep_module, "_new_classes", lambda *a: "")  # an 80-class config on 2-class data, never trained
        assert main(argv) == 0
    return argv, model, other, out


def _fake_measure(checkpoint, *args, **kwargs):
    return pipeline.Measured(1, 1, 0.5, 0.5, 1.0, Path("x.onnx"), 0.0)


def _replace(argv: list[str], flag: str, value: str | None) -> list[str]:
    if flag not in argv:
        return argv + [flag] + ([value] if value is not None else [])
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, m, o: _replace(a, "--imgsz", "64"), "imgsz 32 there, 64 here"),
        (lambda a, m, o: [str(o) if x == m else x for x in a], "model 'yolov8n.yaml' there, 'sha256:"),
        (lambda a, m, o: _replace(a, "--importance", "bn"), "importance 'auto' there, 'bn' here"),
        (lambda a, m, o: _replace(a, "--global", None), "global_ranking None there, True here"),
        (lambda a, m, o: _replace(a, "--round-to", "1"), "round_to 8 there, 1 here"),
        (lambda a, m, o: _replace(a, "--threads", "2"), "threads 1 there, 2 here"),
        (lambda a, m, o: _replace(a, "--cost", "latency"), "cost None there, 'latency' here"),
        (lambda a, m, o: _replace(a, "--finetune-epochs", "1"), "finetune None there, {'epochs': 1,"),
        (
            lambda a, m, o: _replace(a, "--data", str(Path(a[3]).parent / "annotations" / "instances_val.json")),
            "data '",
        ),
    ],
    ids=["imgsz", "model", "importance", "global", "round_to", "threads", "cost", "finetune", "data"],
)
def test_a_sweep_folder_made_otherwise_is_refused(finished_sweep, capsys, monkeypatch, change, message):
    argv, model, other, out = finished_sweep
    before = {p: _digest(p) for p in sorted(out.rglob("*")) if p.is_file()}
    monkeypatch.setattr(pipeline, "measure", _fake_measure)
    assert main(change(argv, model, other)) == 2
    err = _err(capsys)
    assert err.startswith(f"yoloprune sweep: error: {out} holds a sweep made with other settings (") and message in err
    assert err.endswith("; use another -o")
    assert {p: _digest(p) for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_a_sweep_folder_made_the_same_way_is_resumed(finished_sweep, tmp_path, monkeypatch):
    argv, *_, out = finished_sweep
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    calls = []
    monkeypatch.setattr(pipeline, "measure", lambda *a, **k: calls.append(Path(a[0]).name) or _fake_measure(*a))
    monkeypatch.setattr(sweep_module, "_new_classes", lambda *a: "")
    assert main(_replace(_replace(argv, "--targets", "0.7,0.5"), "-o", str(copy))) == 0
    assert calls == ["pruned-0.500.pt"]  # more targets: only the new point is computed, the others are reused


def test_sweep_points_without_their_settings_are_refused(finished_sweep, tmp_path, capsys):
    argv, *_, out = finished_sweep
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    (copy / "sweep.json").unlink()
    assert main(_replace(argv, "-o", str(copy))) == 2
    assert (
        _err(capsys)
        == f"yoloprune sweep: error: {copy} holds sweep points without a readable sweep.json; use another -o"
    )


def test_recorded_settings_are_plain_json(finished_sweep):
    *_, out = finished_sweep
    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["imgsz"] == 32 and recorded["finetune"] is None and recorded["model"] == "yolov8n.yaml"
    assert yaml.safe_load((Path(recorded["data"])).read_text())["names"]


def test_model_files_are_keyed_by_their_content(dataset, tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "elsewhere" / "b.pt", tmp_path / "c.pt"
    b.parent.mkdir()
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    c.write_bytes(b"weightz")
    key = {p.name: sweep_module.sweep_key(p, dataset / "data.yaml", imgsz=32) for p in (a, b, c)}
    assert key["a.pt"] == key["b.pt"] != key["c.pt"]
    assert key["a.pt"]["model"] == "sha256:" + hashlib.sha256(b"weights").hexdigest()[:16]


# --- the exactness check and the figures a prune reports ---------------------------------------------------------


def test_verify_keeps_the_models_mode_and_fails_on_non_finite_outputs():
    net = from_config("yolov8n.yaml").train()
    yoloprune.prune(net, torch.zeros(1, 3, 64, 64), ratio=0.3, verify=True)
    assert net.training and all(m.training for m in net.modules())
    with pytest.raises(yoloprune.PruneError, match="the outputs hold NaN or inf"):
        yoloprune.prune(from_config("yolov8n.yaml"), torch.full((1, 3, 64, 64), math.nan), ratio=0.3, verify=True)


def test_a_calibrated_prune_reports_the_seconds_it_ran(tmp_path, monkeypatch):
    """Calibration's seconds were added to a total that already held them: a prune reported more than it ran."""
    from yoloprune.pruning import calibrate

    images = synthesize(tmp_path / "d", train=2, val=2, imgsz=32, classes=2, seed=0).parent / "images" / "train"
    monkeypatch.setattr(calibrate, "calibrate", lambda *_, **__: calibrate.Calibration(images=2, seconds=1e9))
    report = yoloprune.prune(from_config("yolov8n.yaml"), torch.zeros(1, 3, 64, 64), ratio=0.3, calib=images)
    assert 0 < report.seconds < 1e9  # the call's own clock, each second counted once
