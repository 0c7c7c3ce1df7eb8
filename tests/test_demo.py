"""The README's main job, in its quick form: data, baseline, prune, fine-tune, eval, export, bench, report."""

from __future__ import annotations

import json

import onnx

from yoloprune.cli import main


def test_quick_demo_end_to_end_and_reuses_its_baseline(tmp_path, capsys):
    """With YOLO26, ultralytics' default detector: its own optimizer and both heads trained and distilled, the ONNX
    files dense as ``yolo export`` writes them by default (yolov8n, the default, runs through every other test)."""
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--quick", "--model", "yolo26n"]) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| pruned + 1 epochs fine-tuning (KD) |" in printed
    results = json.loads((out / "results.json").read_text())
    base, longer, pruned, tuned = results["rows"]
    assert longer["params"] == base["params"] and longer["latency_ms"] is None
    assert 0.45 <= pruned["macs"] / base["macs"] <= 0.55 and tuned["params"] == pruned["params"] < base["params"]
    assert base["latency_ms"] > 0 and tuned["latency_ms"] > 0
    for name in ("report.md", "pareto.png", "baseline.onnx", "pruned.onnx", "pruned.pt"):
        assert (out / name).is_file()
    graph = onnx.load(out / "pruned.onnx").graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 7, 189]  # 4 + 3 classes, 96 px
    stamp = (out / "baseline" / "weights" / "best.pt").stat().st_mtime
    assert main(["demo", "-o", str(out), "--quick", "--model", "yolo26n"]) == 0
    assert (out / "baseline" / "weights" / "best.pt").stat().st_mtime == stamp  # the baseline was reused
