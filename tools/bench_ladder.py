"""The ladder: a larger trained model pruned to a smaller scale's MACs, calibrated and fine-tuned, against that
smaller scale trained on the same data.

Prunes ``--large`` (a trained ultralytics checkpoint) to the MACs of ``--small`` (a trained checkpoint of the smaller
scale) with what ``yoloprune prune --calib`` does by default, fine-tunes it ``--epochs`` epochs with distillation from
the unpruned large model, and evaluates all four models with pycocotools on the validation split.

    python tools/train_baselines.py -o runs/ladder --models yolov8s --epochs 30
    python tools/bench_ladder.py --large runs/ladder/yolov8s/weights/best.pt \
        --small runs/baselines/yolov8n/weights/best.pt --data runs/baselines/data/data.yaml --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", required=True)
    parser.add_argument("--small", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("-o", "--output", default="runs/bench_ladder")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()

    import torch

    import yoloprune
    from yoloprune.adapters import load_model
    from yoloprune.data.datasets import load_detection_set
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.graph.counting import count_macs
    from yoloprune.train import finetune

    out, data = Path(args.output), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    large, small = load_model(args.large).model, load_model(args.small).model
    target = count_macs(small, x) / count_macs(large, x)
    calib = Path(load_detection_set(data, "train").images[0]).parent
    rows = {
        "large": evaluate(large, data, imgsz=args.imgsz).map50_95,
        "small": evaluate(small, data, imgsz=args.imgsz).map50_95,
        "target_macs": round(target, 3),
    }
    start = time.perf_counter()
    report = yoloprune.prune(large, x, target_macs=target, round_to=8, calib=str(calib), calib_images=args.calib_images)
    rows["prune_seconds"] = round(time.perf_counter() - start, 1)
    rows["pruned_macs_vs_small"] = round(count_macs(large, x) / count_macs(small, x), 3)
    rows["pruned_params_vs_small"] = round(
        sum(p.numel() for p in large.parameters()) / sum(p.numel() for p in small.parameters()), 3
    )
    rows["pruned"] = evaluate(large, data, imgsz=args.imgsz).map50_95
    rows["importance"] = report.settings["importance"]
    print(json.dumps(rows), flush=True)
    start = time.perf_counter()
    result = finetune(
        large,
        data,
        epochs=args.epochs,
        teacher=Path(args.large),
        imgsz=args.imgsz,
        batch=16,
        out=out / "finetune",
        overwrite=True,
        workers=2,
        mosaic=0.0,
        close_mosaic=0,
        warmup_epochs=0,
        verbose=False,
        nbs=16,
    )
    rows["finetune_seconds"] = round(time.perf_counter() - start)
    rows["finetuned"] = evaluate(result.best, data, imgsz=args.imgsz).map50_95
    print(json.dumps(rows), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
