"""Stock ultralytics never trains a yoloprune checkpoint as the unpruned network: its trainer stops at once with a
message naming `yoloprune finetune`, while stock load, predict, val and export work on the pruned network as it is."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import yoloprune
from yoloprune.adapters import Loaded, save_model
from yoloprune.adapters.ultralytics import GUARD, from_config, guarded, unguarded
from yoloprune.data import synthesize

STOCK = textwrap.dedent(
    """
    import glob, sys
    from ultralytics import YOLO

    path, data, runs = sys.argv[1:4]
    model = YOLO(path)
    print("params", sum(p.numel() for p in model.model.parameters()))
    image = sorted(glob.glob(data.replace("data.yaml", "images/val/*")))[0]
    print("boxes", len(model.predict(image, imgsz=64, verbose=False)[0].boxes) >= 0)
    print("val", model.val(data=data, imgsz=64, batch=4, plots=False, verbose=False).box.map >= 0)
    print("export", YOLO(path).export(format="onnx", imgsz=64).endswith(".onnx"))
    try:
        YOLO(path).train(data=data, epochs=1, imgsz=64, batch=4, workers=0, plots=False, project=runs, name="t")
        print("trained")
    except Exception as exc:
        print("refused:", exc)
    print("imported yoloprune:", any(name.startswith("yoloprune") for name in sys.modules))
    """
)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    data = synthesize(root / "d", train=8, val=4, imgsz=64, classes=3, seed=1)
    net = from_config({**from_config("yolov8n.yaml").yaml, "nc": 3})
    yoloprune.prune(net, torch.zeros(1, 3, 64, 64), target_macs=0.6)
    section = {"plan": net.yaml["yoloprune"]}
    path = save_model(Loaded(net, "ultralytics", "x", {"train_args": {}}), root / "pruned.pt", section)
    return path, data, sum(p.numel() for p in net.parameters())


def test_stock_ultralytics_uses_the_pruned_network_and_refuses_to_train_it(pruned, tmp_path):
    path, data, params = pruned
    script = tmp_path / "stock.py"
    script.write_text(STOCK)
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, str(script), str(path), str(data), str(tmp_path / "runs")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [
        line
        for line in run.stdout.splitlines()
        if line.split(" ")[0].rstrip(":") in ("params", "boxes", "val", "export", "trained", "refused", "imported")
    ]
    assert lines[:4] == [f"params {params}", "boxes True", "val True", "export True"], run.stdout + run.stderr
    assert lines[4].startswith("refused:") and "yoloprune finetune" in lines[4]
    assert lines[5] == "imported yoloprune: False"
    assert not list((tmp_path / "runs").rglob("*.pt"))  # stopped before training anything


def test_yoloprune_reads_its_guarded_files_as_the_real_config(pruned):
    path, _, params = pruned
    stored = torch.load(path, weights_only=False)
    assert stored["model"].yaml["backbone"][0][2] == GUARD
    assert stored["yoloprune"]["config"]["backbone"][0][2] == "Conv"
    net = yoloprune.load(path)
    assert sum(p.numel() for p in net.parameters()) == params and net.yaml["backbone"][0][2] == "Conv"
    loaded = yoloprune.adapters.load_model(str(path)).model  # the pickled network, unguarded in memory
    assert loaded.yaml["backbone"][0][2] == "Conv" and "yoloprune" in loaded.yaml


def test_guard_round_trips_and_leaves_unpruned_configs_alone():
    cfg = from_config("yolov8n.yaml").yaml
    assert guarded(cfg) == cfg  # no plan: nothing to guard
    planned = {**cfg, "yoloprune": {"removed": {}, "sizes": {}}}
    assert guarded(planned)["backbone"][0][2] == GUARD and unguarded(guarded(planned)) == planned
    assert guarded(guarded(planned)) == guarded(planned)
