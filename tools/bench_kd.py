"""Which distillation brings a pruned ultralytics detector back fastest: none, yoloprune's head distillation,
ultralytics' feature distillation (``distill_model=``, score-weighted L2 on neck features through trained projectors),
or both.

Starts from a trained checkpoint (``--model``, e.g. the converged yolov8n of ``tools/train_baselines.py``), prunes it
at each MACs target (``--starts``: ``calib`` is ``yoloprune prune --calib``, ``plain`` is ``l2`` without calibration,
a collapsed start), and fine-tunes each start with each variant for the same epochs and settings with
``PrunedDetectionTrainer`` (ultralytics' trainer on the pruned network). Every run's validation mAP50-95 after each
epoch comes from ultralytics' validator (``results.csv``), the same for every variant; the start's own score is
pycocotools'. Benchmark only: ultralytics reads the teacher of its feature distillation with its unrestricted loader
(this tool's own file), which is why ``yoloprune finetune`` does not offer it.

    python tools/bench_kd.py --model runs/baselines/yolov8n/weights/best.pt --data runs/baselines/data/data.yaml
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

VARIANTS = ("none", "head", "feature", "both")


def start_model(base, x, start: str, target: float, calib_dir: Path, images: int):
    """A pruned copy of ``base``: calibrated (the default with images) or plain ``l2``."""
    import yoloprune

    net = copy.deepcopy(base)
    options = {"target_macs": target, "round_to": 8}
    if start == "calib":
        options.update(calib=str(calib_dir), calib_images=images)
    else:
        options.update(importance="l2")
    yoloprune.prune(net, x, **options)
    return net


def run_variant(start: Path, teacher: Path, data: Path, out: Path, variant: str, epochs: int, imgsz: int) -> dict:
    """Fine-tune ``start`` with one distillation variant; the validation curve ultralytics recorded."""
    from benchkit import FINETUNE

    from yoloprune.train.ultralytics_trainer import PrunedDetectionTrainer

    class Trainer(PrunedDetectionTrainer):
        def final_eval(self) -> None:  # checkpoints of feature distillation hold ultralytics' wrapper: not re-read
            return None

    args = {
        "model": str(start),
        "data": str(data),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": 16,
        "device": "cpu",
        "workers": 2,
        "project": str(out.parent.resolve()),
        "name": out.name,
        "exist_ok": True,
        "seed": 0,
        **FINETUNE,
        "plots": False,
    }
    if variant in ("feature", "both"):
        args["distill_model"] = str(teacher)
    began = time.perf_counter()
    Trainer(overrides=args, teacher=teacher if variant in ("head", "both") else None).train()
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader((out / "results.csv").open())]
    curve = [round(float(r["metrics/mAP50-95(B)"]), 4) for r in rows]
    return {"curve": curve, "best": max(curve), "seconds": round(time.perf_counter() - began)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained ultralytics checkpoint (the teacher)")
    parser.add_argument("--data", required=True, help="its data yaml")
    parser.add_argument("-o", "--output", default="runs/bench_kd")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--starts", default="calib-0.3,plain-0.5", help="START-TARGET pairs (calib or plain)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()

    from benchkit import start

    from yoloprune.adapters import Loaded, save_model
    from yoloprune.evaluate.coco import evaluate

    out, data = Path(args.output), Path(args.data)
    begin = start(args.model, data, out, args.imgsz)
    base, x, calib_dir, unpruned = begin.base, begin.x, begin.calib, begin.unpruned
    rows = [{"start": "unpruned", "map50_95": unpruned}]
    print(json.dumps(rows[-1]), flush=True)
    for pair in args.starts.split(","):
        kind, _, target = pair.partition("-")
        net = start_model(base, x, kind, float(target), calib_dir, args.calib_images)
        start_file = save_model(
            Loaded(net, "ultralytics", pair, {"train_args": {}, "half": False}), out / f"{pair}.pt", {}, overwrite=True
        )
        start_score = evaluate(net, data, imgsz=args.imgsz).map50_95
        for variant in args.variants.split(","):
            result = run_variant(
                start_file, Path(args.model), data, out / f"{pair}-{variant}", variant, args.epochs, args.imgsz
            )
            rows.append({"start": pair, "start_map50_95": start_score, "variant": variant, **result})
            print(json.dumps(rows[-1]), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
