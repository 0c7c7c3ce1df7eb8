"""YOLOv5, YOLOv7 and YOLOX: exact pruning, verified ONNX export, checkpoints in each family's own format that its
own loader reads, rebuilding from yoloprune's section, family recognition and the missing-package message."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import MacsTable, prune_exact, randomize
from torch import nn

import yoloprune
from yoloprune.adapters import resolve
from yoloprune.adapters import yolov5 as a5
from yoloprune.adapters import yolov7 as a7
from yoloprune.adapters import yolox as ax
from yoloprune.adapters.checkpoint import read_checkpoint, set_requires_grad, write_checkpoint
from yoloprune.adapters.detect import guess_family, peek
from yoloprune.cli import main
from yoloprune.export.onnx import export_onnx

CONFIGS = Path(__file__).parent / "family_configs"
V7_TINY = CONFIGS / "yolov7-tiny.yaml"
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
ADAPTERS = {"yolov5": a5, "yolov7": a7, "yolox": ax}
ARGS = ["--imgsz", "64", "--round-to", "1"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These small models run much faster on one thread, above all when two test workers share two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def need(family: str):
    """The family's adapter, or a skip when its upstream package is not installed (CI installs them all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # yolov5 imports pkg_resources
        pytest.importorskip(family)
    return ADAPTERS[family]


def outputs(net: nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    """The decoded predictions of an eval forward, whatever the family (segmentation models' protos left out)."""
    with torch.no_grad():
        out = resolve(net).outputs
        result = net.eval()(x)
        result = out(result) if out else result
        return (result[0] if isinstance(result, tuple) else result).float()


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    a, b = a.detach(), b.detach()
    if a.shape != b.shape or a.numel() == 0:
        return a.shape == b.shape
    return float((a - b).abs().max()) <= rel * float(b.abs().max())


# ------------------------------------------------------------------------------------- exactness and ONNX export
CASES = [
    ("yolov5", "yolov5n.yaml", 252),
    ("yolov5", "yolov5s.yaml", 252),
    ("yolov7", str(V7_TINY), 252),
    ("yolov7", str(CONFIGS / "yolov7-w025.yaml"), 252),  # SPPCSPC, RepConv, the training-config layout
    ("yolox", "yolox-nano", 84),  # depthwise
    ("yolox", "yolox-s", 84),
]


@pytest.mark.parametrize(("family", "spec", "rows"), CASES, ids=[Path(c[1]).stem for c in CASES])
def test_pruning_is_exact_and_the_export_verifies(family, spec, rows, tmp_path):
    adapter = need(family)
    net = randomize(adapter.from_config(spec))
    outputs(net)  # an eval forward first: the grids the heads cache must not leak into tracing
    report = prune_exact(net, X, ratio=0.3, outputs=resolve(net).outputs, round_to=1)
    assert report.family == family and report.macs_ratio < 0.8 and report.params_ratio < 0.7
    result = export_onnx(net, tmp_path / "pruned.onnx", imgsz=64)  # raises unless onnxruntime matches PyTorch
    assert result.outputs == [[1, rows, 85]]


@pytest.mark.parametrize(
    ("family", "spec"), [("yolov5", "yolov5n.yaml"), ("yolov7", str(V7_TINY)), ("yolox", "yolox-nano")]
)
def test_latency_ranked_pruning_is_exact(family, spec, monkeypatch):
    """Channels ranked per millisecond (over a stand-in table: nothing is timed) on each family, depthwise
    convolutions included, land on the MACs target and keep the exactness property."""
    from yoloprune.export import latency_table

    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    net = randomize(need(family).from_config(spec))
    outputs(net)
    report = prune_exact(net, X, ratio=None, target_macs=0.6, cost="latency", outputs=resolve(net).outputs)
    assert abs(report.macs_ratio - 0.6) <= 0.03 and report.settings["cost"] == "latency"


@pytest.mark.parametrize("family", ["yolov5", "yolox"])
def test_export_with_nms(family, tmp_path):
    adapter = need(family)
    net = randomize(adapter.from_config("yolov5n.yaml" if family == "yolov5" else "yolox-nano"))
    yoloprune.prune(net, X, ratio=0.3)
    assert adapter.nms_layout(net) == ("xywh-obj-class", 80)
    result = export_onnx(net, tmp_path / "nms.onnx", imgsz=64, nms=True)
    assert len(result.outputs) == 1 and result.outputs[0][1] == 6


def test_yolov7_repconv_with_identity_fuses_after_pruning():
    """RepConv builds its identity kernel from its stored channel count: the fixup keeps it current."""
    need("yolov7")
    cfg = yaml.safe_load(V7_TINY.read_text())
    cfg["width_multiple"] = 0.5
    cfg["head"][-4] = [57, 1, "RepConv", [64, 3, 1]]  # 32 -> 32 channels at this width: it has an identity branch
    net = randomize(a7.from_config(cfg))
    assert net.model[74].rbr_identity is not None
    prune_exact(net, X, ratio=0.3, outputs=a7.detections, round_to=1)
    rep = net.model[74]
    assert rep.in_channels == rep.rbr_dense[0].in_channels == rep.rbr_identity.num_features < 32
    fused = a7.export_module(net)  # re-parameterises RepConv and folds the implicit layers
    assert close(fused(X), outputs(net), 1e-5)


# ------------------------------------------------------------------------------- checkpoints in upstream formats
STOCK = {
    "yolov5": """
import json, sys, numpy as np, torch, yolov5
from yolov5.models.experimental import attempt_load
net = attempt_load(sys.argv[1])
torch.save(net(torch.load(sys.argv[2]))[0], sys.argv[3])
hub = yolov5.load(sys.argv[1])  # AutoShape, as in the package's README
found = hub(np.zeros((64, 64, 3), dtype=np.uint8), size=64).xyxy[0]
print(json.dumps({"class": type(net).__module__ + "." + type(net).__name__, "names": len(net.names),
                  "hub": type(hub).__name__, "boxes": list(found.shape)[1:],
                  "yoloprune_imported": any(m.startswith("yoloprune") for m in sys.modules)}))
""",
    "yolov7": """
import json, sys, torch
from yolov7.models.experimental import attempt_load
net = attempt_load(sys.argv[1])  # fuses RepConv, Conv+BN and the implicit layers
torch.save(net(torch.load(sys.argv[2]))[0], sys.argv[3])
print(json.dumps({"class": type(net).__module__ + "." + type(net).__name__, "names": len(net.names),
                  "yoloprune_imported": any(m.startswith("yoloprune") for m in sys.modules)}))
""",
}


def run_stock(family: str, path: Path) -> tuple[dict, torch.Tensor]:
    """The family's own loader, in a fresh process, on ``path``; its output on ``X`` too. Torch >= 2.6 refuses
    every whole-model pickle unless told otherwise, so the variable a user of those projects sets is set."""
    x, y = path.parent / "x.pt", path.parent / "y.pt"
    torch.save(X, x)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", STOCK[family], str(path), str(x), str(y)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path.parent,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(y)


def trained(net: nn.Module) -> nn.Module:
    """A network as YOLOv5's and YOLOv7's train.py store it: fp16, parameters frozen."""
    return set_requires_grad(copy.deepcopy(net).half(), False)


V6_CLONE = {  # a YOLOv5 v6.x clone as far as unpickling goes: its models.yolo has Model and no DetectionModel
    "models/__init__.py": "",
    "models/common.py": "from yolov5.models.common import *  # noqa\n",
    "models/yolo.py": "from yolov5.models.yolo import *  # noqa\nModel = DetectionModel\ndel DetectionModel\n",
}


def test_a_v6_checkpoint_keeps_its_class_names(tmp_path):
    need("yolov5")
    net = randomize(a5.from_config("yolov5n.yaml"))
    src = tmp_path / "yolov5n.pt"  # as YOLOv5 v6.x wrote its official weights: models.yolo.Model
    ckpt = {"epoch": -1, "best_fitness": None, "model": trained(net), "ema": None, "updates": None, "optimizer": None}
    write_checkpoint(ckpt, src, "yolov5", bare=True, aliases={"yolov5.models.yolo.DetectionModel": "Model"})
    assert ("models.yolo", "Model") in peek(src)[1]
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(src), "-o", str(out), *ARGS]) == 0
    names = set(peek(out)[1])
    assert ("models.yolo", "Model") in names and ("models.yolo", "DetectionModel") not in names
    clone = tmp_path / "v6"
    for name, text in V6_CLONE.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(text)
    check = "import sys, torch; m = torch.load(sys.argv[1], weights_only=False)['model']; print(type(m).__name__)"
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", check, str(out)], cwd=clone, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "DetectionModel"  # the clone's Model (an alias here) loaded it
    assert sum(p.numel() for p in yoloprune.load(out).parameters()) < sum(p.numel() for p in net.parameters())


def test_yolov5_clone_checkpoint_round_trip(tmp_path):
    need("yolov5")
    net = randomize(a5.from_config("yolov5n.yaml"))
    net.names = [f"class{i}" for i in range(80)]
    src = tmp_path / "best.pt"  # as a clone of ultralytics/yolov5 writes it: classes under models.yolo/models.common
    ckpt = {"epoch": 9, "best_fitness": 0.5, "model": trained(net), "ema": None, "updates": 10, "optimizer": None}
    write_checkpoint({**ckpt, "opt": {"data": "coco128.yaml", "imgsz": 64}}, src, "yolov5", bare=True)
    assert {m for m, _ in peek(src)[1] if "yolo" in m or "common" in m} == {"models.yolo", "models.common"}
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(src), "-o", str(out), *ARGS]) == 0  # the family is read off the file
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest

    assert {m for m, _ in peek(out)[1] if "yolo" in m or "common" in m} == {"models.yolo", "models.common"}
    ckpt, bare = read_checkpoint(out, "yolov5")
    pickled = ckpt["model"]
    assert bare and ckpt["ema"] is None and ckpt["epoch"] == -1 and ckpt["opt"]["data"] == "coco128.yaml"
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in pickled.parameters())
    section = ckpt["yoloprune"]
    assert section["family"] == "yolov5" and section["names"][3] == "class3"
    assert "model.0.conv" not in section["plan"]["removed"] and section["plan"]["removed"]["model.1.conv"]
    assert pickled.yaml["yoloprune"]["removed"] == section["plan"]["removed"]  # YOLOv5's parser ignores the key

    expected = outputs(pickled.float())
    rebuilt = yoloprune.load(out)
    assert type(rebuilt).__module__ == "yolov5.models.yolo" and rebuilt.names[3] == "class3"
    assert close(outputs(rebuilt), expected, 1e-6)
    stock, got = run_stock("yolov5", out)
    assert stock["class"] == "models.yolo.DetectionModel" and stock["names"] == 80 and stock["hub"] == "AutoShape"
    assert stock["boxes"] == [6] and stock["yoloprune_imported"] is False
    assert close(got, expected)


def test_yolov7_checkpoint_round_trip_next_to_yolov5(tmp_path, monkeypatch):
    need("yolov7")
    cfg = yaml.safe_load(V7_TINY.read_text())
    cfg["width_multiple"] = 0.5
    net = randomize(a7.from_config(cfg))
    src = tmp_path / "yolov7-tiny.pt"  # as WongKinYiu/yolov7's train.py writes it, classes under models.*
    ckpt = {"epoch": 9, "best_fitness": None, "training_results": None, "model": None, "ema": trained(net)}
    write_checkpoint({**ckpt, "updates": 1, "optimizer": None, "wandb_id": None}, src, "yolov7", bare=True)
    try:  # the clash: the bare name `models` now finds YOLOv5's files first
        import yolov5.models.yolo  # noqa: F401

        monkeypatch.syspath_prepend(str(Path(sys.modules["yolov5"].__file__).parent))
        for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
            monkeypatch.delitem(sys.modules, name)
    except ImportError:
        pass
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(src), "-o", str(out), *ARGS]) == 0
    ckpt, bare = read_checkpoint(out, "yolov7")
    pickled = ckpt["model"]
    assert bare and type(pickled).__module__ == "yolov7.models.yolo" and ckpt["ema"] is None
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in pickled.parameters())
    assert pickled.yaml["yoloprune"]["removed"] == ckpt["yoloprune"]["plan"]["removed"]
    expected = outputs(pickled.float())
    rebuilt = yoloprune.load(out)
    assert close(outputs(rebuilt), expected, 1e-6)
    stock, got = run_stock("yolov7", out)
    assert stock["class"] == "models.yolo.Model" and stock["yoloprune_imported"] is False
    assert close(got, expected)


def test_yolox_checkpoint_round_trip(tmp_path):
    need("yolox")
    from yolox.config import YoloxConfig
    from yolox.utils import load_checkpoint

    net = randomize(YoloxConfig.get_named_config("yolox_nano").get_model())  # built by YOLOX itself
    keys = set(net.state_dict())
    src = tmp_path / "best_ckpt.pth"  # YOLOX's trainer stores a state_dict only
    torch.save({"start_epoch": 10, "model": net.state_dict(), "optimizer": None, "best_ap": 0.3, "curr_ap": 0.3}, src)
    out = tmp_path / "pruned.pth"
    assert main(["prune", str(src), "-o", str(out), *ARGS]) == 0  # family and config read off the state_dict
    ckpt = load_checkpoint(str(out))  # YOLOX's own loader, torch.load(weights_only=True)
    assert set(ckpt["model"]) == keys and ckpt["yoloprune"]["config"]["name"] == "yolox_nano"
    fresh = YoloxConfig.get_named_config("yolox_nano").get_model()
    with pytest.raises(RuntimeError, match="size mismatch"):  # which is why yoloprune.load is the way to read it
        fresh.load_state_dict(ckpt["model"])

    rebuilt = yoloprune.load(out)
    assert type(rebuilt) is type(net) and rebuilt.yoloprune["plan"] == ckpt["yoloprune"]["plan"]
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in rebuilt.state_dict().items())
    reference = copy.deepcopy(net)
    yoloprune.prune(reference, X, ratio=0.3, round_to=1)  # the CLI's settings give the same plan in-process
    assert close(outputs(rebuilt), outputs(reference), 1e-6)

    twice = tmp_path / "twice.pth"
    assert main(["prune", str(out), "-o", str(twice), *ARGS]) == 0
    again = yoloprune.load(twice)  # the composed plan replays onto a fresh yolox-nano in one step
    first, second = ckpt["yoloprune"]["plan"]["removed"], load_checkpoint(str(twice))["yoloprune"]["plan"]["removed"]
    assert all(set(v) <= set(second[k]) for k, v in first.items())
    assert sum(p.numel() for p in again.parameters()) < sum(p.numel() for p in rebuilt.parameters())


# --------------------------------------------------------------------------- recognising families, CLI dispatch
def test_family_dispatch_and_inspect(tmp_path, capsys):
    assert guess_family("yolov5n.yaml") is None  # a name, not a file: ultralytics' configs, as before
    assert guess_family(str(V7_TINY)) == "yolov7"
    assert guess_family("yolox-s") == guess_family("yolox_nano") == "yolox"
    assert main(["inspect", "yolov5n.yaml", "--imgsz", "64"]) == 0
    assert "(ultralytics, 64x64" in capsys.readouterr().out
    if _installed("yolov7"):
        assert main(["inspect", str(V7_TINY), "--imgsz", "64"]) == 0
        assert "(yolov7, 64x64" in capsys.readouterr().out
        assert main(["prune", str(V7_TINY), "--family", "yolov5", "-o", str(tmp_path / "x.pt")]) == 2
        assert "only YOLOv5 detection and segmentation" in capsys.readouterr().err
    if _installed("yolox"):
        assert main(["inspect", "yolox-nano", "--imgsz", "64"]) == 0
        assert "(yolox, 64x64" in capsys.readouterr().out
    if _installed("yolov5"):
        out = tmp_path / "v5.pt"
        assert main(["prune", "yolov5n.yaml", "--family", "yolov5", "-o", str(out), *ARGS]) == 0
        assert {m for m, _ in peek(out)[1] if "yolo" in m} == {"yolov5.models.yolo", "yolov5.models.common"}
        capsys.readouterr()
        assert guess_family(str(out)) == "yolov5"
        assert main(["inspect", str(out), "--imgsz", "64"]) == 0
        assert "(yolov5, 64x64" in capsys.readouterr().out
        local = tmp_path / "my-yolov5.yaml"
        local.write_text(a5.config_path("yolov5s.yaml").read_text())
        assert guess_family(str(local)) == "yolov5"


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _fake(name: str, module: str) -> type:
    return type(name, (nn.Module,), {"__module__": module})


def test_classes_are_matched_by_name_and_module():
    """Clone checkpoints name their classes models.yolo/models.common for both YOLOv5 and YOLOv7; YOLOX has
    Megvii's and pixeltable's class names. No upstream package is needed to tell them apart."""
    v5 = _fake("DetectionModel", "models.yolo")()
    v5.model = nn.Sequential(
        _fake("Conv", "models.common")(), _fake("C3", "models.common")(), _fake("Detect", "models.yolo")()
    )
    v7 = _fake("Model", "models.yolo")()
    v7.model = nn.Sequential(
        _fake("Conv", "models.common")(), _fake("MP", "models.common")(), _fake("IDetect", "models.yolo")()
    )
    assert a5.matches(v5) and not a7.matches(v5) and not ax.matches(v5)
    assert a7.matches(v7) and not a5.matches(v7)
    for net_name, head_name in (("YOLOX", "YOLOXHead"), ("YoloxModule", "YoloxHead")):
        net = _fake(net_name, "yolox.models.yolox")()
        net.head = _fake(head_name, "yolox.models.yolo_head")()
        assert ax.matches(net) and not a5.matches(net)
    elsewhere = _fake("YOLOX", "mymodels.yolox")()
    elsewhere.head = _fake("YOLOXHead", "mymodels.head")()
    assert not ax.matches(elsewhere)


@pytest.mark.parametrize(
    ("family", "spec", "extra"),
    [("yolov5", "yolov5n.yaml", "yolov5"), ("yolov7", str(V7_TINY), "yolov7"), ("yolox", "yolox-nano", "yolox")],
    ids=["yolov5", "yolov7", "yolox"],
)
def test_missing_package_names_the_extra(family, spec, extra, monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == family or m.startswith(family + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, family, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf"pip install 'yoloprune\[{extra}\]'"):
        ADAPTERS[family].load(spec)
    assert main(["prune", spec, "--family", family, "-o", str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"pip install 'yoloprune[{extra}]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------------------------------------- new class lists
TRANSFERS = [
    ("ultralytics", "yolov8n.yaml"),
    ("ultralytics", "yolo26n.yaml"),  # one-to-one and one-to-many class branches
    ("ultralytics", "yolov8n-seg.yaml"),
    ("yolov5", "yolov5n.yaml"),
    ("yolov5", "yolov5n-seg.yaml"),  # mask coefficients after the class scores
    ("yolov7", str(V7_TINY)),  # implicit layers on the output rows
    ("yolox", "yolox-nano"),
]


@pytest.mark.parametrize(("family", "spec"), TRANSFERS, ids=[Path(c[1]).stem for c in TRANSFERS])
def test_a_new_class_list_keeps_every_other_output_and_survives_rebuilding(family, spec, tmp_path):
    """80 classes -> 2 on a pruned network: boxes, objectness and mask coefficients are computed exactly as before,
    the class outputs follow the new count, and ``yoloprune.load`` rebuilds the same network from the file."""
    from yoloprune.adapters import Loaded, adapter, save_model

    if family != "ultralytics":
        need(family)
    fam = adapter(family)
    net = randomize(fam.from_config(spec)).eval()
    yoloprune.prune(net, X, ratio=0.3, round_to=1)
    before = outputs(net)
    fam.set_classes(net, 2, ["cat", "dog"])
    after = outputs(net)
    assert fam.classes(net) == 2
    assert fam.nms_layout(net)[1] == 2
    if family == "ultralytics":  # (B, 4 + nc [+ masks], N): rows 0-3 boxes, then classes, then mask coefficients
        assert after.shape[1] == before.shape[1] - 78
        assert close(after[:, :4], before[:, :4], 1e-6) and close(after[:, 6:], before[:, 84:], 1e-6)
    else:  # (B, N, 5 + nc [+ masks]): boxes and objectness, then classes, then mask coefficients
        assert after.shape[-1] == before.shape[-1] - 78
        assert close(after[..., :5], before[..., :5], 1e-6) and close(after[..., 7:], before[..., 85:], 1e-6)
    path = save_model(
        Loaded(net, family, spec, {"half": False, "train_args": {}}),
        tmp_path / "m.pt",
        {
            "plan": resolve(net).history,
            "imgsz": 64,
        },
    )
    rebuilt = yoloprune.load(path)
    assert fam.classes(rebuilt) == 2 and close(outputs(rebuilt), after, 1e-5)
    assert fam.export_metadata(rebuilt, 64)["names"] == {0: "cat", 1: "dog"}


def test_a_class_count_from_a_file_is_checked():
    from yoloprune.adapters.heads import replayer

    for bad in (0, -1, 10**9, True, "2", 2.0):
        with pytest.raises(ValueError, match="class count"):
            replayer({"removed": {}, "sizes": {}, "classes": bad}, lambda net, nc: None)
