"""How much accuracy survives pruning, right after it and after a short fine-tune, for each way of pruning.

Starts from a trained ultralytics checkpoint (``--model``, e.g. a converged one from ``tools/train_baselines.py``) and
its data yaml, prunes a copy at every MACs target with every variant, and evaluates each on the validation split
with pycocotools (any family; YOLOv5/v7 fine-tune in yoloprune's loop, whose per-epoch scores are pycocotools'):

- ``plain``: ``l2`` importance, pruned only (``plain-l1``: ``l1``; any variant takes ``-CRITERION``);
- ``bn``: ``l2``, then norm statistics re-estimated on the calibration images;
- ``calib-l2``: ``l2`` (every group losing the same fraction), then calibrated (``calib=DIR``: least-squares
  reconstruction, statistics when they help);
- ``uniform``: what ``yoloprune prune --uniform --calib DIR`` does (ranked by refit error, every group losing the
  same fraction), then calibrated; ``global``: ``--global --calib DIR`` (ranked across layers per MAC saved);
- ``default``: what ``yoloprune prune --calib DIR`` does (``importance=auto``: channels ranked by the error their
  removal leaves after refitting; pruned and calibrated both ``global`` and ``uniform``, the one with the better
  fidelity to the unpruned model on held-out images kept).

The calibration images are the first ``--calib-images`` training images (their labels are never read); evaluation
uses the validation split, which no variant sees. With ``--finetune-epochs N`` the variants in ``--finetune`` are
then fine-tuned N epochs with distillation from the unpruned model (``yoloprune.finetune``); the table gets the
validation mAP50-95 ultralytics recorded after epochs 1, 3 and N (``results.csv``) and pycocotools' on ``best.pt``.

    python tools/train_baselines.py -o runs/baselines --models yolov8n --epochs 150
    python tools/bench_calibration.py --model runs/baselines/yolov8n/weights/best.pt \
        --data runs/baselines/data/data.yaml -o runs/bench_calibration --finetune-epochs 10
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

VARIANTS = ("plain", "bn", "calib-l2", "default")


def prune_variant(base, x, variant: str, target: float, calib_dir: Path, images: int, batches) -> tuple:
    """A pruned copy of ``base`` made the ``variant`` way, its prune report and the seconds it took."""
    import yoloprune
    from yoloprune.pruning.calibrate import recalibrate_norms

    kind, _, criterion = variant.partition("-")
    net = copy.deepcopy(base)
    automatic = kind in ("default", "uniform", "global")
    options = {"target_macs": target, "round_to": 8, "importance": criterion or ("auto" if automatic else "l2")}
    if kind in ("calib", "default", "uniform", "global"):
        options.update(calib=str(calib_dir), calib_images=images)
    if kind in ("uniform", "global"):  # --uniform/--global --calib: one allocation, no choice between them
        options.update(global_ranking=kind == "global")
    start = time.perf_counter()
    report = yoloprune.prune(net, x, **options)
    if kind == "bn":
        recalibrate_norms(net, batches)
    return net, report, time.perf_counter() - start


def finetune_row(net, teacher: Path, data: Path, out: Path, epochs: int, imgsz: int, settings: dict) -> dict:
    """Fine-tune ``net`` with distillation; validation mAP after epochs 1, 3 and the last, and of ``best.pt``."""
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.train import finetune

    start = time.perf_counter()
    result = finetune(
        net, data, epochs=epochs, teacher=teacher, imgsz=imgsz, batch=16, out=out, overwrite=True, workers=2, **settings
    )
    if (out / "results.csv").is_file():  # ultralytics' trainer: its validator's mAP after every epoch
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader((out / "results.csv").open())]
        curve = [float(r["metrics/mAP50-95(B)"]) for r in rows]
    else:  # yoloprune's loop (YOLOv5/v7/YOLOX): pycocotools' mAP of the start ("0") and every epoch
        scores = json.loads((out / "weights" / "scores.json").read_text())
        curve = [scores[k] for k in sorted(scores, key=int) if k != "0"]
    return {
        "ft_epoch1": curve[0] if curve else None,
        "ft_epoch3": curve[2] if len(curve) > 2 else None,
        "ft_last": curve[-1] if curve else None,
        "ft_best_coco": evaluate(result.best, data, imgsz=imgsz).map50_95,
        "ft_seconds": round(time.perf_counter() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained checkpoint (ultralytics, YOLOv5, YOLOv7)")
    parser.add_argument("--data", required=True, help="its data yaml (calibration images: the train split)")
    parser.add_argument("-o", "--output", default="runs/bench_calibration")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--targets", default="0.8,0.7,0.5,0.3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune", default="plain,default", help="variants to fine-tune")
    parser.add_argument("--finetune-targets", default="0.7,0.5")
    parser.add_argument("--ft-set", action="append", default=[], metavar="KEY=VALUE", help="fine-tune setting")
    args = parser.parse_args()
    import yaml
    from benchkit import FINETUNE

    ft_settings = {**FINETUNE, **{k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.ft_set)}}

    from benchkit import start

    from yoloprune.evaluate.coco import evaluate
    from yoloprune.pruning.calibrate import calibration_batches

    out, data = Path(args.output), Path(args.data)
    begin = start(args.model, data, out, args.imgsz)
    base, x, calib_dir, unpruned = begin.base, begin.x, begin.calib, begin.unpruned
    batches = calibration_batches(calib_dir, args.imgsz, images=args.calib_images)
    rows = [{"target": 1.0, "variant": "unpruned", "map50_95": unpruned}]
    print(json.dumps(rows[-1]), flush=True)
    tuned = {t for t in args.finetune_targets.split(",")} if args.finetune_epochs else set()
    for target_text in args.targets.split(","):
        target = float(target_text)
        for variant in args.variants.split(","):
            net, report, seconds = prune_variant(base, x, variant, target, calib_dir, args.calib_images, batches)
            score = evaluate(net, data, imgsz=args.imgsz).map50_95
            row = {
                "target": target,
                "variant": variant,
                "importance": report.settings["importance"],
                "macs": round(report.macs_ratio, 3),
                "map50_95": score,
                "kept": round(score / unpruned, 3),
                "seconds": round(seconds, 1),
            }
            if target_text in tuned and variant in args.finetune.split(","):
                ft = finetune_row(
                    net,
                    Path(args.model),
                    data,
                    out / f"ft-{variant}-{target_text}",
                    args.finetune_epochs,
                    args.imgsz,
                    ft_settings,
                )
                row.update(ft, ft_kept=round(ft["ft_best_coco"] / unpruned, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
