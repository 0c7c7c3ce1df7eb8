"""Hostile files beyond code execution (issue 27): sparse tensors with indices out of range, "billion laughs" in stored
sections, ONNX files that point outside their folder, fail at run time or lie about their layout, images of extreme
aspect ratio, recipes and settings of the wrong shape, odd pickle opcodes and dangling symlinks as -o. Each is one
line (exit status 2 from the CLI) naming the file, or, for a valid input, works."""

from __future__ import annotations

import importlib
import json
import pickle
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from helpers import craft_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.io import MAX_ITEMS, OversizedSection, UntrustedCheckpoint, load_checkpoint, load_data
from yoloprune.options import check_numbers
from yoloprune.pruning.settings import PruneSettings
from yoloprune.workflows.recipe import RecipeError, load_recipe

LOADERS = [load_checkpoint, load_data]


def _model(nc: int = 2) -> torch.nn.Module:
    return from_config({**from_config("yolov8n.yaml").yaml, "nc": nc}).eval()


def _laughs(levels: int = 30, fan: int = 10) -> list:
    """A list that expands to ``fan ** levels`` strings: each level holds the level below ``fan`` times (one object,
    memoized once by pickle)."""
    value: list = ["lol"]
    for _ in range(levels):
        value = [value] * fan
    return value


def _onnx(path: Path, nodes: list, initializers: list, meta: dict[str, str], out_shape: list[int]) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_files")
    data = synthesize(root / "data", train=2, val=2, imgsz=64, classes=2, seed=1)
    net = _model()
    torch.save({"model": net, "train_args": {}}, root / "good.pt")
    torch.save({"model": net, "train_args": {}, "yoloprune": {"report": _laughs()}}, root / "laughs.pt")
    torch.save({"model": net, "train_args": {}, "settings": _laughs()}, root / "settings.pt")

    # ONNX: external data outside the folder (no macs in the metadata, so bench reads the graph), a node asking for
    # 4 EiB, and an Identity graph whose metadata claims an NMS layout
    (root / "onnx").mkdir()
    weight = numpy_helper.from_array(np.ones((1, 3, 64, 64), np.float32), "w")
    set_external_data(weight, location="../secret.bin")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    (root / "secret.bin").write_bytes(np.ones(3 * 64 * 64, np.float32).tobytes())
    add = helper.make_node("Add", ["images", "w"], ["output0"])
    _onnx(root / "onnx" / "outside.onnx", [add], [weight], {"layout": "xywh-class", "nc": "2"}, [1, 3, 64, 64])
    shape = numpy_helper.from_array(np.array([1 << 20] * 3, np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("Add", ["images", "s"], ["output0"]),
    ]
    meta = {"layout": "xywh-class", "nc": "2", "macs": "1", "params": "1"}
    _onnx(root / "huge.onnx", nodes, [shape], meta, [1, 3, 64, 64])
    identity = [helper.make_node("Identity", ["images"], ["output0"])]
    _onnx(root / "nms.onnx", identity, [], {**meta, "layout": "nms"}, [1, 3, 64, 64])

    # images of extreme aspect ratio, with a label each
    for name, size in (("tall", (20000, 1)), ("wide", (1, 20000))):
        (root / name / "images").mkdir(parents=True)
        (root / name / "labels").mkdir()
        cv2.imwrite(str(root / name / "images" / "a.png"), np.full((*size, 3), 200, np.uint8))
        (root / name / "labels" / "a.txt").write_text("0 0.5 0.5 1.0 0.5\n")
        (root / f"{name}.yaml").write_text(f"path: {root / name}\ntrain: images\nval: images\nnames: [a, b]\n")
    return {"root": root, "data": data}


def _refused(argv: list[str], capsys, fragment: str) -> str:
    """Run the CLI: exit status 2, one line on stderr without a traceback, holding ``fragment``."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"yoloprune {argv[0]}: error: ") and fragment in err, err
    return err


# ------------------------------------------------------------------------------------------------ 1. sparse tensors
def _sparse_files(root: Path) -> dict[str, Path]:
    indices = torch.tensor([[0, 10**6], [0, 5]])  # far outside the 2x2 shape: to_dense() would write out of bounds
    bad = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0]), (2, 2), check_invariants=False)
    out = {}
    for name, tensor in (("out of range", bad), ("valid coo", torch.eye(3).to_sparse())):
        out[name] = root / f"{name.replace(' ', '_')}.pt"
        torch.save({"model": torch.nn.Conv2d(3, 4, 1), "weights": tensor}, out[name])
    return out


@pytest.mark.parametrize("case", ["out of range", "valid coo"])
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_sparse_tensors_are_refused(case, loader, tmp_path):
    path = _sparse_files(tmp_path)[case]
    with pytest.raises(UntrustedCheckpoint) as err:
        loader(path)
    assert str(err.value) == (
        f"{path} names torch._utils._rebuild_sparse_tensor, which builds a sparse tensor; no YOLO checkpoint holds one"
    )


def test_a_sparse_tensor_is_one_line_from_the_cli(tmp_path, capsys):
    path = _sparse_files(tmp_path)["out of range"]
    _refused(["inspect", str(path), "--imgsz", "64"], capsys, f"{path} names torch._utils._rebuild_sparse_tensor")


# ------------------------------------------------------------------------------------ 2. billion laughs in sections
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name, section", [("laughs.pt", "yoloprune"), ("settings.pt", "settings")])
def test_billion_laughs_in_a_section_is_refused(files, loader, name, section):
    path = files["root"] / name
    assert path.stat().st_size < 20e6  # a small file standing for 10^30 strings
    with pytest.raises(OversizedSection) as err:
        loader(path)
    assert str(err.value) == (
        f"{path}: its {section!r} section holds more than {MAX_ITEMS:,} values once its shared references are "
        "expanded; refusing a crafted file"
    )


def test_export_of_a_billion_laughs_is_one_line(files, tmp_path, capsys):
    path = files["root"] / "laughs.pt"
    _refused(["export", str(path), "--imgsz", "64", "-o", str(tmp_path / "m.onnx")], capsys, f"{path}: its 'yoloprune'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value, problem",
    [
        ([["x" * 1000] * 1000] * 100, "holds more than 67,108,864 characters of strings"),  # shared strings
        ("x" * ((1 << 20) + 1), "holds a string of 1,048,577 characters (more than 1,048,576)"),
    ],
    ids=["shared strings", "one huge string"],
)
def test_sections_of_huge_text_are_refused(value, problem, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"model": torch.nn.Conv2d(3, 4, 1), "yoloprune": {"report": value}}, path)
    with pytest.raises(OversizedSection, match=re.escape(f"its 'yoloprune' section {problem}")):
        load_checkpoint(path)


def test_a_deep_section_is_refused_but_deep_train_args_are_left_to_the_adapter(tmp_path):
    deep: dict = {}
    for _ in range(150):
        deep = {"a": deep}
    for key, refused in (("yoloprune", True), ("train_args", False)):
        path = tmp_path / f"{key}.pt"
        torch.save({"model": torch.nn.Conv2d(3, 4, 1), key: deep}, path)
        if refused:
            with pytest.raises(OversizedSection, match=f"{path}: its 'yoloprune' section nests deeper than 100 levels"):
                load_checkpoint(path)
        else:
            assert load_checkpoint(path)[key] == deep


# ------------------------------------------------------------------------------------------------------- 3. ONNX
@pytest.mark.parametrize("command", ["bench", "eval"])
def test_onnx_with_external_data_outside_its_folder_is_one_line(command, files, capsys):
    path = files["root"] / "onnx" / "outside.onnx"
    extra = ["--data", str(files["data"])] if command == "eval" else ["--runs", "1", "--warmup", "0"]
    err = _refused([command, str(path), "--imgsz", "64", *extra], capsys, f"cannot load {path}: ")
    assert "secret.bin" not in err  # what the file says is not echoed


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_onnx_that_fails_at_run_time_is_one_line(command, files, capsys):
    path = files["root"] / "huge.onnx"
    extra = ["--data", str(files["data"])] if command == "eval" else ["--runs", "1", "--warmup", "0"]
    message = f"{path}: a ConstantOfShape node holds 1,152,921,504,606,846,976 elements (more than 268,435,456)"
    _refused([command, str(path), "--imgsz", "64", *extra], capsys, message)


def test_forged_nms_layout_is_one_line(files, capsys):
    path = files["root"] / "nms.onnx"
    message = f"{path}: its output has shape [1, 3, 64, 64] where (detections, 6) for one image is expected"
    _refused(["eval", str(path), "--data", str(files["data"]), "--imgsz", "64"], capsys, message)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"layout": "nms", "nc": "two"}, "its metadata's class count (nc) is not a whole number from 1 to 100000"),
        ({"layout": "bogus", "nc": "2"}, "its metadata names an unknown output layout"),
        ({"layout": "nms", "nc": "2", "preprocess": '{"__class__": 1}'}, "its metadata's preprocess entry is not"),
    ],
)
def test_forged_onnx_metadata_is_one_line(meta, message, files, tmp_path, capsys):
    path = _onnx(tmp_path / "m.onnx", [helper.make_node("Identity", ["images"], ["output0"])], [], meta, [1, 3, 64, 64])
    _refused(["eval", str(path), "--data", str(files["data"]), "--imgsz", "64"], capsys, f"{path}: {message}")


# ------------------------------------------------------------------------------------ 4. extreme aspect ratios
@pytest.mark.parametrize("name", ["tall", "wide"])
def test_an_image_of_extreme_aspect_ratio_is_evaluated(name, files, capsys):
    data = files["root"] / f"{name}.yaml"
    assert main(["eval", str(files["root"] / "good.pt"), "--data", str(data), "--imgsz", "64"]) == 0
    assert "(1 images at 64)" in capsys.readouterr().out


@pytest.mark.parametrize("shape", [(20000, 1, 3), (1, 20000, 3)])
def test_letterbox_keeps_a_pixel_of_a_thin_image(shape):
    from yoloprune.images import letterbox

    out, scale, pad = letterbox(np.full(shape, 7, np.uint8), 64)
    assert out.shape == (64, 64, 3) and scale == pytest.approx(64 / 20000)
    assert pad == ((31, 0) if shape[0] > 1 else (0, 31)) and (out == 7).sum() == 64 * 3


# ------------------------------------------------------------------------------------------- 5. recipes, settings
def test_recipe_ignore_of_lists_names_the_key(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "yolov8n.yaml", "prune": {"ignore": [["model.2"]]}}))
    with pytest.raises(RecipeError, match=r"^prune\.ignore must be a list of str, got list in it$"):
        load_recipe(path)
    _refused(["run", str(path), "-o", str(tmp_path / "out")], capsys, "prune.ignore must be a list of str")


def test_one_ignore_string_is_one_pattern():
    assert PruneSettings(ignore="model.2*").ignore == ("model.2*",)
    assert PruneSettings(ignore=["model.2*", "model.3"]).ignore == ("model.2*", "model.3")
    with pytest.raises(TypeError, match="ignore must be a name pattern or a list of them, got int"):
        PruneSettings(ignore=3)
    with pytest.raises(TypeError, match=r"\(strings\), got list in it"):
        PruneSettings(ignore=[["model.2"]])


def test_prune_api_takes_one_ignore_string():
    net = _model()
    report = yoloprune.prune(net, torch.zeros(1, 3, 64, 64), ratio=0.3, ignore="model.2*")
    assert report.channels_removed > 0


@pytest.mark.parametrize(
    "value, got", [("0.3", "got a string ('0.3')"), ([0.3], "got a list"), (True, "got a boolean")]
)
def test_a_ratio_that_is_not_a_number_says_so(value, got):
    with pytest.raises(ValueError, match=rf"^ratio must be a number in \(0, 1\), {re.escape(got)}$"):
        PruneSettings(ratio=value)
    with pytest.raises(ValueError, match="target_macs is a fraction of the original and must be a number in"):
        check_numbers(target_macs="half")


# ------------------------------------------------------------------------------------------------ 6. pickle opcodes
@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02" + pickle.EXT1 + b"\x01.", "names a pickle extension code (EXT1/EXT2/EXT4)"),
        (b"\x80\x02" + pickle.EXT2 + b"\x01\x00.", "names a pickle extension code (EXT1/EXT2/EXT4)"),
        (b"\x80\x02" + pickle.EXT4 + b"\x01\x00\x00\x00.", "names a pickle extension code (EXT1/EXT2/EXT4)"),
        (
            b"\x80\x02cbuiltins\nbytearray\n]\x8a\x07" + (10**15).to_bytes(7, "little") + b"a\x85R.",
            "names builtins.bytearray, which was called with arguments it may not take",
        ),
    ],
    ids=["EXT1", "EXT2", "EXT4", "bytearray([10**15])"],
)
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_odd_opcodes_name_the_file(data, message, loader, tmp_path):
    path = craft_checkpoint(tmp_path / "odd.pt", data)
    with pytest.raises(ValueError) as err:
        loader(path)
    assert str(err.value).startswith(f"{path} {message}"), err.value


# --------------------------------------------------------------------------------------------- 7. dangling -o links
DANGLING = {
    "prune": ["prune", "{good}", "--ratio", "0.2", "--imgsz", "64", "-o", "{link}"],
    "export": ["export", "{good}", "--imgsz", "64", "-o", "{link}"],
    "finetune": ["finetune", "{good}", "--data", "{data}", "--epochs", "1", "-o", "{link}"],
    "sweep": ["sweep", "{good}", "--data", "{data}", "-o", "{link}"],
    "sensitivity": ["sensitivity", "{good}", "--data", "{data}", "-o", "{link}"],
    "run": ["run", "{recipe}", "-o", "{link}"],
    "demo": ["demo", "-o", "{link}"],
    "data synth": ["data", "synth", "-o", "{link}"],
    "prune into a dangling folder": ["prune", "{good}", "--ratio", "0.2", "--imgsz", "64", "-o", "{link}/p.pt"],
}


@pytest.mark.parametrize("case", list(DANGLING))
def test_a_dangling_symlink_as_output_is_refused_up_front(case, files, tmp_path, monkeypatch, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {files['root'] / 'good.pt'}\nimgsz: 64\n")
    names = {"good": files["root"] / "good.pt", "data": files["data"], "link": link, "recipe": recipe}
    argv = [a.format(**names) for a in DANGLING[case]]

    def refuse(*args, **kwargs):
        raise AssertionError("a dangling -o must be refused before any work")

    for where in ("yoloprune.pruning.run", "yoloprune.adapters"):
        target = "prune" if where.endswith("run") else "load_model"
        monkeypatch.setattr(importlib.import_module(where), target, refuse)
    fragment = (
        f"cannot write {link}/p.pt: {link} is a symlink to nothing (dangling)"
        if case.endswith("folder")
        else f"{link} is a symlink to nothing (dangling); remove it or choose another -o"
    )
    _refused(argv, capsys, fragment)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------------------------------ fuzz: stored sections
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from([10, 4000, (1 << 20) + 1]).map(lambda n: "x" * n),
)


def _nested(value: object, depth: int) -> object:
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.tuples(inner, st.integers(1, 5000)).map(lambda t: [t[0]] * t[1]),  # one value shared many times
        st.tuples(inner, st.integers(1, 200)).map(lambda t: _nested(*t)),  # deep
    ),
    max_leaves=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES, where=st.sampled_from(["report", "settings", "plan", "top-level settings"]))
def test_stored_sections_load_or_are_refused_in_one_line(value, where, tmp_path):
    """Whatever plain data a section holds: it loads (and then serialises as export's metadata does) or is refused
    with one line naming the file; never a MemoryError or RecursionError."""
    path = tmp_path / "fuzz.pt"
    ckpt: dict = {"model": torch.nn.Conv2d(3, 4, 1)}
    if where == "top-level settings":
        ckpt["settings"] = value
    else:
        ckpt["yoloprune"] = {where: value}
    try:
        torch.save(ckpt, path)
    except RecursionError:  # torch.save's own pickler cannot write it: nothing to load
        return
    for loader in LOADERS:
        try:
            loaded = loader(path)
        except OversizedSection as exc:
            assert str(exc).startswith(f"{path}: its ") and len(str(exc).splitlines()) == 1
            assert "x" * 100 not in str(exc)  # names the section, never echoes it
            continue
        section = loaded.get("yoloprune") or {"settings": loaded["settings"]}
        text = json.dumps(section, default=str)
        assert len(text) <= 200 << 20


# ------------------------------------------------------------------------------- 8. ONNX files that spin or hoard
def _loop_nodes(trip: int = 10**15) -> list:
    """ReduceMean(images) expanded to [1, 6, 84], then a Loop of ``trip`` Identity iterations: tiny, spins for ever."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 6, 84]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 6, 84]),
        ],
    )
    return [
        helper.make_node("Constant", [], ["M"], value=numpy_helper.from_array(np.array(trip, np.int64))),
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("ReduceMean", ["images"], ["r"], keepdims=0),
        helper.make_node("Constant", [], ["shp"], value=numpy_helper.from_array(np.array([1, 6, 84], np.int64))),
        helper.make_node("Expand", ["r", "shp"], ["v0"]),
        helper.make_node("Loop", ["M", "c", "v0"], ["output0"], body=body),
    ]


def _in_a_branch(nodes: list) -> list:
    """``nodes`` (ending in ``output0``) as the then-branch of an If on a constant true."""
    out = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, 84])]
    then = helper.make_graph(nodes, "then", [], out)
    other = helper.make_graph([helper.make_node("Identity", ["v0"], ["output0"])], "else", [], out)
    head = [n for n in nodes if n.op_type != "Loop"]
    flag = helper.make_node("Constant", [], ["flag"], value=numpy_helper.from_array(np.array(True)))
    return [*head, flag, helper.make_node("If", ["flag"], ["output0"], then_branch=then, else_branch=other)]


def _hoarding_nodes(dynamic: bool) -> list:
    """A ConstantOfShape of 500M floats (2 GB) reduced to a scalar and expanded to [1, 6, 84]: its shape a constant,
    or (``dynamic``) computed from the image's shape times 10^7."""
    if dynamic:
        scale = numpy_helper.from_array(np.array([10**7, 1, 1, 1], np.int64))
        shape = [
            helper.make_node("Shape", ["images"], ["s0"]),
            helper.make_node("Constant", [], ["k"], value=scale),
            helper.make_node("Mul", ["s0", "k"], ["s"]),
        ]
    else:
        size = numpy_helper.from_array(np.array([500_000_000], np.int64))
        shape = [helper.make_node("Constant", [], ["s"], value=size)]
    one = numpy_helper.from_array(np.array([1.0], np.float32))
    return [
        *shape,
        helper.make_node("ConstantOfShape", ["s"], ["big"], value=one),
        helper.make_node("ReduceMean", ["big"], ["m"], keepdims=0),
        helper.make_node("ReduceMean", ["images"], ["r"], keepdims=0),
        helper.make_node("Add", ["m", "r"], ["t"]),
        helper.make_node("Constant", [], ["shp"], value=numpy_helper.from_array(np.array([1, 6, 84], np.int64))),
        helper.make_node("Expand", ["t", "shp"], ["output0"]),
    ]


ONNX_META = {"layout": "xywh-class", "nc": "2"}


@pytest.mark.parametrize("command", ["bench", "eval"])
@pytest.mark.parametrize("where", ["graph", "branch"])
def test_an_onnx_loop_is_refused_before_it_runs(command, where, files, tmp_path, capsys):
    """A Loop of 10^15 iterations (in the graph, or inside an If's branch) spun for ever under bench --runs 1."""
    nodes = _loop_nodes() if where == "graph" else _in_a_branch(_loop_nodes())
    path = _onnx(tmp_path / "loop.onnx", nodes, [], ONNX_META, [1, 6, 84])
    extra = ["--data", str(files["data"])] if command == "eval" else ["--runs", "1", "--warmup", "0"]
    message = f"{path}: it holds a Loop node (a loop); detector exports have none, refusing a file that could run"
    _refused([command, str(path), "--imgsz", "64", *extra], capsys, message)


@pytest.mark.parametrize("command", ["bench", "eval"])
@pytest.mark.parametrize(
    "dynamic, what",
    [(False, "a ConstantOfShape node holds 500,000,000"), (True, "a ConstantOfShape node's output holds 122,880,")],
)
def test_an_onnx_tensor_of_gigabytes_is_refused_before_it_runs(command, dynamic, what, files, tmp_path, capsys):
    """ConstantOfShape([500M]) took 2.9 GB of memory from a file of a few hundred bytes."""
    path = _onnx(tmp_path / "alloc.onnx", _hoarding_nodes(dynamic), [], ONNX_META, [1, 6, 84])
    extra = ["--data", str(files["data"])] if command == "eval" else ["--runs", "1", "--warmup", "0"]
    err = _refused([command, str(path), "--imgsz", "64", *extra], capsys, f"{path}: {what}")
    assert "elements (more than 268,435,456); refusing a file that asks for more memory" in err


def test_a_large_initializer_is_refused_and_own_nms_exports_pass(tmp_path):
    from yoloprune.export.onnx import check_graph, export_onnx

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 15, 1 << 15])  # dims only: 4 GiB
    path = _onnx(tmp_path / "w.onnx", [helper.make_node("Identity", ["images"], ["output0"])], [weight], {}, [1])
    with pytest.raises(ValueError, match=re.escape(f"{path}: a constant tensor holds 1,073,741,824 elements")):
        check_graph(path, 64)
    export_onnx(_model(), tmp_path / "nms.onnx", imgsz=64, nms=True)  # an If (torch's NMS), no loop: accepted
    check_graph(tmp_path / "nms.onnx", 64)


# ------------------------------------------------------------------------------------------ 9. forged sweep points
def _point(out: Path, name: str = "1.000.json", **fields: object) -> Path:
    record = {
        "target": 1.0,
        "macs": 1000,
        "params": 100,
        "map50_95": 0.5,
        "map50": 0.7,
        "latency_p50_ms": 3.0,
        "checkpoint": str(out / "base.pt"),
        "onnx": str(out / "models" / "unpruned.onnx"),
        "seconds": 1.0,
        **fields,
    }
    (out / "points").mkdir(parents=True, exist_ok=True)
    path = out / "points" / name
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"latency_p50_ms": 0}, "a latency that is not positive"),
        ({"latency_p50_ms": -2.5}, "a latency that is not positive"),
        ({"latency_p50_ms": float("nan")}, "a number that is not finite"),
        ({"latency_p50_ms": float("inf")}, "a number that is not finite"),
        ({"map50": float("nan")}, "a number that is not finite"),
        ({"macs": 10**30}, "a number that is not finite"),
        ({"SECRET": 1}, "a field that is not a sweep point's"),
    ],
)
def test_a_forged_sweep_point_is_refused(fields, problem, tmp_path):
    from yoloprune.workflows.sweep import read_point

    assert read_point(_point(tmp_path)).latency_p50_ms == 3.0  # the record as a sweep writes it
    path = _point(tmp_path, **fields)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a sweep point ({problem}")) as info:
        read_point(path)
    assert "SECRET" not in str(info.value) and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_sweep_point_times_only_its_own_folders_onnx_file(where, tmp_path):
    """A record naming a file elsewhere is read as naming the folder's own (what a sweep wrote there, by target; a
    moved sweep folder still finds its files); the folder's own being a link is refused."""
    from yoloprune.workflows.sweep import read_point

    out = tmp_path / "s"
    (tmp_path / "elsewhere.onnx").write_bytes(b"x")
    onnx = {"absolute": tmp_path / "elsewhere.onnx", "dotdot": out / "models" / ".." / ".." / "elsewhere.onnx"}
    if where == "symlink":
        (out / "models").mkdir(parents=True)
        (out / "models" / "unpruned.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    path = _point(out, onnx=str(onnx.get(where, out / "models" / "unpruned.onnx")))
    if where == "symlink":
        with pytest.raises(ValueError, match=re.escape(f"{out / 'models' / 'unpruned.onnx'} is a symbolic link")):
            read_point(path)
    else:
        assert read_point(path).onnx == str(out / "models" / "unpruned.onnx")


def test_a_sweep_folder_with_a_zero_latency_is_one_line(files, tmp_path, monkeypatch, capsys):
    """A forged unpruned point with latency 0 divided by zero in write_results (a ZeroDivisionError traceback)."""
    from yoloprune.workflows import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "claim", lambda *args, **kwargs: None)  # as if the folder's key matched
    monkeypatch.setattr(sweep_module, "progress", lambda items, desc: iter(items))  # no progress bar on stderr
    out = tmp_path / "s"
    path = _point(out, latency_p50_ms=0)
    _point(out, "0.500.json", target=0.5, onnx=str(out / "models" / "pruned-0.500.onnx"))
    argv = ["sweep", str(files["root"] / "good.pt"), "--data", str(files["data"]), "-o", str(out), "--targets", "0.5"]
    _refused([*argv, "--imgsz", "64"], capsys, f"{path} is not a sweep point (a latency that is not positive")


# ----------------------------------------------------------------------------------------- 10. prune --ratios-from
@pytest.mark.parametrize(
    "text, problem",
    [
        ("{}", "it needs 'ratios', a mapping of units to ratios, and 'by', one of stage, group"),
        ('{"ratios": "abc", "by": "stage"}', "it needs 'ratios', a mapping of units to ratios"),
        ("[1]", "it needs 'ratios', a mapping of units to ratios"),
        ('{"ratios": {"model.2": 0.3}, "by": "SECRET"}', "it needs 'ratios', a mapping of units to ratios"),
        ('{"ratios": {"model.2": 1.5}, "by": "stage"}', "a ratio that is not a number from 0 to below 1"),
        ('{"ratios": {"model.2": NaN}, "by": "stage"}', "a ratio that is not a number from 0 to below 1"),
        ('{"ratios": {"model.2": "SECRET"}, "by": "stage"}', "a ratio that is not a number from 0 to below 1"),
        ('{"ratios": {"": 0.2}, "by": "stage"}', "its ratios are not keyed by at most 100,000 unit names"),
        ('{"ratios": {', "Expecting"),
    ],
)
def test_a_bad_ratios_json_is_one_line(text, problem, files, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    path = tmp_path / "r" / "ratios.json"
    path.write_text(text)
    argv = ["prune", str(files["root"] / "good.pt"), "--ratios-from", str(path.parent), "-o", str(tmp_path / "o.pt")]
    err = _refused(argv, capsys, f"{path} is not a ratios.json that `yoloprune sensitivity` writes ({problem}")
    assert "SECRET" not in err and not (tmp_path / "o.pt").exists()


# --------------------------------------------------------------------------------------------- 11. COCO JSON fields
def _coco_file(path: Path, **annotation: object) -> Path:
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], **annotation}],
    }
    path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize(
    "annotation, problem",
    [
        ({"bbox": ["SECRET" * 10, *range(20000)]}, "annotation 7 has a malformed 'bbox' (want four finite numbers"),
        ({"bbox": [1, 2, float("nan"), 4]}, "annotation 7 has a malformed 'bbox'"),
        ({"category_id": "SECRET" * 1000}, "annotation 7 has a 'category_id' that is not an integer"),
        ({"category_id": [1]}, "annotation 7 has a 'category_id' that is not an integer"),
        ({"category_id": float("inf")}, "annotation 7 has a 'category_id' that is not an integer"),
        ({"category_id": 9}, "annotation 7 has unknown category_id 9"),
        ({"image_id": "SECRET"}, "annotation 7 has an 'image_id' that is not an integer"),
        ({"image_id": {"a": 1}}, "annotation 7 has an 'image_id' that is not an integer"),
        ({"iscrowd": "SECRET"}, "annotation 7 has an 'iscrowd' that is not 0 or 1"),
        ({"area": "SECRET"}, "annotation 7 has an 'area' that is not a finite number >= 0"),
        ({"id": "SECRET"}, "annotation #0 has no integer 'id' (of at most 18 digits)"),
        ({"id": 10**40}, "annotation #0 has no integer 'id' (of at most 18 digits)"),
    ],
)
def test_a_bad_coco_field_is_named_not_echoed(annotation, problem, tmp_path):
    from yoloprune.data.datasets import DatasetError, load_detection_set

    path = _coco_file(tmp_path / "instances_val.json", **annotation)
    with pytest.raises(DatasetError) as info:
        load_detection_set(path)
    message = str(info.value)
    assert message == f"{path}: {problem}" or message.startswith(f"{path}: {problem} "), message
    assert "SECRET" not in message and len(message) < 300 and len(message.splitlines()) == 1


def test_a_bad_coco_file_is_one_line_from_the_cli(tmp_path, capsys):
    path = _coco_file(tmp_path / "instances_val.json", bbox=["SECRET", *range(20000)])
    err = _refused(["eval", "yolov8n.yaml", "--data", str(path), "--imgsz", "64"], capsys, f"{path}: annotation 7 ")
    assert "SECRET" not in err and len(err) < 400


def test_string_ids_are_read_as_the_integers_they_spell(tmp_path):
    from yoloprune.data.datasets import from_coco

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    dataset = from_coco(_coco_file(tmp_path / "instances_val.json", category_id="1", image_id=1.0))
    assert dataset.coco.anns[7]["category_id"] == 1 and dataset.coco.anns[7]["image_id"] == 1


# ---------------------------------------------------------------------------------------- 12. recipe billion laughs
LAUGHS_RECIPE = "name: bl\nmodel: yolov8n.yaml\nimgsz: 64\nprune: {ratio: 0.2}\nexpected:\n" + "".join(
    f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else ', '.join(['x'] * 10)}]\n" for i in range(9)
)


def test_a_recipe_of_yaml_anchor_laughs_is_refused_before_any_work(tmp_path, capsys):
    """653 bytes standing for 10^9 strings in the free-form expected: section: the run pruned, then could not load
    its own pruned.pt."""
    path = tmp_path / "bl.yaml"
    path.write_text(LAUGHS_RECIPE)
    assert len(LAUGHS_RECIPE) < 1000
    message = f"{path}: its 'expected' section holds more than 1,000,000 values once its shared references"
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(path)
    _refused(["run", str(path), "-o", str(tmp_path / "out")], capsys, message)
    assert not (tmp_path / "out").exists()


def test_a_recipe_yaml_error_is_one_line_without_its_text(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: yolov8n.yaml\nprune: [SECRET\n")
    with pytest.raises(RecipeError, match=re.escape(f"{path} is not valid yaml: ")) as info:
        load_recipe(path)
    assert "SECRET" not in str(info.value) and len(str(info.value).splitlines()) == 1
    assert re.search(r"\(line \d+, column \d+\)$", str(info.value))


# -------------------------------------------------------------------------------------- 13. data yaml channels
@pytest.mark.parametrize("channels", [1, 4, "3", True])
def test_a_data_yaml_of_other_channels_is_refused(channels, files, tmp_path, capsys):
    """channels: 1 (an ultralytics grayscale dataset) crashed finetune with a RuntimeError: images are read as BGR."""
    from yoloprune.data.datasets import DatasetError, load_detection_set

    cfg = yaml.safe_load(Path(files["data"]).read_text())  # the synthetic set's yaml, its path: absolute
    path = tmp_path / "gray.yaml"
    path.write_text(yaml.safe_dump({**cfg, "channels": channels}))
    message = f"{path}: yoloprune reads every image as 3 channels (BGR); 'channels' must be 3 or absent"
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_detection_set(path)
    if channels == 1:
        argv = ["finetune", str(files["root"] / "good.pt"), "--data", str(path), "--epochs", "1"]
        _refused([*argv, "-o", str(tmp_path / "ft"), "--imgsz", "64"], capsys, message)
    path.write_text(yaml.safe_dump({**cfg, "channels": 3}))
    assert load_detection_set(path).nc == 2
