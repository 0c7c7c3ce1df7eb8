"""Which criterion keeps the most mAP? Every importance x uniform/global at one MACs target, before and after the same
short fine-tune, from one trained baseline, on the synthetic benchmark.

    python tools/bench_criteria.py BASELINE.pt --data DATA.yaml [--target 0.5] [--epochs 3] [--imgsz 160]
                                   [--criteria l2 l1 bn taylor random] [--rankings uniform global]
                                   [--sparsity none|bn|group:STRENGTH --sparsity-epochs N] [-o runs/criteria]

Prints a markdown table (mAP50-95 and mAP50 before and after fine-tuning; the unpruned baseline first). With
``--sparsity`` the baseline first trains ``--sparsity-epochs`` more epochs (SGD, lr0 0.01) with that penalty
(``none:0`` for the same epochs without one) and is pruned from there; fine-tunes still distil from BASELINE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yoloprune
from yoloprune.adapters import load_model, save_model
from yoloprune.data.batches import labelled_batches
from yoloprune.evaluate.coco import evaluate
from yoloprune.images import example_input
from yoloprune.pruning.taylor import detection_loss
from yoloprune.train import finetune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline")
    parser.add_argument("--data", required=True)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--criteria", nargs="+", default=["l2", "l1", "bn", "taylor", "random"])
    parser.add_argument("--rankings", nargs="+", default=["uniform", "global"], choices=("uniform", "global"))
    parser.add_argument("--sparsity", metavar="KIND:STRENGTH", help="none:0, bn:0.5 or group:0.5")
    parser.add_argument("--sparsity-epochs", type=int, default=3)
    parser.add_argument("-o", "--output", default="runs/criteria")
    args = parser.parse_args()
    out = Path(args.output)
    train = {"mosaic": 0.0, "warmup_epochs": 0, "nbs": args.batch, "workers": 2, "plots": False, "seed": 0}
    start = args.baseline
    if args.sparsity:
        kind, _, strength = args.sparsity.partition(":")
        start = finetune(
            args.baseline,
            args.data,
            epochs=args.sparsity_epochs,
            sparsity=float(strength or 0),
            sparsity_kind="bn" if kind == "none" else kind,
            imgsz=args.imgsz,
            batch=args.batch,
            out=out / f"sparsity-{kind}",
            overwrite=True,
            **{**train, "optimizer": "SGD", "lr0": 0.01},
        ).last
    base = evaluate(start, args.data, imgsz=args.imgsz, batch=args.batch)
    print("| criterion | ranking | MACs | mAP50-95 before FT | mAP50 before | mAP50-95 after FT | mAP50 after |")
    print("|---|---|---|---|---|---|---|")
    print(f"| unpruned | - | 1.00 | {base.map50_95:.4f} | {base.map50:.4f} | - | - |", flush=True)
    taylor = detection_loss(labelled_batches(args.data, args.imgsz, args.batch, 4))
    for criterion in args.criteria:
        for global_ranking in (r == "global" for r in args.rankings):
            name = f"{criterion}-{'global' if global_ranking else 'uniform'}"
            loaded = load_model(str(start))
            report = yoloprune.prune(
                loaded.model,
                example_input(args.imgsz),
                target_macs=args.target,
                importance=criterion,
                global_ranking=global_ranking,
                round_to=8,
                taylor_loss=taylor if criterion == "taylor" else None,
            )
            pruned = save_model(loaded, out / f"{name}.pt", {"plan": report.plan, "imgsz": args.imgsz}, overwrite=True)
            before = evaluate(loaded.model, args.data, imgsz=args.imgsz, batch=args.batch)
            tuned = finetune(
                pruned,
                args.data,
                epochs=args.epochs,
                teacher=args.baseline,
                imgsz=args.imgsz,
                batch=args.batch,
                out=out / name,
                overwrite=True,
                **train,
            )
            after = evaluate(tuned.best, args.data, imgsz=args.imgsz, batch=args.batch)
            print(
                f"| {criterion} | {'global' if global_ranking else 'uniform'} | {report.macs_ratio:.2f} | "
                f"{before.map50_95:.4f} | {before.map50:.4f} | {after.map50_95:.4f} | {after.map50:.4f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
