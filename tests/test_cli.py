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


def test_key_value_settings_work_as_in_yolo_train(monkeypatch, tmp_path, capsys):
    import yoloprune.train
    from yoloprune.train.recover import FinetuneResult

    seen = {}

    def fake_finetune(model, data, **kwargs):
        seen.update(kwargs)
        return FinetuneResult(tmp_path / "b.pt", tmp_path / "l.pt", 1, 0.0, 0.0, 1, {})

    monkeypatch.setattr(yoloprune.train, "finetune", fake_finetune)
    (tmp_path / "m.pt").write_bytes(b"")  # a model file must exist; the fake trainer never reads it
    argv = [
        "finetune",
        str(tmp_path / "m.pt"),
        "--data",
        str(tmp_path),
        "-o",
        str(tmp_path / "o"),
        "epochs=3",
        "imgsz=96",
    ]
    argv.append("mosaic=0")
    assert main([*argv, "--batch", "4", "optimizer=SGD", "device=0"]) == 0
    assert (seen["epochs"], seen["imgsz"], seen["batch"], seen["device"]) == (3, 96, 4, "0")
    assert seen["mosaic"] == 0 and seen["optimizer"] == "SGD" and "train_set" not in seen
    capsys.readouterr()
    assert main([*argv, "epochs=many"]) == 2
    assert capsys.readouterr().err.strip() == "yoloprune finetune: error: epochs=many: epochs takes int"
    assert main([*argv, "workers=-1"]) == 2
    assert capsys.readouterr().err.strip() == "yoloprune finetune: error: workers=-1: workers must be at least 0"
    assert main([*argv, "--epochs", "0"]) == 2
    assert "argument --epochs: must be at least 1, got 0" in capsys.readouterr().err
    assert main([*argv, "stray"]) == 2
    assert "error: unrecognized arguments: stray" in capsys.readouterr().err
    assert main(["prune", "m.pt", "-o", "x.pt", "epochs=3"]) == 2  # prune takes no trainer settings
    assert "unrecognized arguments: epochs=3" in capsys.readouterr().err


def test_resume_needs_no_model_file(monkeypatch, tmp_path, capsys):
    """``--resume`` continues the run in -o: the MODEL it started from may have moved since."""
    import yoloprune.train
    from yoloprune.train.recover import FinetuneResult

    seen = []
    result = FinetuneResult(tmp_path / "b.pt", tmp_path / "l.pt", 1, 0.0, 0.0, 1, {})
    monkeypatch.setattr(yoloprune.train, "finetune", lambda model, data, **k: seen.append(k["resume"]) or result)
    argv = ["finetune", str(tmp_path / "moved.pt"), "--data", str(tmp_path), "-o", str(tmp_path / "o")]
    assert main([*argv, "--resume"]) == 0 and seen == [True]
    assert main(argv) == 2 and seen == [True]
    assert f"no such model: {tmp_path / 'moved.pt'}" in capsys.readouterr().err


def test_run_takes_key_value_overrides_as_set():
    from yoloprune.cli import _take_overrides, build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(["run", "r.yaml", "--set", "prune.ratio=0.2", "finetune.epochs=3"])
    _take_overrides(parser, args, extra)
    assert args.set == ["prune.ratio=0.2", "finetune.epochs=3"]


def test_imgsz_defaults_to_the_size_the_checkpoint_was_trained_at(tmp_path, capsys):
    """A model trained at 96 px is traced, pruned and evaluated at 96 unless told otherwise, and the command says
    so; a size far from it gets a note (the demo's baseline was calibrated at 640 in 16 minutes instead of 3)."""
    from yoloprune.adapters import Loaded
    from yoloprune.adapters.ultralytics import from_config, save

    model = save(
        Loaded(from_config("yolov8n.yaml"), "ultralytics", "m", {"train_args": {"imgsz": 96}}), tmp_path / "m.pt", {}
    )
    assert main(["inspect", str(model)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{model} (ultralytics, 96x96")
    assert captured.err.strip() == f"yoloprune: --imgsz 96, the size {model} was trained at"
    assert main(["inspect", str(model), "--imgsz", "320"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{model} (ultralytics, 320x320")
    assert captured.err.strip() == f"yoloprune: note: --imgsz 320, but {model} was trained at 96"
    assert main(["inspect", "yolov8n.yaml"]) == 0  # a config says nothing: 640, silently
    captured = capsys.readouterr()
    assert captured.out.startswith("yolov8n.yaml (ultralytics, 640x640") and not captured.err
