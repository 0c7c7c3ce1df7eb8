"""Bad input is one line and exit status 2 (Ctrl-C: one line and 130), named by file or flag, before any work; nothing
is written and no input changes."""

from __future__ import annotations

import copy
import hashlib
import importlib
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from onnx import TensorProto, helper

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize


def _model(nc: int = 2) -> torch.nn.Module:
    return from_config({**from_config("yolov8n.yaml").yaml, "nc": nc}).eval()


def _tiny_onnx(size: int) -> bytes:
    """An ONNX file with yoloprune's metadata and a fixed ``size`` x ``size`` input (an Identity graph)."""
    shape = [1, 3, size, size]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in {"layout": "xywh-class", "nc": "2", "macs": "1", "params": "1"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _nested_checkpoint(path: Path, depth: int) -> None:
    """An ultralytics checkpoint whose ``train_args`` is a dict nested ``depth`` deep. ``torch.save`` itself cannot
    write that (it recurses), so the dict goes into the pickle as opcodes: push every level, then set them."""
    buffer = io.BytesIO()
    torch.save({"model": _model(), "train_args": "NESTED"}, buffer)
    marker = b"X\x06\x00\x00\x00NESTED"  # BINUNICODE "NESTED"
    nested = b"}" + b"X\x01\x00\x00\x00a}" * depth + b"s" * depth  # EMPTY_DICT, then key/dict pairs, SETITEMs
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert data.count(marker) == 1
                data = data.replace(marker, nested)
            dst.writestr(info, data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input the table needs, written once (none is ever written to afterwards)."""
    root = tmp_path_factory.mktemp("inputs")
    data = synthesize(root / "data", train=2, val=2, imgsz=64, classes=2, seed=1)
    net = _model()
    torch.save({"model": net, "train_args": {}}, root / "good.pt")
    torch.save({"model": net, "yoloprune": {"family": "_upstream", "plan": {}}}, root / "crafted.pt")
    onnx64 = _tiny_onnx(64)
    (root / "m64.onnx").write_bytes(onnx64)
    (root / "truncated.onnx").write_bytes(onnx64[: len(onnx64) // 2])
    (root / "notes.onnx").write_text("not a model\n")
    (root / "huge.png").write_bytes(_png_header(30000, 30000))
    (root / "big" / "images").mkdir(parents=True)
    (root / "big" / "images" / "a.png").write_bytes(_png_header(30000, 30000))
    (root / "big.yaml").write_text(f"path: {root / 'big'}\ntrain: images\nval: images\nnames: [a, b]\n")
    (root / "names.yaml").write_text(f"path: {data.parent}\ntrain: images/train\nval: images/val\nnames: abc\n")
    (root / "noval.yaml").write_text(f"path: {data.parent}\ntrain: images/train\nval:\nnames: [a, b]\n")
    (root / "latin1" / "images").mkdir(parents=True)
    (root / "latin1" / "labels").mkdir()
    (root / "latin1" / "images" / "a.jpg").write_bytes((data.parent / "images" / "val" / "000000.jpg").read_bytes())
    (root / "latin1" / "labels" / "a.txt").write_bytes("0 0.5 0.5 0.1 0.1 # café\n".encode("latin-1"))
    (root / "latin1.yaml").write_text(f"path: {root / 'latin1'}\ntrain: images\nval: images\nnames: [a, b]\n")
    coco = json.loads((data.parent / "annotations" / "instances_val.json").read_text())
    for name, (entries, key) in {"noid": ("images", "id"), "nofile": ("images", "file_name")}.items():
        broken = copy.deepcopy(coco)
        del broken[entries][1][key]
        (data.parent / "annotations" / f"{name}_val.json").write_text(json.dumps(broken))
    broken = copy.deepcopy(coco)
    del broken["categories"][0]["name"]
    (data.parent / "annotations" / "noname_val.json").write_text(json.dumps(broken))
    (root / "both.yaml").write_text("model: yolov8n.yaml\nimgsz: 64\nprune: {ratio: 0.3, target_macs: 0.5}\n")
    (root / "opset.yaml").write_text("model: yolov8n.yaml\nimgsz: 64\nprune: {ratio: 0.3}\nexport: {opset: 7}\n")
    return {"root": root, "data": data}


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


COCO = "{data_dir}/annotations"
CASES = {
    "truncated .onnx": (
        ["eval", "{root}/truncated.onnx", "--data", "{data}", "--imgsz", "64"],
        "{root}/truncated.onnx is not a readable ONNX",
    ),
    "text file named .onnx": (
        ["bench", "{root}/notes.onnx", "--imgsz", "64"],
        "{root}/notes.onnx is not a readable ONNX",
    ),
    "onnx at another --imgsz": (
        ["eval", "{root}/m64.onnx", "--data", "{data}", "--imgsz", "128"],
        "{root}/m64.onnx takes 64x64 images, not --imgsz 128",
    ),
    "bench onnx at another --imgsz": (["bench", "{root}/m64.onnx", "--imgsz", "96"], "not --imgsz 96"),
    "--imgsz 100000": (
        ["prune", "yolov8n.yaml", "--imgsz", "100000", "-o", "{out}.pt"],
        "argument --imgsz: must be a positive multiple of 32 up to 8192, got 100000",
    ),
    "--imgsz not a number": (["inspect", "{root}/good.pt", "--imgsz", "big"], "argument --imgsz: expected an integer"),
    "-o where no file can be created": (
        ["prune", "yolov8n.yaml", "--imgsz", "64", "-o", "/sys/o.pt"],
        "cannot write /sys/o.pt: /sys is not a writable folder",
    ),
    "bench --threads 0": (
        ["bench", "{root}/good.pt", "--imgsz", "64", "--threads", "0"],
        "argument --threads: must be at least 1, got 0",
    ),
    "export --opset 7": (
        ["export", "{root}/good.pt", "--imgsz", "64", "--opset", "7", "-o", "{out}.onnx"],
        "--opset 7 is not supported: choose 11..20",
    ),
    "export --int8 --opset 12": (
        ["export", "{root}/good.pt", "--opset", "12", "--int8", "--calib", "{data_dir}/images/val", "-o", "{out}.onnx"],
        "--opset 12 is not supported with --int8: choose 13..",
    ),
    "--train-set bogus=1": (
        ["finetune", "{root}/good.pt", "--data", "{data}", "--train-set", "bogus=1", "-o", "{out}"],
        "--train-set bogus: ultralytics' trainer has no such setting",
    ),
    "--train-set of yoloprune's own": (
        ["finetune", "{root}/good.pt", "--data", "{data}", "--train-set", "project=/tmp", "-o", "{out}"],
        "--train-set project: yoloprune sets it itself",
    ),
    "distill_model (read unrestricted by ultralytics)": (
        ["finetune", "{root}/good.pt", "--data", "{data}", "distill_model={root}/good.pt", "-o", "{out}"],
        "--train-set distill_model: ultralytics would read that checkpoint unrestricted; pass the teacher with",
    ),
    "sweep --train-set bogus=1": (
        ["sweep", "{root}/good.pt", "--data", "{data}", "--train-set", "mosaik=0", "-o", "{out}"],
        "--train-set mosaik: ultralytics' trainer has no such setting; did you mean mosaic?",
    ),
    "verification PNG declaring 30000x30000": (
        ["export", "{root}/good.pt", "--imgsz", "64", "--image", "{root}/huge.png", "-o", "{out}.onnx"],
        "cannot read image {root}/huge.png: it declares more than 268,435,456 pixels",
    ),
    "dataset PNG declaring 30000x30000": (
        ["eval", "{root}/good.pt", "--data", "{root}/big.yaml", "--imgsz", "64"],
        "cannot read image {root}/big/images/a.png: it declares more than",
    ),
    "data yaml names: abc": (
        ["eval", "{root}/good.pt", "--data", "{root}/names.yaml", "--imgsz", "64"],
        "{root}/names.yaml: 'names' must be a list or an index: name mapping of classes, got 'abc'",
    ),
    "data yaml with an empty val": (
        ["eval", "{root}/good.pt", "--data", "{root}/noval.yaml", "--imgsz", "64"],
        "{root}/noval.yaml: 'val' must name a folder or an image list file",
    ),
    "label file not UTF-8": (
        ["eval", "{root}/good.pt", "--data", "{root}/latin1.yaml", "--imgsz", "64"],
        "{root}/latin1/labels/a.txt: not a text label file (byte 23 is not UTF-8)",
    ),
    "COCO image without id": (
        ["eval", "{root}/good.pt", "--data", f"{COCO}/noid_val.json", "--imgsz", "64"],
        "noid_val.json: image #1 has no integer 'id'",
    ),
    "COCO image without file_name": (
        ["eval", "{root}/good.pt", "--data", f"{COCO}/nofile_val.json", "--imgsz", "64"],
        "nofile_val.json: image 2 has no 'file_name'",
    ),
    "COCO category without name": (
        ["eval", "{root}/good.pt", "--data", f"{COCO}/noname_val.json", "--imgsz", "64"],
        "noname_val.json: category 1 has no 'name'",
    ),
    "crafted family": (
        ["inspect", "{root}/crafted.pt", "--imgsz", "64"],
        "{root}/crafted.pt: its yoloprune section names family '_upstream', not one of ultralytics",
    ),
    "eval --batch 0": (
        ["eval", "{root}/good.pt", "--data", "{data}", "--imgsz", "64", "--batch", "0"],
        "argument --batch: must be at least 1, got 0",
    ),
    "recipe with two amounts": (
        ["run", "{root}/both.yaml", "-o", "{out}"],
        "prune: give one of ratio, target_macs, target_params, target_latency_ms, not ratio and target_macs",
    ),
    "recipe with --opset 7": (["run", "{root}/opset.yaml", "-o", "{out}"], "recipe: --opset 7 is not supported"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, files, tmp_path, monkeypatch, capsys):
    if case == "-o where no file can be created" and not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs, where no regular file can be created")
    argv, message = CASES[case]
    names = {"root": files["root"], "data": files["data"], "data_dir": files["data"].parent, "out": tmp_path / "out"}
    argv, message = [a.format(**names) for a in argv], message.format(**names)

    def refuse(*args, **kwargs):
        raise AssertionError("bad input must be refused before pruning starts")

    monkeypatch.setattr(importlib.import_module("yoloprune.pruning.run"), "prune", refuse)
    before = _digests(files["root"])
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(f"yoloprune {argv[0]}: error: ") and len(err.splitlines()) == 1, err
    assert message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [] and not Path("/sys/o.pt").exists()
    assert _digests(files["root"]) == before


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _interrupted_write(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    raise KeyboardInterrupt


INTERRUPTS = {  # where the Ctrl-C lands: deep in the pruning, halfway through writing the output, while verifying
    "prune, in the surgery": (
        ["prune", "yolov8n.yaml", "--imgsz", "64", "-o", "{out}.pt"],
        "yoloprune.graph.surgery._tensor",
    ),
    "prune, while writing": (["prune", "yolov8n.yaml", "--imgsz", "64", "-o", "{out}.pt"], "torch.save"),
    "export, verifying": (
        ["export", "yolov8n.yaml", "--imgsz", "64", "-o", "{out}.onnx"],
        "yoloprune.export.onnx._run_onnx",
    ),
}


def _interrupt(*args, **kwargs):
    if len(args) == 2 and hasattr(args[1], "write"):  # torch.save(obj, file): leave half a file behind first
        args[1].write(b"half a checkpoint")
    raise KeyboardInterrupt


@pytest.mark.parametrize("case", list(INTERRUPTS))
def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(case, tmp_path, monkeypatch, capsys):
    argv, where = INTERRUPTS[case]
    argv = [a.format(out=tmp_path / "out") for a in argv]
    monkeypatch.setattr(where, _interrupt)
    assert main(argv) == 130
    assert capsys.readouterr().err == f"yoloprune {argv[0]}: interrupted\n"
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


def test_nested_train_args_are_dropped_not_copied(files, tmp_path, capsys):
    nested = tmp_path / "nested.pt"
    _nested_checkpoint(nested, 20000)
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(nested), "--ratio", "0.2", "--imgsz", "64", "-o", str(out)]) == 0, capsys.readouterr()
    assert torch.load(out, weights_only=False)["train_args"] == {}


def test_an_interrupted_finetunes_best_pt_is_accepted(files, tmp_path, capsys):
    """The checkpoint ultralytics' trainer leaves after an epoch: fp16 EMA (with the trainer's settings namespace
    on it), no model, optimizer and scaler state, no yoloprune section."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.utils import IterableSimpleNamespace

    net = _model()
    yoloprune.prune(net, torch.zeros(1, 3, 64, 64), ratio=0.3)
    net.args = IterableSimpleNamespace(**DEFAULT_CFG_DICT)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sum(p.square().sum() for p in net.parameters()).backward()
    optimizer.step()
    best = tmp_path / "best.pt"
    torch.save(
        {
            "epoch": 0,
            "best_fitness": 0.0,
            "model": None,
            "ema": copy.deepcopy(net).half().eval(),
            "updates": 1,
            "optimizer": optimizer.state_dict(),
            "scaler": {},
            "train_args": dict(DEFAULT_CFG_DICT),
            "train_metrics": {"fitness": 0.0},
            "train_results": {"epoch": [1]},
            "git": {"root": None, "branch": None, "commit": None},
        },
        best,
    )
    data = str(files["data"])
    for argv in (
        ["eval", str(best), "--data", data, "--imgsz", "64"],
        ["prune", str(best), "--ratio", "0.2", "--imgsz", "64", "-o", str(tmp_path / "p.pt")],
        ["export", str(best), "--imgsz", "64", "-o", str(tmp_path / "p.onnx")],
    ):
        assert main(argv) == 0, capsys.readouterr().err


def test_a_recipe_that_sets_ratio_resolves_to_it(tmp_path):
    from yoloprune.workflows.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "yolov8n.yaml", "prune": {"ratio": 0.3}}))
    assert {k: load_recipe(path)["prune"][k] for k in ("ratio", "target_macs")} == {"ratio": 0.3, "target_macs": None}
    shipped = Path(__file__).parents[1] / "recipes" / "yolov8s-coco.yaml"
    swapped = load_recipe(shipped, ["prune.ratio=0.25"])["prune"]
    assert (swapped["ratio"], swapped["target_macs"]) == (0.25, None)
    assert load_recipe(shipped)["prune"]["target_macs"] == 0.5


def test_data_yaml_val_as_a_list_and_nc_alone_are_read_as_ultralytics_reads_them(files, tmp_path):
    from yoloprune.data.datasets import load_detection_set

    root = files["data"].parent
    listed = tmp_path / "listed.yaml"
    listed.write_text(f"path: {root}\ntrain: images/train\nval: [images/train, images/val]\nnc: 2\n")
    dataset = load_detection_set(listed)
    assert len(dataset.images) == 4 and dataset.names == {0: "class_0", 1: "class_1"}
