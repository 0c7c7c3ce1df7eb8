"""yoloprune's pycocotools mAP against ultralytics' own ``val`` on the same model and data.

    python tools/check_eval_agreement.py MODEL.pt --data DATA.yaml [--imgsz 160] [--batch 16]

Both use conf 0.001, IoU 0.7, 300 detections. Prints both figures and their difference in points.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from ultralytics import YOLO

    from yoloprune.evaluate.coco import evaluate

    ours = evaluate(args.model, args.data, imgsz=args.imgsz, batch=args.batch)
    theirs = YOLO(args.model).val(
        data=args.data, imgsz=args.imgsz, batch=args.batch, conf=0.001, iou=0.7, plots=False, verbose=False
    )
    print("| | mAP50-95 | mAP50 |\n|---|---|---|")
    print(f"| yoloprune eval (pycocotools) | {ours.map50_95:.4f} | {ours.map50:.4f} |")
    print(f"| ultralytics val | {theirs.box.map:.4f} | {theirs.box.map50:.4f} |")
    print(
        f"| difference (points) | {100 * (ours.map50_95 - theirs.box.map):+.2f} | "
        f"{100 * (ours.map50 - theirs.box.map50):+.2f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
