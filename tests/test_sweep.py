"""Sweeps: one point per target from the original model, written as they finish, resumable, with a Pareto plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import MacsTable, randomize

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.options import default_threads
from yoloprune.workflows import pipeline
from yoloprune.workflows import sweep as sweep_module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = synthesize(root / "data", train=4, val=4, imgsz=64, classes=3, seed=2)
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    checkpoint = save(Loaded(net, "ultralytics", "x", {"train_args": {}}), root / "base.pt", {})
    return data, checkpoint


def test_sweep_writes_every_point_and_resumes(setup, tmp_path, monkeypatch, capsys):
    data, checkpoint = setup
    out = tmp_path / "s"
    argv = [
        "sweep",
        str(checkpoint),
        "--data",
        str(data),
        "-o",
        str(out),
        "--targets",
        "0.7,0.4",
        "--imgsz",
        "64",
        "--runs",
        "2",
        "--batch",
        "4",
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [float(r["target"]) for r in rows] == [1.0, 0.7, 0.4]
    macs = [int(r["macs"]) for r in rows]
    assert macs[0] > macs[1] > macs[2] and abs(macs[2] / macs[0] - 0.4) < 0.03
    report = (out / "report.md").read_text()
    assert (out / "pareto.png").stat().st_size > 10_000 and "| unpruned |" in report
    timing = "every point timed side by side at the end (median of 4 interleaved rounds of 1 runs)"
    assert f"{default_threads()} thread(s), 64x64, {timing}. Targets: fractions of its MACs." in report
    results = json.loads((out / "results.json").read_text())
    assert results[1]["onnx"].endswith(".onnx") and results[1]["latency_p50_ms"] == float(rows[1]["latency_p50_ms"])
    unpruned = (out / "points" / "1.000.json").read_text()
    (out / "points" / "0.400.json").unlink()
    calls = []
    real = pipeline.measure
    monkeypatch.setattr(pipeline, "measure", lambda *a, **k: calls.append(Path(a[0]).name) or real(*a, **k))
    assert main(argv) == 0
    assert calls == ["pruned-0.400.pt"]  # only the missing point was recomputed
    assert (out / "points" / "1.000.json").read_text() == unpruned  # timed again for the results, not the records
    Path(results[1]["onnx"]).unlink()  # a point's file gone: the points keep the timings they were recorded with
    assert main(argv) == 0 and calls == ["pruned-0.400.pt"]
    assert "p50 of 2 runs as each point finished. Targets" in (out / "report.md").read_text()
    capsys.readouterr()
    for name, text, problem in [
        ("1.000.json", '{"target": 1.0}', "missing 8 required positional arguments"),
        ("0.700.json", json.dumps({**json.loads(unpruned), "map50": "high"}), "a field that should be a number"),
        ("0.700.json", "{", "Expecting property name"),
    ]:
        kept = (out / "points" / name).read_text()
        (out / "points" / name).write_text(text)
        assert main(argv) == 2 and calls == ["pruned-0.400.pt"]
        err = capsys.readouterr().err
        assert f"{out / 'points' / name} is not a sweep point (" in err and problem in err, err
        (out / "points" / name).write_text(kept)


def test_sweep_with_finetuning(setup, tmp_path):
    data, checkpoint = setup
    points = sweep_module.sweep(
        checkpoint,
        data,
        tmp_path / "ft",
        [0.5],
        finetune_epochs=1,
        imgsz=64,
        batch=4,
        runs=1,
        finetune_args={"workers": 0, "mosaic": 0.0, "warmup_epochs": 0},
    )
    assert len(points) == 2 and "finetune" in points[1].checkpoint
    assert torch.load(points[1].checkpoint, weights_only=False)["yoloprune"]["finetune"]["teacher"]


def test_a_sweep_on_other_classes_fine_tunes_every_point(setup, tmp_path):
    """An 80-class model on 3-class data: refused without fine-tuning; with it, the unpruned reference learns the
    data's classes with the same budget as the pruned point, and both are evaluated on the data."""
    data, _ = setup
    coco = save(
        Loaded(randomize(from_config("yolov8n.yaml")), "ultralytics", "x", {"train_args": {}}), tmp_path / "c.pt", {}
    )
    with pytest.raises(ValueError, match=r"the model predicts 80 classes, .* has 3: a sweep on other classes"):
        sweep_module.sweep(coco, data, tmp_path / "none", [0.5], imgsz=64, runs=1)
    args = {"workers": 0, "mosaic": 0.0, "warmup_epochs": 0}
    points = sweep_module.sweep(
        coco, data, tmp_path / "t", [0.5], finetune_epochs=1, imgsz=64, batch=4, runs=1, finetune_args=args
    )
    assert [Path(p.checkpoint).parts[-4:-2] for p in points] == [("finetune", "1.000"), ("finetune", "0.500")]
    assert all(p.map50_95 is not None for p in points)


def test_bad_targets(setup, tmp_path, capsys):
    data, checkpoint = setup
    assert main(["sweep", str(checkpoint), "--data", str(data), "-o", str(tmp_path / "x"), "--targets", "1.5"]) == 2
    assert "--targets: 1.5 is outside (0, 1]" in capsys.readouterr().err


def test_sweep_calibrates_every_pruned_point(setup, tmp_path):
    data, checkpoint = setup
    images = data.parent / "images" / "train"
    points = sweep_module.sweep(checkpoint, data, tmp_path / "c", [0.6], imgsz=64, runs=1, calib=images, calib_images=4)
    section = torch.load(points[1].checkpoint, weights_only=False)["yoloprune"]
    assert section["settings"]["calibration"]["images"] == 4 and section["settings"]["calibration"]["layers"] > 0
    assert json.loads((tmp_path / "c" / "sweep.json").read_text())["calib"] == {
        "images": str(images.resolve()),
        "count": 4,
    }


def test_a_sweep_ranked_per_millisecond_records_its_cost(setup, tmp_path, monkeypatch):
    """``cost="latency"``: every point is pruned over the latency table (here a stand-in holding MACs, so nothing
    is timed) with the sweep's threads, and the folder's key names the cost."""
    from yoloprune.export import latency_table

    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    MacsTable.made.clear()
    data, checkpoint = setup
    points = sweep_module.sweep(checkpoint, data, tmp_path / "l", [0.5], imgsz=64, runs=1, threads=3, cost="latency")
    section = torch.load(points[1].checkpoint, weights_only=False)["yoloprune"]
    assert section["settings"]["cost"] == "latency" and MacsTable.made == [3]
    assert abs(points[1].macs / points[0].macs - 0.5) < 0.03
    key = json.loads((tmp_path / "l" / "sweep.json").read_text())
    assert key["cost"] == "latency" and key["threads"] == 3


def test_a_sweep_by_latency_prunes_each_point_to_its_share_of_the_unpruned_time(setup, tmp_path, monkeypatch):
    """``by="latency"``: each point is a latency target, that share of the unpruned point's measured time, aimed from
    that one timing (the unpruned model is never timed again); without calibration every layer loses the same share
    (l2 scores do not compare across layers, so they are not ranked per millisecond). Clocks here are
    deterministic: a model takes its MACs in microseconds, measured and relative alike."""
    from dataclasses import replace

    from yoloprune.adapters import load_model
    from yoloprune.export import bench, latency_table
    from yoloprune.graph.counting import count_macs

    def macs(net):
        return count_macs(net, torch.zeros(1, 3, 64, 64))

    def never(*args, **kwargs):
        raise AssertionError("the unpruned model was timed again for a latency target")

    data, checkpoint = setup
    unpruned = macs(load_model(str(checkpoint)).model)
    real = pipeline.measure

    def measured(*args, onnx=None, **kwargs):
        m = real(*args, **kwargs)  # counted and evaluated, not exported: its latency is its MACs
        return replace(m, latency_ms=m.macs / 1e6, onnx=onnx)

    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    monkeypatch.setattr(bench, "module_latency", never)
    monkeypatch.setattr(bench, "relative_latency", lambda net, *a, **k: macs(net) / unpruned)
    monkeypatch.setattr(pipeline, "measure", measured)
    out = tmp_path / "by-latency"
    points = sweep_module.sweep(checkpoint, data, out, [0.6], by="latency", imgsz=64, runs=1, threads=2)
    base, point = points
    assert base.latency_p50_ms == pytest.approx(unpruned / 1e6)
    assert 0.97 * 0.6 <= point.latency_p50_ms / base.latency_p50_ms <= 0.6
    section = torch.load(point.checkpoint, weights_only=False)["yoloprune"]["settings"]
    assert section["cost"] == "macs" and section["target_latency_ms"] == pytest.approx(0.6 * base.latency_p50_ms)
    assert section["latency"]["unpruned_ms"] == base.latency_p50_ms and section["latency"]["threads"] == 2
    key = json.loads((out / "sweep.json").read_text())
    assert key["by"] == "latency" and "cost" not in key
    report = (out / "report.md").read_text()
    assert "| latency target | GMACs |" in report and "| 0.60 |" in report
    assert "Targets: fractions of the unpruned model's measured latency.\n" in report  # l2: not per millisecond
    (out / "points" / "0.600.json").unlink()  # resumed: the unpruned time is read from its point
    again = sweep_module.sweep(checkpoint, data, out, [0.6], by="latency", imgsz=64, runs=1, threads=2)
    assert again[1].latency_p50_ms == pytest.approx(point.latency_p50_ms)
    with pytest.raises(ValueError, match="sweep targets are fractions of one of macs, latency, not 'params'"):
        sweep_module.sweep(checkpoint, data, tmp_path / "p", [0.6], by="params", imgsz=64)
