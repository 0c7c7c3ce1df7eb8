"""Seconds per epoch: yoloprune's trainer against stock ultralytics training the same pruned network.

    python tools/bench_trainer.py --data DATA.yaml [--model yolov8n.yaml] [--epochs 3] [--imgsz 160] [--batch 16]

Stock ultralytics keeps a network it is handed (``trainer.model = net`` before ``train()``), which is the fair
comparison: ``YOLO(pruned.pt).train()`` would rebuild the unpruned network. Both runs use the same settings and seed;
the first epoch (warm-up, dataloader start) is excluded. Also times yoloprune's trainer with distillation.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def epoch_times(trainer_cls, net, args: dict, **settings) -> list[float]:
    stamps: list[float] = []
    trainer = trainer_cls(overrides=args, **settings)
    trainer.model = net
    trainer.add_callback("on_train_epoch_start", lambda t: stamps.append(time.perf_counter()))
    trainer.add_callback("on_train_epoch_end", lambda t: stamps.append(time.perf_counter()))
    trainer.train()
    return [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="yolov8n.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    import yaml
    from ultralytics.models.yolo.detect import DetectionTrainer

    import yoloprune
    from yoloprune.adapters import Loaded
    from yoloprune.adapters.ultralytics import from_config, save
    from yoloprune.train.ultralytics_trainer import PrunedDetectionTrainer

    nc = len(yaml.safe_load(Path(args.data).read_text())["names"])
    base = from_config({**from_config(args.model).yaml, "nc": nc})
    pruned = copy.deepcopy(base)
    yoloprune.prune(pruned, torch.zeros(1, 3, args.imgsz, args.imgsz), target_macs=0.5, round_to=8)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = save(Loaded(base, "ultralytics", "t", {"train_args": {}}), Path(tmp) / "teacher.pt", {})
        common = {
            "model": args.model,
            "data": args.data,
            "epochs": args.epochs,
            "imgsz": args.imgsz,
            "batch": args.batch,
            "nbs": args.batch,
            "device": "cpu",
            "workers": 2,
            "plots": False,
            "val": False,
            "seed": 0,
            "project": tmp,
            "exist_ok": True,
            "verbose": False,
            "mosaic": 0.0,
        }
        runs = {
            "stock ultralytics": epoch_times(DetectionTrainer, copy.deepcopy(pruned), {**common, "name": "stock"}),
            "yoloprune": epoch_times(PrunedDetectionTrainer, copy.deepcopy(pruned), {**common, "name": "ours"}),
            "yoloprune + KD": epoch_times(
                PrunedDetectionTrainer,
                copy.deepcopy(pruned),
                {**common, "name": "kd"},
                teacher=teacher,
                kd_weight=1.0,
            ),
        }
    stock = statistics.median(runs["stock ultralytics"][1:])
    print("| trainer | seconds per epoch (median, first excluded) | vs stock |\n|---|---|---|")
    for name, times in runs.items():
        median = statistics.median(times[1:])
        print(f"| {name} | {median:.2f} | {median / stock:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
