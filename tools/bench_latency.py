"""Does pruning buy latency? onnxruntime CPU latency of pruned models against the unpruned one, in one run.

    python tools/bench_latency.py [--models yolov8s.yaml yolo11s.yaml] [--targets 0.7 0.5 0.3] [--imgsz 640]
                                  [--threads 1] [--runs 50] [--rounds 5] [--round-to 8 1] [--cost macs latency]
                                  [--prune-head]

For every model: the unpruned one and, for each MACs target, round_to and cost, a pruned one, all exported first and
then timed in ``--rounds`` interleaved rounds of ``--runs / --rounds`` runs each (the ratio of medians is what is
printed, so a drift in the machine's speed hits every model alike). ``--cost macs`` is the default selection
(uniform l2 without images); ``latency`` ranks channels globally by importance per millisecond from the latency
table (measured once per machine and thread count, then cached), whose prediction is printed beside the
measurement. Random weights are fine for latency. Prints a markdown table; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import yoloprune
import yoloprune.graph.counting
from yoloprune.adapters import resolve
from yoloprune.adapters.ultralytics import from_config
from yoloprune.export.bench import onnx_latency
from yoloprune.export.latency_table import ConvTimer
from yoloprune.export.onnx import export_onnx
from yoloprune.graph import build
from yoloprune.pruning.latency import LatencyModel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["yolov8s.yaml", "yolo11s.yaml"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--round-to", nargs="+", type=int, default=[8, 1])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cost", nargs="+", default=["macs"], choices=["macs", "latency"])
    parser.add_argument("--prune-head", action="store_true", help="prune the detection head's inner convolutions too")
    args = parser.parse_args()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    print(
        f"| model | MACs target | round_to | cost | GMACs | params (M) | ORT p50 ms ({args.threads} thread) | "
        "vs unpruned | predicted ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    table = ConvTimer(args.threads)
    for cfg in args.models:
        torch.manual_seed(0)  # the same random weights, hence the same selection, in every run
        base = from_config(cfg).eval()
        convs = LatencyModel(build(base, x, outputs=resolve(base).outputs), table).predict()
        rows = [(cfg, "1.00", "-", "-", base)]
        for target in args.targets:
            for round_to in args.round_to:
                for cost in args.cost:
                    torch.manual_seed(0)
                    model = from_config(cfg).eval()
                    settings = {
                        "target_macs": target,
                        "round_to": round_to,
                        "cost": cost,
                        "prune_head": args.prune_head,
                    }
                    yoloprune.prune(model, x, latency_threads=args.threads, **settings)
                    rows.append((cfg, f"{target:.2f}", str(round_to), cost, model))
        with tempfile.TemporaryDirectory() as tmp:
            paths = [Path(tmp) / f"{i}.onnx" for i in range(len(rows))]
            for path, row in zip(paths, rows):
                export_onnx(row[-1], path, imgsz=args.imgsz)
            times: list[list[float]] = [[] for _ in rows]
            per_round = max(1, args.runs // args.rounds)
            for _ in range(args.rounds):
                for i, path in enumerate(paths):
                    times[i].append(onnx_latency(path, args.imgsz, args.threads, runs=per_round, warmup=3).p50)
        base_ms = statistics.median(times[0])
        for (name, target, round_to, cost, model), ms in zip(rows, map(statistics.median, times)):
            macs = yoloprune.graph.counting.count_macs(model, x)
            params = sum(p.numel() for p in model.parameters())
            graph = build(model, x, outputs=resolve(model).outputs)
            predicted = LatencyModel(graph, table).predict() * base_ms / convs  # the table's share of the unpruned
            print(
                f"| {name} | {target} | {round_to} | {cost} | {macs / 1e9:.2f} | {params / 1e6:.2f} | {ms:.1f} | "
                f"{ms / base_ms:.2f} | {predicted:.1f} |",
                flush=True,
            )
    table.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
