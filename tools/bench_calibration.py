"""How much accuracy survives pruning before any fine-tuning: plain, norm statistics re-estimated, and calibrated.

Trains (or reuses) a yolov8n baseline on the synthetic benchmark with stock ultralytics, then for each criterion and
MACs target prunes a copy three ways and evaluates each on the validation split with pycocotools:
``plain`` (pruned only), ``bn`` (norm statistics re-estimated on the calibration images) and ``calib``
(``yoloprune.prune(..., calib=DIR)``: least-squares reconstruction, then statistics when they help). The calibration
images are the first ``--calib-images`` training images; evaluation uses the validation split, which no variant sees.

    python tools/bench_calibration.py -o runs/bench_calibration --epochs 40
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="runs/bench_calibration")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--difficulty", default="easy", choices=("easy", "hard"))
    parser.add_argument("--targets", default="0.8,0.65,0.5")
    parser.add_argument("--criteria", default="l2,l1")
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()

    import torch
    from ultralytics import YOLO

    import yoloprune
    from yoloprune.adapters import load_model
    from yoloprune.data import synthesize
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.pruning.calibrate import calibration_batches, recalibrate_norms

    out = Path(args.output)
    data = out / "data" / "data.yaml"
    if not data.is_file():
        synthesize(out / "data", args.train, args.val, args.imgsz, 4, 0, difficulty=args.difficulty)
    best = out / "baseline" / "weights" / "best.pt"
    if not best.is_file():
        start = time.perf_counter()
        YOLO("yolov8n.yaml").train(
            data=str(data),
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=16,
            device="cpu",
            project=str(out.resolve()),
            name="baseline",
            exist_ok=True,
            verbose=False,
            mosaic=0.0,
            close_mosaic=0,
            warmup_epochs=1,
            plots=False,
            workers=2,
            seed=0,
            nbs=16,
        )
        print(f"baseline trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s", flush=True)
    base = load_model(str(best))
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    calib_dir = out / "data" / "images" / "train"
    batches = calibration_batches(calib_dir, args.imgsz, images=args.calib_images)
    rows = [
        {
            "criterion": "-",
            "target": 1.0,
            "variant": "unpruned",
            "map50_95": evaluate(base.model, data, imgsz=args.imgsz).map50_95,
            "seconds": 0.0,
        }
    ]
    print(rows[-1], flush=True)
    for criterion in args.criteria.split(","):
        for target in (float(t) for t in args.targets.split(",")):
            for variant in ("plain", "bn", "calib"):
                net = copy.deepcopy(base.model)
                start = time.perf_counter()
                options = {"target_macs": target, "importance": criterion, "round_to": 8}
                if variant == "calib":
                    options.update(calib=str(calib_dir), calib_images=args.calib_images)
                report = yoloprune.prune(net, x, **options)
                if variant == "bn":
                    recalibrate_norms(net, batches)
                seconds = time.perf_counter() - start
                score = evaluate(net, data, imgsz=args.imgsz).map50_95
                rows.append(
                    {
                        "criterion": criterion,
                        "target": target,
                        "variant": variant,
                        "map50_95": score,
                        "macs": round(report.macs_ratio, 3),
                        "seconds": round(seconds, 1),
                    }
                )
                print(rows[-1], flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
