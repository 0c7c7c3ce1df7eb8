"""Train stock detectors on the synthetic benchmark until validation mAP plateaus: the converged models the pruning
benchmarks start from.

Each model is trained from its yaml (random weights, nothing downloaded) with stock ultralytics, for at most
``--epochs`` epochs with early stopping after ``--patience`` epochs without a better validation fitness. The dataset is
generated once (``yoloprune.data.synthesize``) and shared by every model, so the pruning benchmarks can reuse it.

    python tools/train_baselines.py -o runs/baselines --models yolov8n,yolov8s --epochs 120
    python tools/train_baselines.py -o runs/baselines --family yolov5 --models yolov5n --epochs 150

YOLOv5/YOLOv7 models train in yoloprune's own loop (``yoloprune.finetune``; no early stopping, the best epoch kept).
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


def train_family(model: str, family: str, data: Path, out: Path, epochs: int, imgsz: int) -> dict:
    """Train a YOLOv5/YOLOv7 model from its config (random weights, the data's classes) with ``yoloprune.finetune``
    (the family's own loss in yoloprune's loop: SGD, warm-up, cosine schedule, flips; the best epoch by COCO
    mAP50-95 kept)."""
    import yaml

    import yoloprune
    from yoloprune.adapters import Loaded, adapter, save_model

    family_adapter = adapter(family)
    config = yaml.safe_load(family_adapter.config_path(f"{model}.yaml").read_text())
    names = yaml.safe_load(data.read_text())["names"]
    net = family_adapter.from_config({**config, "nc": len(names)})
    folder = out / model
    folder.mkdir(parents=True, exist_ok=True)
    start_file = save_model(Loaded(net, family, model, {"half": False}), folder / "scratch.pt", {}, overwrite=True)
    start = time.perf_counter()
    result = yoloprune.finetune(
        start_file, data, epochs=epochs, imgsz=imgsz, batch=16, lr0=0.01, out=folder, overwrite=True, workers=2
    )
    scores = json.loads((folder / "weights" / "scores.json").read_text())
    best = max(scores, key=lambda k: scores[k])
    return {
        "model": model,
        "family": family,
        "epochs_run": result.epochs,
        "best_epoch": int(best),
        "best_map50_95": scores[best],
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
    parser.add_argument("--family", default="ultralytics", choices=("ultralytics", "yolov5", "yolov7"))
    args = parser.parse_args()

    out = Path(args.output)
    data = dataset(out, args.train, args.val, args.imgsz, args.difficulty)
    for model in args.models.split(","):
        if args.family == "ultralytics":
            summary = train(model, data, out, args.epochs, args.patience, args.imgsz)
        else:
            summary = train_family(model, args.family, data, out, args.epochs, args.imgsz)
        print(json.dumps(summary), flush=True)
        (out / model / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
