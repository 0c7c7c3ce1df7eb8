"""Coverage table for the ultralytics adapter: every shipped detection config (smallest scale), pruned at a ratio.

    python tools/coverage_table.py [--ratio 0.3] [--imgsz 640]

Prints a markdown table: config, groups (prunable), MACs before and after at IMGSZ, params, build+prune seconds,
and the exactness check at 64x64 (max relative output difference against the zeroed unpruned model).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import randomize
from test_ultralytics_coverage import DETECT

import yoloprune
from yoloprune.adapters import resolve
from yoloprune.adapters.ultralytics import detections, from_config
from yoloprune.graph import build, max_relative_difference, zero_producers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    x = torch.zeros(1, 3, args.imgsz, args.imgsz)
    small = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    print("| config | groups (prunable) | GMACs before | GMACs after | params before -> after (M) | seconds | exact |")
    print("|---|---|---|---|---|---|---|")
    for cfg in DETECT:
        model = randomize(from_config(cfg))
        target = resolve(model)
        graph = build(model, x, outputs=target.outputs, ignore=target.ignore, policies=target.policies)
        reference = copy.deepcopy(model)
        start = time.perf_counter()
        report = yoloprune.prune(model, x, ratio=args.ratio)
        seconds = time.perf_counter() - start
        zero_producers(reference, report.removal)
        diff = max_relative_difference(reference, model, small, detections)
        print(
            f"| {cfg} | {len(graph.groups)} ({len(graph.prunable_groups)}) | {report.macs_before / 1e9:.2f} | "
            f"{report.macs_after / 1e9:.2f} ({report.macs_ratio:.0%}) | {report.params_before / 1e6:.2f} -> "
            f"{report.params_after / 1e6:.2f} | {seconds:.2f} | {diff:.0e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
