"""Detection datasets for evaluation: COCO JSON + images, or an ultralytics data yaml converted to COCO on the fly.

Class mapping: model class ``k`` is the ``k``-th category id in ascending order (for a yaml, category id ``k + 1``,
which is how ``yoloprune data synth`` writes its COCO files). Every problem is reported before any work starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yoloprune.images import IMAGE_SUFFIXES, image_size
from yoloprune.options import MAX_CLASSES


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
    """A COCO annotation file; images are looked up in ``images`` or in the usual folders around the file. A
    malformed entry is named by its list and id (or position), never by what it holds."""
    try:
        dataset = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # json's and the codec's errors are ValueErrors
        problem = str(exc).splitlines()[0][:200] if isinstance(exc, ValueError) and str(exc) else type(exc).__name__
        raise DatasetError(f"{path} is not readable JSON: {problem}") from None
    if not isinstance(dataset, dict):
        raise DatasetError(f"{path} is not a COCO detection file: not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"{path} is not a COCO detection file: no '{key}' list")
    if not dataset["images"]:
        raise DatasetError(f"{path} lists no images")
    if not dataset["categories"]:
        raise DatasetError(f"{path} lists no categories")
    category_ids = sorted(_unique_ids(path, dataset["categories"], "category"))
    known = set(category_ids)
    image_ids = set(_unique_ids(path, dataset["images"], "image"))
    _unique_ids(path, dataset["annotations"], "annotation")
    _require_text(path, dataset["images"], "image", "file_name")
    _require_text(path, dataset["categories"], "category", "name")
    for ann in dataset["annotations"]:
        where = f"{path}: annotation {ann['id']}"  # an integer of at most 18 digits (``_unique_ids``)
        ann["category_id"] = _integer(ann.get("category_id"), f"{where} has a 'category_id' that is not an integer")
        if ann["category_id"] not in known:
            raise DatasetError(f"{where} has unknown category_id {ann['category_id']}")
        ann["image_id"] = _integer(ann.get("image_id"), f"{where} has an 'image_id' that is not an integer")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{where} refers to unknown image {ann['image_id']}")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_finite, bbox)) and min(bbox[2:]) >= 0):
            raise DatasetError(
                f"{where} has a malformed 'bbox' (want four finite numbers x, y, width, height; width and height >= 0)"
            )
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3])
        if ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], float):
            raise DatasetError(f"{where} has an 'iscrowd' that is not 0 or 1")
        if not _finite(ann["area"]) or ann["area"] < 0:
            raise DatasetError(f"{where} has an 'area' that is not a finite number >= 0")
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


MAX_ID = 10**18
"""The largest COCO id (or category_id, image_id) accepted: ids are echoed in messages, so they stay short."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any, problem: str) -> int:
    """``value`` as an int: an integer, a whole float (1.0) or a string of digits up to ``MAX_ID``; else a
    ``DatasetError`` saying ``problem`` (which never repeats the value)."""
    digits = isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18
    if digits or (_finite(value) and float(value).is_integer()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not -MAX_ID <= value <= MAX_ID:
        raise DatasetError(problem)
    return value


def _unique_ids(path: Path, entries: list[Any], kind: str) -> list[int]:
    """The integer ``id`` of every entry of a COCO list; a clear error for a missing or repeated one."""
    ids: list[int] = []
    seen: set[int] = set()
    for n, entry in enumerate(entries):
        value = entry.get("id") if isinstance(entry, dict) else None
        if not (isinstance(value, int) and not isinstance(value, bool) and -MAX_ID <= value <= MAX_ID):
            raise DatasetError(f"{path}: {kind} #{n} has no integer 'id' (of at most 18 digits)")
        if value in seen:
            raise DatasetError(f"{path}: {kind} id {value} appears more than once")
        seen.add(value)
        ids.append(value)
    return ids


def _require_text(path: Path, entries: list[dict[str, Any]], kind: str, key: str) -> None:
    """Every entry of a COCO list (each known to have an ``id``) has a non-empty string ``key`` of at most 4096
    printable characters."""
    for entry in entries:
        value = entry.get(key)
        if not isinstance(value, str) or not value or len(value) > 4096 or not value.isprintable():
            raise DatasetError(f"{path}: {kind} {entry['id']} has no '{key}' (a line of at most 4096 characters)")


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
    if not isinstance(cfg, dict) or split not in cfg:
        raise DatasetError(f"{path} needs a '{split}' entry")
    if "channels" in cfg and (cfg["channels"] != 3 or isinstance(cfg["channels"], bool)):
        raise DatasetError(f"{path}: yoloprune reads every image as 3 channels (BGR); 'channels' must be 3 or absent")
    names = _class_names(path, cfg)
    root = _root(path, cfg)
    entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
    files = [file for entry in entries for file in _image_files(path, root, entry, split)]
    if not files:
        raise DatasetError(f"{path}: '{split}' names no images")
    keypoints = _keypoint_values(path, cfg.get("kpt_shape"))
    images, annotations = [], []
    for index, file in enumerate(files, 1):
        try:
            width, height = image_size(file)  # upright, as the model sees the image
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc
        images.append({"id": index, "file_name": str(file), "width": width, "height": height})
        for cls, (x1, y1, x2, y2) in _read_labels(_label_path(file), len(names), keypoints):
            box = [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height]
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


TRAINER_SPLITS = ("train", "val", "test", "minival")
"""The keys of a data yaml that name images, as ultralytics' dataset check reads them."""


def trainer_config(path: str | Path) -> dict[str, Any]:
    """A data yaml as a trainer must be handed it: every split resolved as yoloprune resolves it (absolute paths
    under the yaml's own ``path:``, itself taken from the yaml's folder), the class names as checked, and no
    ``download`` script. ultralytics resolves a relative ``path:`` against the current folder instead and runs
    ``download`` when it then finds no images, so the user's yaml itself is never given to it."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text())
    root = _root(path, cfg)
    names = _class_names(path, cfg)
    config = {k: v for k, v in cfg.items() if k not in ("download", "path", *TRAINER_SPLITS)}
    config.update({"path": str(root), "names": names, "nc": len(names)})
    for split in TRAINER_SPLITS:
        entries = cfg.get(split)
        if isinstance(entries, str) and entries.strip():
            config[split] = str(root / entries)
        elif isinstance(entries, list) and entries and all(isinstance(e, str) and e.strip() for e in entries):
            config[split] = [str(root / e) for e in entries]
    return config


TRAINER_DATA = "dataset.yaml"
"""The name of the checked data yaml ``write_trainer_config`` writes into a run's folder."""


def write_trainer_config(data: str | Path, folder: str | Path) -> Path:
    """``trainer_config`` of a checked data yaml, written into ``folder`` (atomically) for ultralytics' trainer or
    validator: the user's own yaml is never handed to ultralytics. Returns its absolute path."""
    from yoloprune.io import write_atomic

    text = yaml.safe_dump(trainer_config(data), sort_keys=False, allow_unicode=True).encode()
    return write_atomic(Path(folder) / TRAINER_DATA, lambda f: f.write(text), overwrite=True).resolve()


def _root(path: Path, cfg: dict[str, Any]) -> Path:
    """A data yaml's dataset folder: its ``path:`` relative to the yaml's own folder (that folder without one)."""
    if not isinstance(cfg.get("path") or "", str) or not (cfg.get("path") or "").isprintable():
        raise DatasetError(f"{path}: 'path' must be a folder name")
    root = Path(cfg.get("path") or path.parent)
    return root if root.is_absolute() else (path.parent / root).resolve()


def _keypoint_values(path: Path, kpt_shape: Any) -> int:
    """The numbers a pose label row carries after its box, from the yaml's ``kpt_shape: [keypoints, 2 or 3]``."""
    if kpt_shape is None:
        return 0
    if not (
        isinstance(kpt_shape, list)
        and len(kpt_shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in kpt_shape)
        and 0 < kpt_shape[0] <= 1000
        and kpt_shape[1] in (2, 3)
    ):
        raise DatasetError(f"{path}: kpt_shape must be [keypoints (1..1000), 2 or 3]")
    return kpt_shape[0] * kpt_shape[1]


def _read_labels(label: Path, nc: int, keypoints: int = 0) -> list[tuple[int, tuple[float, ...]]]:
    """A YOLO label file as (class, normalised x1, y1, x2, y2) rows, read as ultralytics reads them for detection:
    ``class cx cy w h`` boxes (pose rows: the keypoints after them dropped) or ``class x1 y1 x2 y2 x3 y3 ...``
    polygons (segments, OBB corners) taken to their bounding box, never both in one file."""
    if not label.is_file():
        return []
    try:
        text = label.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{label}: not a text label file (byte {exc.start} is not UTF-8)") from None
    except OSError as exc:
        raise DatasetError(f"cannot read the label file {label}: {exc.strerror}") from None
    rows, first = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.split():
            kind, cls, box = _label_row(line, f"{label}:{n}", nc, keypoints)
            first.setdefault(kind, n)
            if len(first) > 1:
                raise DatasetError(f"{label}: mixes boxes and polygons (lines {first['box']} and {first['polygon']})")
            rows.append((cls, box))
    return rows


def _label_row(line: str, where: str, nc: int, keypoints: int) -> tuple[str, int, tuple[float, ...]]:
    """One label line as ("box" or "polygon", class, normalised x1, y1, x2, y2); a clear error naming ``where``."""
    parts = line.split()
    polygon = len(parts) >= 7 and len(parts) % 2 == 1 and len(parts) != 5 + keypoints
    try:
        cls, values = int(parts[0]), [float(v) for v in parts[1 : None if polygon else 5]]
    except ValueError:
        cls, values = None, []
    if cls is None or not (polygon or len(parts) in (5, 5 + keypoints)):
        raise DatasetError(
            f"{where}: expected 'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...' (an integer class, then "
            f"numbers), got {len(parts)} fields"
        )
    kind = "polygon" if polygon else "box"
    if not all(map(math.isfinite, values)):
        raise DatasetError(f"{where}: holds a value that is not a finite number")
    if not 0 <= cls < nc:
        raise DatasetError(f"{where}: class {cls} is out of range 0..{nc - 1}")
    if not polygon and min(values[2:]) < 0:
        raise DatasetError(f"{where}: box width and height must not be negative, got {values[2]:g}, {values[3]:g}")
    if not all(-0.01 <= v <= 1.01 for v in values):
        raise DatasetError(f"{where}: the {kind}'s coordinates are not normalised to [0, 1]")
    if polygon:
        xs, ys = values[0::2], values[1::2]
        return kind, cls, (min(xs), min(ys), max(xs), max(ys))
    cx, cy, w, h = values
    return kind, cls, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _class_names(path: Path, cfg: dict[str, Any]) -> dict[int, str]:
    """A data yaml's classes as ultralytics reads them: ``names`` as a list or an index: name mapping, or ``nc``
    alone (``class_0``, ``class_1``, ...)."""
    names, nc = cfg.get("names"), cfg.get("nc")
    if isinstance(nc, int) and nc > MAX_CLASSES:
        raise DatasetError(f"{path}: nc: {nc} classes; at most {MAX_CLASSES} are supported")
    if names is None and isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
        return {i: f"class_{i}" for i in range(nc)}
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DatasetError(f"{path}: 'names' must be a list or an index: name mapping of classes, got {names!r:.40}")
    try:
        names = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: the keys of 'names' must be class indices 0, 1, ...") from None
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{path}: {len(names)} class names; at most {MAX_CLASSES} are supported")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: class names must be numbered 0..{len(names) - 1}")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{path}: 'nc: {nc!r:.20}' disagrees with the {len(names)} class names")
    return names


def _image_files(path: Path, root: Path, entry: Any, split: str) -> list[Path]:
    """The images one ``split`` entry of a data yaml names: a folder, or a text file listing images (relative to the
    dataset root), as ultralytics reads them."""
    if not isinstance(entry, str) or not entry.strip() or not entry.isprintable():
        raise DatasetError(f"{path}: '{split}' must name a folder or an image list file (or a list of them)")
    source = root / entry
    if source.is_file():
        files = _listed_images(source, root)
    elif source.is_dir():
        try:
            files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:  # a folder that changes or refuses while it is listed (/proc, a mount going away)
            raise DatasetError(f"{path}: cannot list the {split} images in {source}: {exc.strerror}") from None
    else:
        raise DatasetError(f"{path}: {split} images not found at {source} (nothing is downloaded)")
    if not files:
        raise DatasetError(f"{path}: no images in {source}")
    return files


def _listed_images(source: Path, root: Path) -> list[Path]:
    """The images an image list file names (one path a line, relative to the dataset root). A line that names no
    image file is reported by its number: an error never prints what a file holds (``val: /etc/shadow``)."""
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{source} is not an image list (a text file of image paths)") from None
    except OSError as exc:
        raise DatasetError(f"cannot read the image list {source}: {exc.strerror}") from None
    files = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            file = (root / line.strip()).resolve()
            if file.suffix.lower() not in IMAGE_SUFFIXES or not file.is_file():
                raise DatasetError(f"{source}, line {n}: names no image file; is it an image list?")
            files.append(file)
    return files


def _label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
