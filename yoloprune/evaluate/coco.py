"""COCO mAP with pycocotools, for PyTorch models of every family and for ONNX files.

One path per family: letterbox the family's way, run, decode the family's output layout, class-aware NMS with
ultralytics' validation defaults (conf 0.001, IoU 0.7, multi-label, 300 detections), boxes mapped back to the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from yoloprune.data.datasets import DatasetError, DetectionSet, load_detection_set
from yoloprune.evaluate.tasks import task_metrics, task_of
from yoloprune.graph.nest import tensors_in
from yoloprune.images import Preprocess, check_imgsz, letterbox, read_image, to_tensor
from yoloprune.options import MAX_CLASSES, check_numbers

MAX_NMS = 30000


@dataclass
class EvalResult:
    """COCO bbox metrics of one model on one dataset."""

    map50_95: float
    map50: float
    images: int
    detections: int
    seconds: float
    model: str
    data: str
    imgsz: int
    task: dict[str, float] = field(default_factory=dict)  # masks' or keypoints' mAP (ultralytics' validator)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        extra = "".join(
            f", {name.split('_')[0]} mAP50-95 {value:.4f}" for name, value in self.task.items() if "50_95" in name
        )
        return (
            f"{self.model} on {self.data} ({self.images} images at {self.imgsz}): mAP50-95 {self.map50_95:.4f}, "
            f"mAP50 {self.map50:.4f}{extra} ({self.seconds:.1f} s)"
        )


def decode(
    pred: torch.Tensor, layout: str, nc: int, conf: float = 0.001, iou: float = 0.7, max_det: int = 300
) -> list[torch.Tensor]:
    """Per image ``(N, 6)`` detections ``x1, y1, x2, y2, score, class`` from a batch of raw predictions.

    ``layout``: ``"xywh-class"`` (B, 4 + nc [+ extra], A) as ultralytics; ``"xywh-obj-class"`` (B, A, 5 + nc) as
    YOLOv5/YOLOv7/YOLOX; ``"end2end"`` (B, K, 6) already without duplicates; ``"nms"`` (K, 6) for batch-1 files
    exported with NMS.
    """
    if layout == "nms":
        return [pred[pred[:, 4] > conf]]
    if layout == "end2end":
        return [p[p[:, 4] > conf][:max_det] for p in pred]
    if layout == "xywh-class":
        pred = pred.transpose(1, 2)
        boxes, scores = pred[..., :4], pred[..., 4 : 4 + nc]
    elif layout == "xywh-obj-class":
        boxes, scores = pred[..., :4], pred[..., 5 : 5 + nc] * pred[..., 4:5]
    else:
        raise ValueError(f"unknown output layout {layout!r}")
    xy, half = boxes[..., :2], boxes[..., 2:4] / 2
    boxes = torch.cat([xy - half, xy + half], -1)
    out = []
    for b, s in zip(boxes, scores):
        i, j = (s > conf).nonzero(as_tuple=True)
        score = s[i, j]
        if score.numel() > MAX_NMS:
            top = score.topk(MAX_NMS).indices
            i, j, score = i[top], j[top], score[top]
        keep = torchvision.ops.batched_nms(b[i], score, j, iou)[:max_det]
        out.append(torch.cat([b[i][keep], score[keep, None], j[keep, None].to(b.dtype)], 1))
    return out


@dataclass
class Runner:
    """Something that maps a letterboxed batch to decoded detections."""

    run: Callable[[torch.Tensor], Any]
    layout: str
    nc: int
    preprocess: Preprocess
    batch_limit: int | None = None
    net: torch.nn.Module | None = None  # the PyTorch network it runs (None for ONNX files)


def runner_for(model: Any, family: str | None = None, imgsz: int | None = None) -> Runner:
    """A ``Runner`` for a model object, a checkpoint/config path or an ONNX file (with ``imgsz``: one exported at
    that size, or with dynamic sizes)."""
    from yoloprune.adapters import adapter as family_adapter
    from yoloprune.adapters import resolve

    if isinstance(model, Runner):
        return model
    if isinstance(model, (str, Path)) and Path(model).suffix == ".onnx":
        return _onnx_runner(Path(model), imgsz)
    if isinstance(model, (str, Path)):
        from yoloprune.adapters import load_model

        loaded = load_model(str(model), family)
        model, family = loaded.model, loaded.family
    target = resolve(model, family=family, prune_head=True)
    if target.family == "generic":
        raise ValueError("evaluation needs a detection family; this model's family is not recognised")
    adapter = family_adapter(target.family)
    net = target.module.eval()
    layout, nc = adapter.nms_layout(net)
    select = target.outputs or (lambda o: o)

    def run(x: torch.Tensor) -> torch.Tensor:
        # no_grad, not inference_mode: heads cache grids made here (YOLOv5/v7 anchor grids), and a network validated
        # between training epochs would then meet inference tensors in its next training forward
        with torch.no_grad():
            return tensors_in(select(net(x.to(next(net.parameters()).device))))[0].float().cpu()

    return Runner(run, layout, nc, adapter.PREPROCESS, net=net)


LAYOUTS = ("xywh-class", "xywh-obj-class", "end2end", "nms")


def _onnx_runner(path: Path, imgsz: int | None = None) -> Runner:
    from yoloprune.export.onnx import read_metadata, run_session, session

    if not path.is_file():
        raise FileNotFoundError(f"no such model: {path}")
    meta = read_metadata(path)
    if "layout" not in meta or "nc" not in meta:
        raise ValueError(f"{path} has no yoloprune output layout in its metadata; export it with `yoloprune export`")
    layout, nc, spec = meta["layout"], _classes(path, meta["nc"]), _preprocess(path, meta.get("preprocess"))
    if layout not in LAYOUTS:
        raise ValueError(f"{path}: its metadata names an unknown output layout; expected one of {', '.join(LAYOUTS)}")
    s = session(path, imgsz=imgsz)
    name = s.get_inputs()[0].name
    static = s.get_inputs()[0].shape[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        outputs = run_session(s, {name: x.numpy()}, path)
        pred = torch.from_numpy(outputs[0]).float() if outputs and hasattr(outputs[0], "shape") else None
        problem = layout_problem(pred, layout, nc, len(x))
        if problem:
            raise ValueError(f"{path}: its output {problem}, not what its metadata's layout {layout!r} says")
        return pred

    return Runner(run, layout, nc, spec, 1 if isinstance(static, int) else None)


def _classes(path: Path, text: str) -> int:
    """The class count an ONNX file's metadata states: a whole number from 1 to ``MAX_CLASSES``."""
    value = text.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= MAX_CLASSES):
        raise ValueError(f"{path}: its metadata's class count (nc) is not a whole number from 1 to {MAX_CLASSES}")
    return int(value)


def _preprocess(path: Path, text: str | None) -> Preprocess:
    """The image convention an ONNX file's metadata states (``Preprocess`` fields as json), checked field by field."""
    if text is None:
        return Preprocess()
    bad = ValueError(f"{path}: its metadata's preprocess entry is not yoloprune's (rgb, scale, fill)")
    try:
        value = json.loads(text) if len(text) < 1000 else None
    except (ValueError, RecursionError):
        raise bad from None
    types = {"rgb": (bool,), "scale": (int, float), "fill": (int,)}
    if not isinstance(value, dict) or not set(value) <= set(types):
        raise bad
    for key, item in value.items():
        if not isinstance(item, types[key]) or (key != "rgb" and isinstance(item, bool)):
            raise bad
    if not 0 <= value.get("fill", 0) <= 255 or not 0 < value.get("scale", 1) <= 1:
        raise bad
    return Preprocess(**value)


def layout_problem(pred: torch.Tensor | None, layout: str, nc: int, batch: int) -> str | None:
    """What makes ``pred`` (a model's first output for ``batch`` images) not a prediction in ``layout`` with ``nc``
    classes (``decode``'s input), or None."""
    if pred is None:
        return "is not a tensor"
    shape = tuple(pred.shape)
    want = {
        "nms": "(detections, 6) for one image",
        "end2end": f"({batch}, detections, 6)",
        "xywh-class": f"({batch}, 4 + {nc} or more, anchors)",
        "xywh-obj-class": f"({batch}, anchors, 5 + {nc} or more)",
    }[layout]
    if layout == "nms":
        fits = len(shape) == 2 and shape[1] == 6 and batch == 1
    elif layout == "end2end":
        fits = len(shape) == 3 and shape[0] == batch and shape[2] == 6
    elif layout == "xywh-class":
        fits = len(shape) == 3 and shape[0] == batch and shape[1] >= 4 + nc
    else:
        fits = len(shape) == 3 and shape[0] == batch and shape[2] >= 5 + nc
    if not fits:
        return f"has shape {list(shape)} where {want} is expected"
    if layout in ("nms", "end2end") and pred.numel():
        cls = pred[..., 5]
        if not bool(((cls >= 0) & (cls < nc) & (cls == cls.round())).all()):
            return f"names classes outside 0..{nc - 1}"
    return None


def evaluate(
    model: Any,
    data: str | Path | DetectionSet,
    *,
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    family: str | None = None,
    split: str = "val",
    max_images: int | None = None,
) -> EvalResult:
    """COCO mAP50-95 and mAP50 (pycocotools) of ``model`` (a model, a checkpoint or config path, an ONNX file or a
    ``Runner``) on ``data``'s ``split``; for ultralytics segment and pose models on a data yaml, the masks' or
    keypoints' mAP from the task's ultralytics validator too (``task``)."""
    start = time.perf_counter()
    check_imgsz(imgsz)
    check_numbers(conf=conf, iou=iou)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    dataset = data if isinstance(data, DetectionSet) else load_detection_set(data, split)
    runner = runner_for(model, family, imgsz)
    if runner.nc != dataset.nc:
        raise DatasetError(
            f"class count mismatch: the model predicts {runner.nc} classes, {dataset.source} has {dataset.nc}"
        )
    batch = min(batch, runner.batch_limit or batch)
    items = list(zip(dataset.images, dataset.image_ids))[:max_images]
    results = []
    for k in range(0, len(items), batch):
        chunk = items[k : k + batch]
        tensors, frames = [], []
        for path, image_id in chunk:
            image = read_image(path)
            boxed, scale, pad = letterbox(image, imgsz, runner.preprocess.fill)
            tensors.append(to_tensor(boxed, runner.preprocess))
            frames.append((image_id, scale, pad, image.shape[:2]))
        pred = runner.run(torch.cat(tensors))
        for det, (image_id, scale, (left, top), (h, w)) in zip(
            decode(pred, runner.layout, runner.nc, conf, iou, max_det), frames
        ):
            det = det.numpy()
            boxes = (det[:, :4] - [left, top, left, top]) / scale
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
            for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": dataset.category_ids[int(cls)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score,
                    }
                )
    map50_95, map50 = coco_map(dataset, results, [i for _, i in items])
    name = model if isinstance(model, (str, Path)) else type(model).__name__
    task = {}
    from_yaml = "yaml" in dataset.extra and not isinstance(data, DetectionSet)
    if task_of(runner.net) in ("segment", "pose") and from_yaml and max_images is None:
        task = task_metrics(runner.net, dataset.source, imgsz=imgsz, batch=batch, split=split)
    return EvalResult(
        map50_95, map50, len(items), len(results), time.perf_counter() - start, str(name), dataset.source, imgsz, task
    )


def coco_map(dataset: DetectionSet, results: list[dict[str, Any]], image_ids: list[int]) -> tuple[float, float]:
    """pycocotools' bbox mAP50-95 and mAP50 over ``image_ids`` (0 when there are no detections)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        detections = dataset.coco.loadRes(results)
        evaluator = COCOeval(dataset.coco, detections, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(max(evaluator.stats[0], 0.0)), float(max(evaluator.stats[1], 0.0))
