"""What exporting ultralytics' DFL on its bin axis buys: onnxruntime CPU latency of each model exported with
ultralytics' own DFL (a transpose, a softmax on axis 1 and a 1x1 convolution) and with yoloprune's ``BinAxisDFL``
(a softmax on axis 2 and a weighted sum), unpruned and pruned per millisecond to 50% MACs, all timed in interleaved
rounds. Random weights (seeded); run it on an otherwise idle machine.

    python tools/bench_export_dfl.py [--models yolov8s.yaml yolo11s.yaml] [--threads 2 1] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import yoloprune
import yoloprune.adapters.ultralytics as ultralytics_adapter
from yoloprune.adapters.ultralytics import from_config
from yoloprune.export.bench import onnx_latency
from yoloprune.export.onnx import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["yolov8s.yaml", "yolo11s.yaml"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=8, help="timed runs per model and round")
    args = parser.parse_args()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    nets = {}
    for cfg in args.models:
        for kind in ("unpruned", "pruned"):
            torch.manual_seed(0)
            nets[cfg, kind] = from_config(cfg).eval()
            if kind == "pruned":
                yoloprune.prune(nets[cfg, kind], x, target_macs=0.5, round_to=8, cost="latency", latency_threads=2)
    ours = ultralytics_adapter.BinAxisDFL
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for (cfg, kind), net in nets.items():
            for dfl in ("ultralytics", "bin axis"):
                # the export swaps each DFL for BinAxisDFL(dfl): keeping the DFL itself is ultralytics' export
                ultralytics_adapter.BinAxisDFL = ours if dfl == "bin axis" else (lambda child: child)
                paths[cfg, kind, dfl] = Path(tmp) / f"{len(paths)}.onnx"
                export_onnx(net, paths[cfg, kind, dfl], imgsz=args.imgsz)
        ultralytics_adapter.BinAxisDFL = ours
        print("| model | threads | unpruned ms: ultralytics DFL -> bin axis | pruned to 50% MACs | ratio |")
        print("|---|---|---|---|---|")
        for threads in args.threads:
            times: dict[tuple[str, str, str], list[float]] = {key: [] for key in paths}
            for _ in range(args.rounds):
                for key, path in paths.items():
                    times[key].append(onnx_latency(path, args.imgsz, threads, runs=args.runs, warmup=3).p50)
            ms = {key: statistics.median(v) for key, v in times.items()}
            for cfg in args.models:
                u0, u1 = ms[cfg, "unpruned", "ultralytics"], ms[cfg, "unpruned", "bin axis"]
                p0, p1 = ms[cfg, "pruned", "ultralytics"], ms[cfg, "pruned", "bin axis"]
                print(
                    f"| {cfg} | {threads} | {u0:.1f} -> {u1:.1f} | {p0:.1f} -> {p1:.1f} | "
                    f"{p0 / u0:.3f} -> {p1 / u1:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
