"""Detection datasets for evaluation: COCO JSON + images, or an ultralytics data yaml converted to COCO on the fly.

Class mapping: model class ``k`` is the ``k``-th category id in ascending order (for a yaml, category id ``k + 1``,
which is how ``yoloprune data synth`` writes its COCO files). Every problem is reported before any work starts.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from ..images import IMAGE_SUFFIXES


class DatasetError(ValueError):
    """A dataset that cannot be used as given (missing files, broken JSON, labels out of range...)."""


@dataclass
class DetectionSet:
    """Images with COCO ground truth, and the mapping from model class index to COCO category id."""

    images: list[Path]
    image_ids: list[int]
    coco: Any  # pycocotools.coco.COCO
    category_ids: list[int]
    names: dict[int, str]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.category_ids)


def load_detection_set(data: str | Path, split: str = "val", images: str | Path | None = None) -> DetectionSet:
    """A dataset from an ultralytics data yaml, a COCO annotation JSON (images found next to it, or ``images``), or a
    folder holding ``data.yaml`` or ``annotations/instances_<split>.json``."""
    data = Path(data)
    if data.is_dir():
        if (data / "annotations" / f"instances_{split}.json").is_file():
            return from_coco(data / "annotations" / f"instances_{split}.json", images)
        if (data / "data.yaml").is_file():
            return from_yaml(data / "data.yaml", split)
        raise DatasetError(f"{data} holds neither annotations/instances_{split}.json nor data.yaml")
    if not data.is_file():
        raise DatasetError(f"no such dataset: {data}")
    if data.suffix in (".yaml", ".yml"):
        return from_yaml(data, split)
    if data.suffix == ".json":
        return from_coco(data, images)
    raise DatasetError(f"{data}: expected a data yaml, a COCO JSON or a dataset folder")


def _coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def from_coco(path: Path, images: str | Path | None = None) -> DetectionSet:
    """A COCO annotation file; images are looked up in ``images`` or in the usual folders around the file."""
    try:
        dataset = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not readable JSON: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"{path} is not a COCO detection file: no '{key}' list")
    if not dataset["images"]:
        raise DatasetError(f"{path} lists no images")
    if not dataset["categories"]:
        raise DatasetError(f"{path} lists no categories")
    category_ids = sorted(int(c["id"]) for c in dataset["categories"])
    known = set(category_ids)
    image_ids = {int(im["id"]) for im in dataset["images"]}
    for ann in dataset["annotations"]:
        if int(ann.get("category_id", -1)) not in known:
            raise DatasetError(f"{path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
        if int(ann.get("image_id", -1)) not in image_ids:
            raise DatasetError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and bbox[2] >= 0 and bbox[3] >= 0):
            raise DatasetError(f"{path}: annotation {ann.get('id')} has a malformed bbox {bbox}")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3])
    root = _image_root(path, dataset["images"][0]["file_name"], images)
    files, ids = [], []
    for im in dataset["images"]:
        file = root / im["file_name"]
        if not file.is_file():
            raise DatasetError(f"{path}: image {file} is missing")
        files.append(file)
        ids.append(int(im["id"]))
    names = {
        k: next(c["name"] for c in dataset["categories"] if int(c["id"]) == cid) for k, cid in enumerate(category_ids)
    }
    return DetectionSet(files, ids, _coco(dataset), category_ids, names, str(path))


def _image_root(path: Path, first: str, images: str | Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DatasetError(f"no such image folder: {images}")
        return Path(images)
    split = path.stem.split("_")[-1]
    for root in (
        path.parent,
        path.parent.parent,
        path.parent.parent / "images" / split,
        path.parent.parent / "images",
        path.parent.parent / split,
    ):
        if (root / first).is_file():
            return root
    raise DatasetError(f"cannot find the images of {path} (first: {first}); pass the image folder")


def from_yaml(path: Path, split: str = "val") -> DetectionSet:
    """An ultralytics data yaml with YOLO txt labels, converted to COCO ground truth (category id = class + 1)."""
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path} is not a readable yaml: {exc}") from exc
    if not isinstance(cfg, dict) or split not in cfg or "names" not in cfg:
        raise DatasetError(f"{path} needs '{split}' and 'names' entries")
    names = cfg["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): str(v) for k, v in names.items()}
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: class names must be numbered 0..{len(names) - 1}")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    source = root / cfg[split]
    if source.is_file():  # a text file listing images
        files = [(root / line.strip()).resolve() for line in source.read_text().splitlines() if line.strip()]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise DatasetError(f"{path}: {split} images not found at {source} (nothing is downloaded)")
    if not files:
        raise DatasetError(f"{path}: no images in {source}")
    images, annotations = [], []
    for index, file in enumerate(files, 1):
        try:
            with Image.open(file) as im:
                width, height = im.size
        except OSError as exc:
            raise DatasetError(f"cannot read image {file}: {exc}") from exc
        images.append({"id": index, "file_name": str(file), "width": width, "height": height})
        label = _label_path(file)
        for n, line in enumerate(label.read_text().splitlines() if label.is_file() else [], 1):
            parts = line.split()
            if not parts:
                continue
            try:
                cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
            except (ValueError, IndexError) as exc:
                raise DatasetError(f"{label}:{n}: expected 'class cx cy w h', got {line!r}") from exc
            if not 0 <= cls < len(names):
                raise DatasetError(f"{label}:{n}: class {cls} is out of range 0..{len(names) - 1}")
            if not all(-0.01 <= v <= 1.01 for v in (cx, cy, w, h)):
                raise DatasetError(f"{label}:{n}: box {cx, cy, w, h} is not normalised to [0, 1]")
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": cls + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": v} for k, v in sorted(names.items())]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return DetectionSet(
        files,
        list(range(1, len(files) + 1)),
        _coco(dataset),
        [k + 1 for k in sorted(names)],
        names,
        str(path),
        {"yaml": cfg, "root": str(root)},
    )


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
