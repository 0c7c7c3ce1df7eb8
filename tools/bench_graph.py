"""Graph build and prune speed, peak memory, and Torch-Pruning on the same models in the same run.

    python tools/bench_graph.py                      # the default cases, a markdown table at the end
    python tools/bench_graph.py --cases yolov8x.yaml:640:yoloprune-prune

Every case runs in a fresh subprocess, so peak memory (max RSS above the model's own) and warm-up are per case.
Torch-Pruning is optional (``pip install --no-deps torch-pruning``); its cases are skipped when it is missing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DEFAULT = [
    "yolov8x.yaml:640:yoloprune-build",
    "yolov8x.yaml:640:yoloprune-prune",
    "yolo11n.yaml:160:yoloprune-build",
    "yolo11n.yaml:640:yoloprune-build",
    "yolo11n.yaml:1280:yoloprune-build",
    "yolov5xu.yaml:640:yoloprune-prune",
    "yolov5xu.yaml:640:torch-pruning",
    "yolov8n.yaml:640:torch-pruning",
]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str) -> dict:
    import torch
    from ultralytics.nn.tasks import DetectionModel

    cfg, size, tool = case.split(":")
    torch.set_num_threads(torch.get_num_threads())
    model = DetectionModel(cfg, verbose=False).eval()
    x = torch.zeros(1, 3, int(size), int(size))
    base = _rss_mb()
    result = {"case": case, "model": cfg, "imgsz": int(size), "tool": tool}
    if tool.startswith("yoloprune"):
        import yoloprune
        from yoloprune.adapters import resolve
        from yoloprune.graph import build

        import_done = time.perf_counter()
        if tool == "yoloprune-build":
            t = resolve(model)
            graph = build(t.module, x, outputs=t.outputs, ignore=t.ignore, policies=t.policies)
            result["groups"] = len(graph.groups)
        else:
            report = yoloprune.prune(model, x, ratio=0.3)
            result["macs_ratio"] = round(report.macs_ratio, 3)
        result["seconds"] = round(time.perf_counter() - import_done, 3)
    else:
        import torch_pruning as tp

        for p in model.parameters():
            p.requires_grad_(True)
        head = model.model[-1]
        start = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3, ignored_layers=[head]
        )
        result["graph_seconds"] = round(time.perf_counter() - start, 3)
        pruner.step()
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["version"] = tp.__version__
        model(x)  # Torch-Pruning can leave a model that no longer runs
    result["peak_mb_above_model"] = round(_rss_mb() - base, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=DEFAULT, help="MODEL:IMGSZ:TOOL entries")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=int, default=300, help="seconds per case")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one)))
        return 0
    rows = []
    for case in args.cases:
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", case], capture_output=True, text=True, timeout=args.timeout
            )
            if done.returncode == 0:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                last = (done.stderr.strip().splitlines() or ["?"])[-1]
                row = {"case": case, "error": last[:160]}
        except subprocess.TimeoutExpired:
            row = {"case": case, "error": f"did not finish in {args.timeout} s"}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| case | seconds | peak MB above model | notes |\n|---|---|---|---|")
    for r in rows:
        notes = r.get("error") or ", ".join(
            f"{k}={r[k]}" for k in ("groups", "macs_ratio", "graph_seconds", "version") if k in r
        )
        print(f"| {r['case']} | {r.get('seconds', '-')} | {r.get('peak_mb_above_model', '-')} | {notes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
