"""At equal measured latency, does ranking channels per millisecond keep more mAP than ranking them per MAC?

From a trained ultralytics checkpoint (``--model``, e.g. the converged yolov8s of ``tools/train_baselines.py``), the
same latency target (``--target`` x the unpruned model's onnxruntime latency at ``--latency-imgsz`` with
``--threads``) is reached twice with calibration, both aimed from that one unpruned timing and checked by timing
the pruned model against the unpruned one:

- ``macs``: ``--cost macs``, the recon importance per MAC saved;
- ``latency``: ``--cost latency``, the recon importance per millisecond saved from this machine's latency table
  (the default for a latency target with images);

then both are timed again side by side (interleaved, ``--runs`` each) and fine-tuned ``--epochs`` with distillation
from the unpruned model. The table has MACs, params, the measured latency, pycocotools mAP50-95 on the val split
right after pruning and after fine-tuning, and seconds.

    python tools/bench_latency_aware.py --model runs/baselines/yolov8s/weights/best.pt \\
        --data runs/baselines/data/data.yaml --target 0.5 --threads 2 --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="trained ultralytics checkpoint (the teacher)")
    parser.add_argument("--data", required=True, help="its data yaml")
    parser.add_argument("-o", "--output", default="runs/bench_latency_aware")
    parser.add_argument("--imgsz", type=int, default=160, help="training and evaluation size (160)")
    parser.add_argument("--latency-imgsz", type=int, default=640, help="latency size (640)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.5, help="latency target as a fraction of the unpruned")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs", type=int, default=40, help="timed runs per model in the side-by-side check")
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (0)")
    args = parser.parse_args()

    from benchkit import FINETUNE, start

    import yoloprune
    from yoloprune.adapters import load_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.export.bench import module_latency, onnx_latency
    from yoloprune.export.onnx import export_onnx
    from yoloprune.graph.counting import count_macs, count_params
    from yoloprune.train import finetune

    out, data = Path(args.output), Path(args.data)
    begin = start(args.model, data, out, args.imgsz)
    base, x = begin.base, begin.x
    unpruned_ms = module_latency(base, args.latency_imgsz, args.threads, runs=40)
    target = args.target * unpruned_ms
    rows = [{"method": "unpruned", "latency_ms": round(unpruned_ms, 1), "map50_95": begin.unpruned}]
    print(json.dumps(rows[-1]), flush=True)

    pruned = {}
    for cost in ("macs", "latency"):
        began = time.perf_counter()
        net = copy.deepcopy(base)
        report = yoloprune.prune(
            net,
            x,
            target_latency_ms=target,
            cost=cost,
            round_to=args.round_to,
            latency_imgsz=args.latency_imgsz,
            latency_threads=args.threads,
            latency_unpruned_ms=unpruned_ms,  # both arms aim from this one timing
            calib=str(begin.calib),
            calib_images=args.calib_images,
        )
        pruned[cost] = (net, report, time.perf_counter() - began)

    with tempfile.TemporaryDirectory() as tmp:  # side by side: the two models timed in turns
        paths = {}
        for cost, (net, _, _) in pruned.items():
            paths[cost] = Path(tmp) / f"{cost}.onnx"
            export_onnx(net, paths[cost], imgsz=args.latency_imgsz)
        times: dict[str, list[float]] = {cost: [] for cost in paths}
        for _ in range(4):
            for cost, path in paths.items():
                times[cost].append(onnx_latency(path, args.latency_imgsz, args.threads, runs=args.runs // 4).p50)

    for cost, (net, report, seconds) in pruned.items():
        began = time.perf_counter()
        start_map = evaluate(net, data, imgsz=args.imgsz).map50_95
        result = finetune(
            net,
            data,
            epochs=args.epochs,
            teacher=Path(args.model),
            imgsz=args.imgsz,
            batch=16,
            out=out / cost,
            overwrite=True,
            workers=2,
            seed=args.seed,
            **FINETUNE,
        )
        tuned = load_model(str(result.best)).model
        lat = report.settings["latency"]
        row = {
            "method": cost,
            "macs": round(count_macs(tuned, x) / count_macs(base, x), 3),
            "params": round(count_params(tuned) / count_params(base), 3),
            "predicted_ms": round(lat["predicted_ms"], 1),
            "measured_ms": round(lat["measured_ms"], 1),
            "side_by_side_ms": round(statistics.median(times[cost]), 1),
            "pruned": start_map,
            "tuned": evaluate(tuned, data, imgsz=args.imgsz).map50_95,
            "seconds": round(seconds + time.perf_counter() - began),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
