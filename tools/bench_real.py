"""Pruning on real trained detectors and real photos: how much of each model survives, method by method.

For every model and MACs target, each variant of ``bench_calibration.prune_variant`` prunes a copy (``plain``: l2
alone; ``bn``: l2, then norm statistics re-estimated; ``global``/``uniform``: ``--global``/``--uniform --calib``;
``default``: ``--calib``, which keeps the better of those two on held-out images) and
the copy is scored on photos no variant calibrates on:

- a COCO-trained model (its 80 class names are COCO's): COCO mAP50-95 against the photos' labels;
- any other (custom-trained) model: fidelity mAP50-95, its detections scored against the unpruned model's own
  confident detections (score >= 0.25) on the same photos: the share of the original's behaviour that survives,
  without labels. The unpruned model's own fidelity is below 1 (its low-score detections count as false positives).

``kept`` is the pruned score over the unpruned one. The material is laid out locally, never in the repository nor a
test (see ``--root``): a ``coco/`` folder (``data.yaml``; ``images/calib`` for calibration, ``images/val`` for
scoring, YOLO labels) and ``models/*.pt``. The run of 2026-12-08 used, from public sources (sha256 of each file):

- ``coco/``: COCO128 (first 128 train2017 images, calibration) and the first 128 val2017 images with YOLO labels,
  from lightly-ai/coco128_yolo @ 6d6f7a059ea63efffdbe48aca2d52c04d4c510e9;
- ``yolov5n.pt``: the official COCO YOLOv5n release file (4,062,133 B, sha256 4f180cf2...b2ac0a3), committed in
  MahmudolHasan/Real-Time-Bangla-License-Plate-Detection-And-Recognition @ f9221edaa7d2dff20d522b541fea05e588a3a4ee
  (Weights/yolov5n.pt); mAP50-95 0.2906 at 320 px on the 128 val photos;
- ``custom_ship_yolo11s.pt``: a 1-class (boat) YOLO11s from PyPI ship-detector-mcp==0.1.0
  (ship_detector_mcp/weights/best.pt, sha256 ba136f1b...5940435);
- ``custom_ppe_yolov5n.pt``: a 2-class (helmet, vest) YOLOv5n, level0rd/PPE-Detector @
  ece9276637d3e6e867d7fec849d4fcc2f1784560 (yolov5n.pt, sha256 471189f8...29959cd);
- ``custom_waste_yolov5n.pt``: a 2-class (biodegradable, non-biodegradable) YOLOv5n, imyanuarginting/Wetection @
  167268a2422cac8b16d9c803a5989254c8dc3daa (yolov5n.pt, sha256 1c4d4048...4ab949).

    python tools/bench_real.py --root /work/real --models yolov5n,custom_ship_yolo11s --imgsz 320 -o runs/bench_real
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

VARIANTS = ("plain", "bn", "global", "uniform", "default")
PSEUDO_CONF = 0.25  # the unpruned model's detections kept as fidelity labels


def fidelity_set(model, family: str, photos: list[Path], imgsz: int, out: Path) -> Path:
    """A data yaml whose labels are ``model``'s own detections (score >= ``PSEUDO_CONF``) on ``photos``."""
    import yaml

    from yoloprune.evaluate.coco import decode, runner_for
    from yoloprune.images import letterbox, read_image, to_tensor

    runner = runner_for(model, family, imgsz)
    (out / "images" / "val").mkdir(parents=True, exist_ok=True)
    (out / "labels" / "val").mkdir(parents=True, exist_ok=True)
    boxes = 0
    for photo in photos:
        image = read_image(photo)
        boxed, scale, (left, top) = letterbox(image, imgsz, runner.preprocess.fill)
        det = decode(runner.run(to_tensor(boxed, runner.preprocess)), runner.layout, runner.nc, PSEUDO_CONF)[0]
        h, w = image.shape[:2]
        rows = []
        for x1, y1, x2, y2, _, cls in det.tolist():
            x1, x2 = [min(max((v - left) / scale, 0), w) for v in (x1, x2)]
            y1, y2 = [min(max((v - top) / scale, 0), h) for v in (y1, y2)]
            if x2 > x1 and y2 > y1:
                box = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
                rows.append(f"{int(cls)} " + " ".join(f"{v:.6f}" for v in box))
        link = out / "images" / "val" / photo.name
        if not link.exists():
            link.symlink_to(photo.resolve())
        (out / "labels" / "val" / f"{photo.stem}.txt").write_text("".join(r + "\n" for r in rows))
        boxes += len(rows)
    names = {i: f"class_{i}" for i in range(runner.nc)}
    data = out / "data.yaml"
    data.write_text(
        yaml.safe_dump({"path": str(out.resolve()), "train": "images/val", "val": "images/val", "names": names})
    )
    print(f"fidelity labels: {boxes} boxes on {len(photos)} photos", flush=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/real", help="coco/ and models/ (see the docstring)")
    parser.add_argument("--models", default="yolov5n,custom_ship_yolo11s,custom_ppe_yolov5n,custom_waste_yolov5n")
    parser.add_argument("-o", "--output", default="runs/bench_real")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--targets", default="0.9,0.8,0.7,0.5")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--calib-images", type=int, default=128)
    args = parser.parse_args()
    import torch
    from bench_calibration import prune_variant

    from yoloprune.adapters import load_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.images import list_images
    from yoloprune.pruning.calibrate import calibration_batches

    root, out = Path(args.root), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    coco, calib = root / "coco" / "data.yaml", root / "coco" / "images" / "calib"
    batches = calibration_batches(calib, args.imgsz, images=args.calib_images)
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    rows = []
    for name in args.models.split(","):
        loaded = load_model(str(root / "models" / f"{name}.pt"))
        base, family = loaded.model.float().eval(), loaded.family
        names = getattr(base, "names", None) or {}
        coco_model = len(names) == 80 and (names.get(0) if isinstance(names, dict) else names[0]) == "person"
        data = (
            coco
            if coco_model
            else fidelity_set(
                base, family, list_images(root / "coco" / "images" / "val"), args.imgsz, out / f"fidelity-{name}"
            )
        )
        unpruned = evaluate(base, data, imgsz=args.imgsz, family=family).map50_95
        rows.append(
            {
                "model": name,
                "target": 1.0,
                "variant": "unpruned",
                "map50_95": unpruned,
                "scored": "coco" if coco_model else "fidelity",
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        for target in (float(t) for t in args.targets.split(",")):
            for variant in args.variants.split(","):
                start = time.perf_counter()
                try:
                    net, report, _ = prune_variant(base, x, variant, target, calib, args.calib_images, batches)
                except ValueError as exc:  # a target this variant cannot reach (UnreachableTarget)
                    rows.append({"model": name, "target": target, "variant": variant, "error": str(exc)[:160]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                seconds = time.perf_counter() - start
                score = evaluate(net, data, imgsz=args.imgsz, family=family).map50_95
                rows.append(
                    {
                        "model": name,
                        "target": target,
                        "variant": variant,
                        "macs": round(report.macs_ratio, 3),
                        "map50_95": round(score, 4),
                        "kept": round(score / unpruned, 3) if unpruned else None,
                        "seconds": round(seconds, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
