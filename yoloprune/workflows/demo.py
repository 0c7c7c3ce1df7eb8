"""``yoloprune demo``: the whole job on the synthetic benchmark, end to end, offline, on a CPU.

Generate the data, train a small ultralytics baseline (kept under the output folder, so a rerun reuses it), prune it
to half its MACs, fine-tune with distillation from the baseline, evaluate baseline / pruned / fine-tuned with
pycocotools, export baseline and fine-tuned to verified ONNX files, time both with onnxruntime, and write
``report.md``, ``results.json`` and a Pareto plot.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from yoloprune.io import write_atomic


@dataclass(frozen=True)
class Settings:
    """The demo's scale: the default fits 10 minutes on a 2-core CPU, ``quick`` about two."""

    train: int = 400
    val: int = 100
    imgsz: int = 160
    classes: int = 4
    difficulty: str = "easy"  # the hard benchmark needs far more than a few CPU minutes of training
    model: str = "yolov8n.yaml"
    base_epochs: int = 15
    finetune_epochs: int = 5
    target_macs: float = 0.5
    batch: int = 16
    threads: int = 1
    runs: int = 30
    calib_images: int = 64


FULL = Settings()
QUICK = Settings(train=48, val=16, imgsz=96, classes=3, base_epochs=2, finetune_epochs=1, runs=5, calib_images=16)
# mosaic shrinks objects at 160 px; nbs = batch makes ultralytics step every batch (it accumulates to 64 otherwise)
TRAIN_ARGS = {"mosaic": 0.0, "close_mosaic": 0, "warmup_epochs": 1, "plots": False, "workers": 2, "seed": 0, "nbs": 16}


@dataclass
class Row:
    name: str
    params: int
    macs: int
    map50_95: float
    map50: float
    latency_ms: float | None
    path: str


def _step(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)


def _data(out: Path, s: Settings) -> Path:
    from yoloprune.data import synthesize

    path = out / "data"
    meta = path / "meta.json"
    wanted = {
        "train": s.train,
        "val": s.val,
        "imgsz": s.imgsz,
        "classes": s.classes,
        "seed": 0,
        "difficulty": s.difficulty,
    }
    if meta.is_file():
        stored = json.loads(meta.read_text())
        params = {"difficulty": "hard", **stored.get("params", {})}
        if all(params.get(k) == v for k, v in wanted.items()):
            return path / "data.yaml"
        shutil.rmtree(path)
    return synthesize(path, s.train, s.val, s.imgsz, s.classes, seed=0, difficulty=s.difficulty)


def _check_model(config: str) -> None:
    """Refuse, before anything is written, a config that is no ultralytics detector (the demo's data has boxes)."""
    from ultralytics.nn.tasks import guess_model_task

    from yoloprune.adapters.ultralytics import from_config

    net = from_config(config)
    if guess_model_task(net) != "detect":
        raise ValueError(f"the demo trains a detector on boxes; {config} is a {guess_model_task(net)} model")


def _baseline(out: Path, data: Path, s: Settings) -> Path:
    """Train (or reuse) the unpruned baseline with stock ultralytics."""
    best = out / "baseline" / "weights" / "best.pt"
    stamp = out / "baseline" / "yoloprune_demo.json"
    wanted = {**asdict(s), "data": str(data)}
    if best.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return best
    from ultralytics import YOLO

    from yoloprune.train.ultralytics_trainer import print_epoch, use_every_core

    model = YOLO(s.model)
    model.add_callback("on_fit_epoch_end", print_epoch)
    model.add_callback("on_pretrain_routine_start", use_every_core)
    model.train(
        data=str(data),
        epochs=s.base_epochs,
        imgsz=s.imgsz,
        batch=s.batch,
        device="cpu",
        project=str(out.resolve()),
        name="baseline",
        exist_ok=True,
        verbose=False,
        **TRAIN_ARGS,
    )
    write_atomic(stamp, lambda f: f.write(json.dumps(wanted).encode()), overwrite=True)
    return best


def _row(name: str, checkpoint: Path, data: Path, s: Settings, onnx: Path | None) -> Row:
    from yoloprune.workflows.pipeline import measure

    m = measure(checkpoint, data, s.imgsz, batch=s.batch, onnx=onnx, threads=s.threads, runs=s.runs)
    return Row(name, m.params, m.macs, m.map50_95, m.map50, m.latency_ms, str(onnx or checkpoint))


def demo(out: str | Path = "runs/demo", quick: bool = False, model: str = "yolov8n") -> list[Row]:
    """Run the demo into ``out`` with ``model`` (an ultralytics detector's config name: ``yolov8n``, ``yolo11n``,
    ``yolo26n``...); returns the rows of the final table (baseline, baseline trained as long as the fine-tune,
    pruned, pruned and fine-tuned)."""
    from yoloprune.adapters import load_model
    from yoloprune.pruning.settings import PruneSettings
    from yoloprune.workflows.pipeline import default_teacher, prune_to_file, recover

    s = replace(QUICK if quick else FULL, model=model if model.endswith((".yaml", ".yml")) else f"{model}.yaml")
    _check_model(s.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _step(f"synthetic data ({s.difficulty}): {s.train} train + {s.val} val images at {s.imgsz} px", start)
    data = _data(out, s)
    _step(f"baseline: {s.model} trained {s.base_epochs} epochs (reused when already there)", start)
    baseline = _baseline(out, data, s)
    _step(f"prune to {s.target_macs:.0%} of the MACs (round_to 8), calibrated on {s.calib_images} train images", start)
    pruned = out / "pruned.pt"
    settings = PruneSettings(target_macs=s.target_macs, round_to=8)
    calib = data.parent / "images" / "train"
    report = prune_to_file(
        load_model(str(baseline)), s.imgsz, settings, pruned, overwrite=True, calib=calib, calib_images=s.calib_images
    )
    _step(f"fine-tune {s.finetune_epochs} epochs with distillation from the baseline", start)
    tuned = recover(
        pruned,
        data,
        teacher=default_teacher(baseline),
        epochs=s.finetune_epochs,
        imgsz=s.imgsz,
        batch=s.batch,
        out=out / "finetune",
        overwrite=True,
        **{k: v for k, v in TRAIN_ARGS.items() if k != "close_mosaic"},
    )
    _step(f"the baseline trained {s.finetune_epochs} more epochs too: the same training budget", start)
    longer = recover(
        baseline,
        data,
        teacher=None,
        epochs=s.finetune_epochs,
        imgsz=s.imgsz,
        batch=s.batch,
        out=out / "baseline_longer",
        overwrite=True,
        **{k: v for k, v in TRAIN_ARGS.items() if k != "close_mosaic"},
    )
    _step("evaluate, export to ONNX and time with onnxruntime", start)
    rows = [
        _row("baseline", baseline, data, s, out / "baseline.onnx"),
        _row(f"baseline + {s.finetune_epochs} epochs (same budget)", longer, data, s, None),
        _row("pruned and calibrated, before fine-tuning", pruned, data, s, None),
        _row(f"pruned + {s.finetune_epochs} epochs fine-tuning (KD)", tuned, data, s, out / "pruned.onnx"),
    ]
    seconds = time.perf_counter() - start
    _write_report(out, rows, s, seconds, report.notes)
    _step("done", start)
    print(table(rows))
    print(f"\nreport: {out / 'report.md'}")
    return rows


def table(rows: list[Row]) -> str:
    """The demo's final table, in markdown."""
    lines = ["| model | params (M) | GMACs | mAP50-95 | mAP50 | ONNX latency p50 (ms) |", "|---|---|---|---|---|---|"]
    for r in rows:
        latency = f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-"
        lines.append(
            f"| {r.name} | {r.params / 1e6:.3f} | {r.macs / 1e9:.3f} | {r.map50_95:.4f} | {r.map50:.4f} | {latency} |"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import os

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _write_report(out: Path, rows: list[Row], s: Settings, seconds: float, notes: list[str]) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = _machine()
    data = {
        "date": when,
        "machine": machine,
        "settings": asdict(s),
        "seconds": round(seconds, 1),
        "rows": [asdict(r) for r in rows],
    }
    write_atomic(out / "results.json", lambda f: f.write(json.dumps(data, indent=1).encode()), overwrite=True)
    _plot(rows, out / "pareto.png")
    text = [
        "# yoloprune demo",
        "",
        f"Run on {when}, {machine['cores']} CPU cores ({machine['cpu']}), torch {machine['torch']}; "
        f"{seconds / 60:.1f} minutes in all.",
        "",
        f"Synthetic data ({s.difficulty}): {s.train} train / {s.val} val images at {s.imgsz} px, {s.classes} classes. "
        "Baseline "
        f"{s.model} trained from scratch for {s.base_epochs} epochs on the CPU, pruned to {s.target_macs:.0%} of "
        f"its MACs, fine-tuned {s.finetune_epochs} epochs with distillation; the baseline trained as many more epochs "
        f"is the fair comparison, since it is far from converged. mAP by pycocotools on the val split; latency by "
        f"onnxruntime, {s.threads} thread, {s.runs} runs (a row without latency runs the same network as a row above).",
        "",
        table(rows),
        "",
        *[f"- note: {n}" for n in notes],
        "",
        "![Pareto plot](pareto.png)",
        "",
    ]
    write_atomic(out / "report.md", lambda f: f.write("\n".join(text).encode()), overwrite=True)


def _plot(rows: list[Row], path: Path) -> None:
    """mAP50-95 against ONNX latency and MACs for every row (a row without its own latency takes that of the row
    with the same network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = {r.macs: r.latency_ms for r in rows if r.latency_ms is not None}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    markers = ["*", "D", "x", "o"]
    for ax, key, label in ((axes[0], "latency", "onnxruntime CPU latency p50 (ms)"), (axes[1], "macs", "GMACs")):
        for row, marker in zip(rows, markers):
            x = (row.latency_ms or timed.get(row.macs)) if key == "latency" else row.macs / 1e9
            ax.plot([x], [row.map50_95], marker, markersize=10, label=row.name)
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), overwrite=True)
    plt.close(fig)
