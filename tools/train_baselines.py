"""Train stock detectors on the synthetic benchmark until validation mAP plateaus: the converged models the pruning
benchmarks start from.

Each model is trained from its yaml (random weights, nothing downloaded) with stock ultralytics, for at most
``--epochs`` epochs with early stopping after ``--patience`` epochs without a better validation fitness. The dataset is
generated once (``yoloprune.data.synthesize``) and shared by every model, so the pruning benchmarks can reuse it.

    python tools/train_baselines.py -o runs/baselines --models yolov8n,yolov8s --epochs 120
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def dataset(out: Path, train: int, val: int, imgsz: int, difficulty: str) -> Path:
    """The benchmark's data.yaml, generated on first use."""
    from yoloprune.data import synthesize

    data = out / "data" / "data.yaml"
    if not data.is_file():
        synthesize(out / "data", train, val, imgsz, 4, 0, difficulty=difficulty)
    return data


def train(model: str, data: Path, out: Path, epochs: int, patience: int, imgsz: int) -> dict:
    """Train one stock model; returns its budget and the best validation mAP50-95 ultralytics recorded."""
    from ultralytics import YOLO

    start = time.perf_counter()
    YOLO(f"{model}.yaml").train(
        data=str(data),
        epochs=epochs,
        patience=patience,
        imgsz=imgsz,
        batch=16,
        device="cpu",
        project=str(out.resolve()),
        name=model,
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
    rows = list(csv.DictReader((out / model / "results.csv").open()))
    scores = [float(r["metrics/mAP50-95(B)"]) for r in (dict((k.strip(), v) for k, v in r.items()) for r in rows)]
    return {
        "model": model,
        "epochs_run": len(scores),
        "best_epoch": scores.index(max(scores)) + 1,
        "best_map50_95": max(scores),
        "seconds": round(time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="runs/baselines")
    parser.add_argument("--models", default="yolov8n,yolov8s")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--difficulty", default="easy", choices=("easy", "hard"))
    args = parser.parse_args()

    out = Path(args.output)
    data = dataset(out, args.train, args.val, args.imgsz, args.difficulty)
    for model in args.models.split(","):
        summary = train(model, data, out, args.epochs, args.patience, args.imgsz)
        print(json.dumps(summary), flush=True)
        (out / model / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
