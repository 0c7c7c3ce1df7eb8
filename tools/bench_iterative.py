"""Does pruning in steps pay, once every step is calibrated? One-shot against iterative at the same fine-tune budget.

From a trained ultralytics checkpoint (``--model``, e.g. the converged yolov8n of ``tools/train_baselines.py``):

- ``one-shot``: ``yoloprune prune --calib`` straight to ``--target`` of the MACs, then ``--epochs`` of fine-tuning
  with distillation from the unpruned model;
- ``iterative``: ``--steps`` calibrated prunes along a geometric schedule of MACs targets (each step prunes the
  model the previous fine-tune left, calibrated against it), each followed by ``--epochs / --steps`` epochs of the
  same fine-tuning.

Both end with the same total epochs; the table has pycocotools' mAP50-95 on the validation split after every step
and of the final ``best.pt``, and the seconds each took.

    python tools/bench_iterative.py --model runs/baselines/yolov8n/weights/best.pt --data runs/baselines/data/data.yaml
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
    parser.add_argument("--model", required=True, help="trained ultralytics checkpoint (the teacher)")
    parser.add_argument("--data", required=True, help="its data yaml")
    parser.add_argument("-o", "--output", default="runs/bench_iterative")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--calib-images", type=int, default=64)
    args = parser.parse_args()

    from benchkit import FINETUNE, start

    import yoloprune
    from yoloprune.adapters import load_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.graph.counting import count_macs
    from yoloprune.train import finetune

    out, data = Path(args.output), Path(args.data)
    begin = start(args.model, data, out, args.imgsz)
    base, x, calib, unpruned = begin.base, begin.x, begin.calib, begin.unpruned
    macs = count_macs(base, x)
    rows = [{"method": "unpruned", "map50_95": unpruned}]
    print(json.dumps(rows[-1]), flush=True)

    def step(net, fraction: float, epochs: int, name: str) -> tuple:
        """Prune ``net`` (calibrated against itself) to ``fraction`` of the unpruned MACs, then fine-tune it."""
        began = time.perf_counter()
        relative = fraction * macs / count_macs(net, x)
        yoloprune.prune(net, x, target_macs=relative, round_to=8, calib=str(calib), calib_images=args.calib_images)
        pruned_score = evaluate(net, data, imgsz=args.imgsz).map50_95
        result = finetune(
            net,
            data,
            epochs=epochs,
            teacher=Path(args.model),
            imgsz=args.imgsz,
            batch=16,
            out=out / name,
            overwrite=True,
            workers=2,
            **FINETUNE,
        )
        tuned = load_model(str(result.best)).model
        row = {
            "method": name,
            "macs": round(count_macs(tuned, x) / macs, 3),
            "pruned": pruned_score,
            "tuned": evaluate(tuned, data, imgsz=args.imgsz).map50_95,
            "seconds": round(time.perf_counter() - began),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        return tuned

    step(copy.deepcopy(base), args.target, args.epochs, "one-shot")
    net = copy.deepcopy(base)
    per_step = max(1, args.epochs // args.steps)
    for k in range(1, args.steps + 1):
        net = step(net, args.target ** (k / args.steps), per_step, f"iterative-{k}")


if __name__ == "__main__":
    main()
