"""Pruned checkpoints are stock ultralytics checkpoints, and carry a plan yoloprune can replay."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize

import yoloprune
from yoloprune.adapters.ultralytics import detections, from_config
from yoloprune.cli import main
from yoloprune.io import load_data

ultralytics = pytest.importorskip("ultralytics")
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))

STOCK = """
import json, sys
from pathlib import Path
from ultralytics import YOLO
from ultralytics.utils import ASSETS
model = YOLO(sys.argv[1])
result = model.predict(ASSETS / "bus.jpg", imgsz=64, verbose=False, save=False)[0]
onnx = model.export(format="onnx", imgsz=64, simplify=False, verbose=False)
net = model.model
print(json.dumps({
    "yoloprune_imported": any(m.startswith("yoloprune") for m in sys.modules),
    "dtype": str(next(net.parameters()).dtype),
    "params": sum(p.numel() for p in net.parameters()),
    "cv1": net.model[2].cv1.conv.out_channels,
    "names": len(net.names),
    "boxes_shape": list(result.boxes.data.shape)[1:],
    "onnx": Path(onnx).is_file(),
}))
"""


def trained_checkpoint(cfg: str, path: Path) -> Path:
    """A checkpoint shaped like one ``yolo train`` writes: fp16 EMA, no model, frozen params, train_args."""
    net = randomize(from_config(cfg))
    net.names = {i: f"class{i}" for i in range(80)}
    net = net.half()
    for p in net.parameters():
        p.requires_grad_(False)
    ckpt = {
        "epoch": 9,
        "best_fitness": 0.5,
        "model": None,
        "ema": net,
        "updates": 10,
        "optimizer": None,
        "train_args": {"task": "detect", "imgsz": 64, "data": "coco8.yaml", "epochs": 10},
        "date": "x",
    }
    torch.save(ckpt, path)
    return path


def run_stock(path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", STOCK, str(path)], capture_output=True, text=True, timeout=600, cwd=path.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_stock_ultralytics_loads_predicts_and_exports_the_pruned_checkpoint(cfg, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    assert main(["prune", cfg, "-o", str(out), "--imgsz", "64", "--round-to", "1"]) == 0
    printed = capsys.readouterr().out
    assert "MACs" in printed and "params" in printed and f"saved {out}" in printed
    rebuilt = yoloprune.load(out)
    stock = run_stock(out)
    assert stock["yoloprune_imported"] is False and stock["onnx"] is True
    assert stock["dtype"] == "torch.float32" and stock["cv1"] == 24 and stock["names"] == 80
    assert stock["params"] == sum(p.numel() for p in rebuilt.parameters())
    assert stock["boxes_shape"] == [6]


def test_trained_checkpoint_round_trip(tmp_path):
    src = trained_checkpoint("yolov8n.yaml", tmp_path / "best.pt")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "best-pruned.pt"
    assert (
        main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--imgsz", "64", "--round-to", "1", "--json"]) == 0
    )
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the input is never modified
    ckpt = torch.load(out, weights_only=False)
    net = ckpt["model"]
    assert ckpt["ema"] is None and ckpt["train_args"]["data"] == "coco8.yaml"
    assert all(p.dtype == torch.float16 for p in net.parameters()) and net.names[3] == "class3"  # as yolo train
    assert out.stat().st_size < 0.6 * src.stat().st_size  # half the channels, fp16 like the source
    assert net.model[2].cv1.conv.out_channels == 16 and net.model[2].c == 8
    section = ckpt["yoloprune"]
    assert section["settings"]["ratio"] == 0.5 and len(section["plan"]["removed"]["model.1.conv"]) == 16
    assert "model.0.conv" not in section["plan"]["removed"]  # the first conv is protected by default
    assert net.yaml["yoloprune"]["removed"] == section["plan"]["removed"]  # ultralytics' parser ignores the key
    rebuilt = yoloprune.load(out)
    assert torch.allclose(rebuilt(X)[0], net.float().eval()(X)[0], atol=1e-6)


def test_load_reads_tensors_only(tmp_path):
    out = tmp_path / "p.pt"
    assert main(["prune", "yolov5nu.yaml", "-o", str(out), "--imgsz", "64"]) == 0
    data = load_data(out)
    assert type(data["model"]).__name__ == "Opaque"  # no ultralytics class was instantiated
    assert isinstance(data["yoloprune"]["state_dict"]["model.0.conv.weight"], torch.Tensor)
    assert out.stat().st_size < 1.1 * 4 * sum(t.numel() for t in data["yoloprune"]["state_dict"].values())


def test_pruning_twice_composes_the_plan(tmp_path):
    once, twice = tmp_path / "once.pt", tmp_path / "twice.pt"
    args = ["--imgsz", "64", "--ratio", "0.3", "--round-to", "1"]
    assert main(["prune", "yolo11n.yaml", "-o", str(once), *args]) == 0
    assert main(["prune", str(once), "-o", str(twice), *args]) == 0
    pickled = torch.load(twice, weights_only=False)["model"].float().eval()
    rebuilt = yoloprune.load(twice)  # the composed plan replays onto a fresh yolo11n in one step
    assert rebuilt.model[1].conv.out_channels == 17 == pickled.model[1].conv.out_channels  # 32 -> 23 -> 17
    assert torch.allclose(detections(rebuilt(X)), detections(pickled(X)), atol=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["prune", "{src}", "-o", "{src}"], "refusing to overwrite the input"),
        (["prune", "yolov8n.yaml", "-o", "{src}"], "exists; pass --overwrite"),
        (["prune", "{bad}", "-o", "{out}"], "not a readable PyTorch checkpoint"),
        (["prune", "{other}", "-o", "{out}"], "is not an ultralytics checkpoint"),
        (["prune", "yolov8n.yaml", "-o", "{out}", "--ratio", "1.5"], "ratio must be in (0, 1)"),
    ],
)
def test_prune_bad_input(argv, message, tmp_path, capsys):
    src = tmp_path / "src.pt"
    src.write_bytes(b"keep me")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"model": torch.nn.Conv2d(3, 3, 1)}, other)
    names = {"src": src, "bad": bad, "other": other, "out": tmp_path / "out.pt"}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert src.read_bytes() == b"keep me" and not (tmp_path / "out.pt").exists()
