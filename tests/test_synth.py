"""The synthetic detection dataset: determinism, layout, YOLO/COCO agreement, input checks, ultralytics loading."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yoloprune.cli import main
from yoloprune.data import synth
from yoloprune.data.synth import CLASS_NAMES, synthesize

SMALL = {"train": 8, "val": 4, "imgsz": 96, "classes": 6, "seed": 3}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset shared by the read-only tests."""
    return synthesize(tmp_path_factory.mktemp("synth") / "ds", **SMALL).parent


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _yolo(path: Path) -> list[tuple[int, float, float, float, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(r[0]), *map(float, r[1:])) for r in rows]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path, small: Path) -> None:
    again = synthesize(tmp_path / "again", **SMALL).parent
    a, b = _files(small), _files(again)
    assert sorted(a) == sorted(b)
    assert len(a) == 2 * (8 + 4) + 2 + 3  # images + labels, two COCO jsons, data.yaml + meta.json + README.md
    different = [k for k in a if a[k] != b[k]]
    assert different == ["data.yaml"]  # only its absolute path differs
    assert a["data.yaml"].replace(str(small).encode(), b"") == b["data.yaml"].replace(str(again).encode(), b"")

    other = _files(synthesize(tmp_path / "other", **{**SMALL, "seed": 4}).parent)
    assert all(other[f"images/train/{i:06d}.jpg"] != a[f"images/train/{i:06d}.jpg"] for i in range(8))


def test_val_images_do_not_depend_on_train_count(tmp_path: Path, small: Path) -> None:
    fewer = synthesize(tmp_path / "fewer", **{**SMALL, "train": 2}).parent
    for i in range(4):
        assert (fewer / f"images/val/{i:06d}.jpg").read_bytes() == (small / f"images/val/{i:06d}.jpg").read_bytes()


def test_layout_and_yaml(small: Path) -> None:
    for split, count in (("train", 8), ("val", 4)):
        stems = [f"{i:06d}" for i in range(count)]
        assert sorted(p.stem for p in (small / "images" / split).iterdir()) == stems
        assert sorted(p.name for p in (small / "labels" / split).iterdir()) == [s + ".txt" for s in stems]
        im = cv2.imread(str(small / "images" / split / "000000.jpg"))
        assert im.shape == (96, 96, 3)
    data = yaml.safe_load((small / "data.yaml").read_text())
    assert data == {
        "path": str(small.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": 6,
        "names": {0: "circle", 1: "ring", 2: "triangle", 3: "notched_triangle", 4: "square", 5: "rounded_square"},
    }
    meta = json.loads((small / "meta.json").read_text())
    assert meta["version"] == synth.GENERATOR_VERSION
    assert meta["params"] == {"train": 8, "val": 4, "imgsz": 96, "classes": 6, "seed": 3}
    labels = sum(len(_yolo(p)) for p in (small / "labels" / "train").iterdir())
    assert meta["counts"]["train"] == {"images": 8, "objects": labels}
    assert "seed 3" in (small / "README.md").read_text()
    assert not [p for p in small.parent.iterdir() if p.name.endswith(".partial")]


def test_coco_matches_yolo_labels(small: Path) -> None:
    from pycocotools.coco import COCO

    for split, count in (("train", 8), ("val", 4)):
        coco = COCO(str(small / "annotations" / f"instances_{split}.json"))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5, 6]
        assert [coco.cats[k + 1]["name"] for k in range(6)] == list(CLASS_NAMES[:6])
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        assert sorted(coco.getAnnIds()) == list(range(1, len(coco.anns) + 1))
        total = 0
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            assert (info["width"], info["height"]) == (96, 96)
            lines = _yolo(small / "labels" / split / Path(info["file_name"]).with_suffix(".txt"))
            anns = sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])
            assert len(anns) == len(lines)
            for (cls, cx, cy, w, h), ann in zip(lines, anns, strict=True):
                assert ann["category_id"] == cls + 1
                assert ann["iscrowd"] == 0
                expected = [(cx - w / 2) * 96, (cy - h / 2) * 96, w * 96, h * 96]
                assert np.allclose(ann["bbox"], expected, atol=1.0)
                assert 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3] + 1
            total += len(lines)
        assert total == len(coco.anns) >= count  # every image holds at least one object on average


def test_boxes_inside_image_and_sizes_span_a_range(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "ds", train=40, val=1, imgsz=128, classes=12, seed=0).parent
    rows = [r for p in (root / "labels" / "train").iterdir() for r in _yolo(p)]
    boxes = np.array([r[1:] for r in rows])
    cx, cy, w, h = boxes.T
    assert (w > 0).all() and (h > 0).all()
    eps = 1e-6
    assert (cx - w / 2 >= -eps).all() and (cx + w / 2 <= 1 + eps).all()
    assert (cy - h / 2 >= -eps).all() and (cy + h / 2 <= 1 + eps).all()
    side = np.maximum(w, h)
    assert side.min() < 0.08 and side.max() > 0.4 and side.max() <= synth.MAX_REL_SIZE + 1e-6
    counts = [len(_yolo(p)) for p in (root / "labels" / "train").iterdir()]
    assert max(counts) >= 5 and min(counts) <= 2 and max(counts) <= synth.MAX_OBJECTS
    assert {r[0] for r in rows} == set(range(12))
    touching = ((cx - w / 2 < 1e-3) | (cy - h / 2 < 1e-3) | (cx + w / 2 > 1 - 1e-3) | (cy + h / 2 > 1 - 1e-3)).mean()
    assert 0.02 < touching < 0.5


def test_classes_selects_first_k(tmp_path: Path) -> None:
    root = synthesize(tmp_path / "ds", train=6, val=1, imgsz=64, classes=2).parent
    assert yaml.safe_load((root / "data.yaml").read_text())["names"] == {0: "circle", 1: "ring"}
    assert {r[0] for p in (root / "labels").rglob("*.txt") for r in _yolo(p)} == {0, 1}
    cats = json.loads((root / "annotations" / "instances_val.json").read_text())["categories"]
    assert cats == [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "ring", "supercategory": "shape"},
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": 0}, "train must be at least 1"),
        ({"val": 0}, "val must be at least 1"),
        ({"imgsz": 31}, "imgsz must be between 32 and 2048"),
        ({"imgsz": 2049}, "imgsz must be between 32 and 2048"),
        ({"classes": 0}, "classes must be between 1 and 12"),
        ({"classes": 13}, "classes must be between 1 and 12"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"train": 2.5}, "train must be an integer"),
        ({"imgsz": True}, "imgsz must be an integer"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        synthesize(tmp_path / "ds", **{"train": 1, "val": 1, "imgsz": 32, **kwargs})
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_refused_and_empty_folder_accepted(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        synthesize(out, train=1, val=1, imgsz=32)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthesize(empty, train=1, val=1, imgsz=32) == empty / "data.yaml"
    assert (empty / "images" / "val" / "000000.jpg").is_file()


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_render(*args: object) -> tuple[bytes, list]:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    real = synth.render
    monkeypatch.setattr(synth, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "ds", train=4, val=1, imgsz=32)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def _mask(name: str, seed: int) -> np.ndarray:
    """The 40 px mask of class ``name``, unrotated, centred at (50, 50), drawn from a fresh rng."""
    shape = synth.SHAPES[CLASS_NAMES.index(name)]
    sprite = synth._rasterise(synth._place(shape.build(np.random.default_rng(seed)), 0.0, 40.0, (50.0, 50.0)))
    x1, y1, x2, y2 = sprite.box
    assert max(x2 - x1, y2 - y1) == pytest.approx(40.0)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((50.0, 50.0))
    canvas = np.zeros((100, 100), bool)
    h, w = sprite.alpha.shape
    canvas[sprite.y0 : sprite.y0 + h, sprite.x0 : sprite.x0 + w] = sprite.alpha >= 128
    return canvas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusable_classes_differ_in_their_detail(seed: int) -> None:
    """Built from the same random draws, each class of a pair differs only by its detail."""
    masks = {name: _mask(name, seed) for name in CLASS_NAMES}
    assert not masks["ring"][50, 50] and masks["circle"][50, 50]  # the hole
    assert masks["ring"].sum() < 0.85 * masks["circle"].sum()
    assert (masks["notched_triangle"] & ~masks["triangle"]).sum() < 0.01 * masks[
        "triangle"
    ].sum()  # the notch only removes pixels (bar anti-aliasing)
    assert masks["notched_triangle"].sum() < 0.97 * masks["triangle"].sum()
    assert (masks["rounded_square"] & ~masks["square"]).sum() < 0.01 * masks["square"].sum()
    assert masks["rounded_square"].sum() < 0.98 * masks["square"].sum()
    assert masks["plus"][50, 33] and not masks["plus"][33, 33]  # arms along the axes, empty corners
    assert masks["x_cross"][36, 36] and not masks["x_cross"][50, 33]  # arms along the diagonals
    assert masks["star5"].sum() != masks["star6"].sum()
    assert masks["hexagon"].sum() > masks["star6"].sum()


def test_ultralytics_reads_the_dataset(small: Path) -> None:
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(small / "data.yaml"), autodownload=False)
    assert data["nc"] == 6
    assert data["names"] == dict(enumerate(CLASS_NAMES[:6]))
    assert Path(data["train"]) == (small / "images" / "train").resolve()
    assert Path(data["val"]) == (small / "images" / "val").resolve()

    ds = YOLODataset(img_path=data["val"], data=data, imgsz=96, augment=False, task="detect")
    coco = json.loads((small / "annotations" / "instances_val.json").read_text())
    assert len(ds) == 4
    assert sum(len(label["cls"]) for label in ds.labels) == len(coco["annotations"])


def test_progress_without_tqdm_and_command_line(
    tmp_path: Path, small: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # importing tqdm now fails
    assert main(["data", "synth", "-o", str(tmp_path / "cli"), *(f"--{k}={v}" for k, v in SMALL.items())]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "train: 8/8" in err and "val: 4/4" in err
    assert (tmp_path / "cli" / "images/val/000003.jpg").read_bytes() == (small / "images/val/000003.jpg").read_bytes()
    assert main(["data", "synth", "-o", str(tmp_path / "cli")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
