"""The command line: inspect, JSON output, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from yoloprune.cli import main


def test_inspect_table(capsys):
    assert main(["inspect", "yolov8n.yaml", "--imgsz", "64"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert head.startswith("yolov8n.yaml (ultralytics, 64x64") and "64 groups, 47 prunable" in head
    assert "model.2.cv1.conv.weight:out[0:16]" in out and "why: model input" in out and "tie0" in out


def test_inspect_json_lists_frozen_reasons(capsys):
    assert main(["inspect", "yolo11n.yaml", "--imgsz", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["family"] == "ultralytics" and data["summary"]["groups"] == len(data["groups"])
    reasons = {g["frozen"] for g in data["groups"] if g["frozen"]}
    assert any("model.10.m.0.attn" in r and "Attention" in r for r in reasons)
    assert any(r.startswith("module model.23.cv2.0.0.conv is ignored") for r in reasons)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "nope.yaml"], "no such model config: nope.yaml"),
        (["inspect", "yolov8s-worldv2.yaml"], "open-vocabulary and RT-DETR models are not supported yet"),
        (["inspect", "yolov8n.yaml", "--imgsz", "50"], "argument --imgsz: must be a positive multiple of 32"),
        (["inspect", "missing.pt"], "no such model: missing.pt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("yoloprune inspect: error:")


def test_python_dash_m_runs_the_same_cli():
    done = subprocess.run(
        [sys.executable, "-m", "yoloprune", "inspect", "yolov5nu.yaml", "--imgsz", "64", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["prunable_groups"] > 40
