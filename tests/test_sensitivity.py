"""Sensitivity: every stage pruned alone and evaluated; ratios allocated for a MACs target; prune replays them."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import randomize

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.workflows.sensitivity import Row, allocate


def test_allocate_spends_macs_where_mAP_is_cheapest():
    rows = [
        Row("a", 0.5, 0.2, 0.0, 0.10),
        Row("a", 0.75, 0.3, 0.0, 0.30),
        Row("b", 0.5, 0.2, 0.0, 0.01),
        Row("b", 0.75, 0.3, 0.0, 0.02),
        Row("c", 0.5, 0.1, 0.0, 0.00),
    ]
    ratios, macs, drop = allocate(rows, target_macs=0.6)
    assert ratios == {"b": 0.75, "c": 0.5} and macs == pytest.approx(0.6) and drop == pytest.approx(0.02)


def test_sensitivity_cli_and_ratios_from(tmp_path, capsys):
    data = synthesize(tmp_path / "d", train=2, val=4, imgsz=64, classes=3, seed=4)
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    model = save(Loaded(net, "ultralytics", "x", {"train_args": {}}), tmp_path / "m.pt", {})
    out = tmp_path / "sens"
    assert (
        main(
            [
                "sensitivity",
                str(model),
                "--data",
                str(data),
                "-o",
                str(out),
                "--ratios",
                "0.6",
                "--imgsz",
                "64",
                "--batch",
                "4",
                "--target-macs",
                "0.7",
            ]
        )
        == 0
    )
    table = json.loads((out / "sensitivity.json").read_text())
    units = {r["unit"] for r in table["rows"]}
    assert "model.1" in units and "model.0" not in units and len(table["rows"]) == len(units) >= 15
    assert all(0 < r["macs_saved"] < 0.5 for r in table["rows"])
    chosen = json.loads((out / "ratios.json").read_text())
    assert chosen["predicted_macs"] <= 0.7 and set(chosen["ratios"]) <= units
    assert (out / "sensitivity.png").stat().st_size > 10_000
    pruned = tmp_path / "p.pt"
    assert (
        main(["prune", str(model), "--ratios-from", str(out), "-o", str(pruned), "--imgsz", "64", "--round-to", "1"])
        == 0
    )
    report = torch.load(pruned, weights_only=False)["yoloprune"]["report"]
    assert abs(report["macs_after"] / report["macs_before"] - chosen["predicted_macs"]) < 0.08
