"""Big models under load: prune and evaluate through the CLI, with each command's wall time and peak RSS.

    python tools/bench_load.py --data runs/demo/data/data.yaml     # yolov8x at 1280 and yolov9e at 640

Every command runs in its own process; peak RSS is that process's maximum resident set (``getrusage`` of the child).
Evaluation uses the first ``--max-images`` validation images at the model's size, batch ``--batch`` (random
weights: the point is memory and time, not mAP).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [("yolov8x.yaml", 1280), ("yolov9e.yaml", 640)]


def run(argv: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one ``yoloprune`` command in a child process."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "yoloprune", *argv], capture_output=True, text=True
    )
    seconds, peak, rc = done.stdout.split()
    if rc != "0":
        raise SystemExit(f"yoloprune {' '.join(argv)} failed:\n{done.stderr}")
    return float(seconds), float(peak)


def with_classes(cfg: str, data: str, folder: Path) -> str:
    """A copy of ultralytics' ``cfg`` (same file name, so the same scale) predicting the dataset's classes."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    spec = {k: v for k, v in yaml_model_load(cfg).items() if k not in ("yaml_file", "scale")}
    spec["nc"] = len(yaml.safe_load(Path(data).read_text())["names"])
    (folder / cfg).write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(folder / cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data yaml to evaluate on")
    parser.add_argument("--max-images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    print("| model | imgsz | step | seconds | peak RSS (MB) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for cfg, imgsz in CASES:
            pruned = str(Path(tmp) / f"{Path(cfg).stem}-{imgsz}.pt")
            local = with_classes(cfg, args.data, Path(tmp))
            steps = {
                "prune 50% MACs": ["prune", local, "--target-macs", "0.5", "--imgsz", str(imgsz), "-o", pruned],
                f"eval pruned ({args.max_images} images)": [
                    "eval",
                    pruned,
                    "--data",
                    args.data,
                    "--imgsz",
                    str(imgsz),
                    "--batch",
                    str(args.batch),
                    "--max-images",
                    str(args.max_images),
                ],
            }
            for step, argv in steps.items():
                seconds, peak = run(argv)
                print(f"| {cfg} | {imgsz} | {step} | {seconds:.1f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
