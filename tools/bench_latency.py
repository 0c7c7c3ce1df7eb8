"""Does pruning buy latency? onnxruntime CPU latency of pruned models against the unpruned one, in one run.

    python tools/bench_latency.py [--models yolov8s.yaml yolo11s.yaml] [--targets 0.7 0.5 0.3] [--imgsz 640]
                                  [--threads 1] [--runs 50] [--round-to 8 1]

For every model: the unpruned latency, then for each MACs target and round_to the pruned latency and its ratio.
Random weights are fine for latency. Prints a markdown table; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import yoloprune
import yoloprune.graph.counting
from yoloprune.adapters.ultralytics import from_config
from yoloprune.export.bench import onnx_latency
from yoloprune.export.onnx import export_onnx


def latency(model: torch.nn.Module, imgsz: int, threads: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model, path, imgsz=imgsz)
        return onnx_latency(path, imgsz, threads, runs=runs, warmup=10).p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["yolov8s.yaml", "yolo11s.yaml"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--round-to", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    print(f"| model | MACs target | round_to | GMACs | params (M) | ORT p50 ms ({args.threads} thread) | vs unpruned |")
    print("|---|---|---|---|---|---|---|")
    for cfg in args.models:
        base = from_config(cfg).eval()
        base_ms = latency(base, args.imgsz, args.threads, args.runs)
        macs = yoloprune.graph.counting.count_macs(base, x)
        params = sum(p.numel() for p in base.parameters())
        print(f"| {cfg} | 1.00 | - | {macs / 1e9:.2f} | {params / 1e6:.2f} | {base_ms:.1f} | 1.00 |", flush=True)
        for target in args.targets:
            for round_to in args.round_to:
                model = from_config(cfg).eval()
                report = yoloprune.prune(model, x, target_macs=target, round_to=round_to)
                ms = latency(model, args.imgsz, args.threads, args.runs)
                print(
                    f"| {cfg} | {target:.2f} | {round_to} | {report.macs_after / 1e9:.2f} | "
                    f"{report.params_after / 1e6:.2f} | {ms:.1f} | {ms / base_ms:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
