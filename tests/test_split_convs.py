"""The export pass that gives each part of a channel Split its own convolution: same numbers, no Split left where
the pattern holds, nothing touched where it does not."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize
from onnx import TensorProto, helper, numpy_helper

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.export.onnx import export_onnx, session
from yoloprune.export.split_convs import split_convs

RNG = np.random.default_rng(0)


def _const(name: str, *shape: int, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _graph(
    opset: int, *, silu: bool = True, group: int = 1, extra_use: bool = False, sizes=(3, 5), constant_sizes=False
) -> onnx.ModelProto:
    """x -> Conv(8 out) [-> SiLU] -> Split(axis 1, ``sizes``) -> two outputs (plus the conv's output itself with
    ``extra_use``); ``constant_sizes``: the sizes from a Constant node, as torch writes them before onnxslim."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)]
    inits = [_const("w", 8, 4 // group, 3, 3), _const("b", 8)]
    split_in = "y"
    if silu:
        nodes += [helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["s", "y"], ["a"])]
        split_in = "a"
    if sizes is None:  # equal parts: no sizes given (opset 18 names how many)
        counted = {"num_outputs": 2} if opset >= 18 else {}
        nodes.append(helper.make_node("Split", [split_in], ["p0", "p1"], axis=1, **counted))
        sizes = (4, 4)
    elif opset >= 13:
        value = numpy_helper.from_array(np.array(sizes, dtype=np.int64), "sizes")
        if constant_sizes:
            nodes.insert(0, helper.make_node("Constant", [], ["sizes"], value=value))
        else:
            inits.append(value)
        nodes.append(helper.make_node("Split", [split_in, "sizes"], ["p0", "p1"], axis=1))
    else:
        nodes.append(helper.make_node("Split", [split_in], ["p0", "p1"], axis=1, split=list(sizes)))
    shapes = {"p0": [1, sizes[0], 6, 7], "p1": [1, sizes[1], 6, 7], "y": [1, 8, 6, 7]}
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in ("p0", "p1", "y")[: 2 + extra_use]
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 7])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 7)).astype(np.float32)
    return session(model.SerializeToString()).run(None, {"x": x})


@pytest.mark.parametrize(
    ("opset", "silu", "sizes", "constant_sizes"),
    [
        (17, True, (3, 5), False),
        (17, False, (3, 5), False),
        (11, True, (3, 5), False),
        (18, True, None, False),
        (13, True, (6, 2), True),
    ],
)
def test_each_part_gets_its_own_convolution_with_the_same_outputs(opset, silu, sizes, constant_sizes):
    model = _graph(opset, silu=silu, sizes=sizes, constant_sizes=constant_sizes)
    before = _run(model)
    assert split_convs(model) == 1
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops == (Counter(Conv=2, Sigmoid=2, Mul=2) if silu else Counter(Conv=2))
    weights = sorted(t.dims[0] for t in model.graph.initializer if len(t.dims) == 4)
    assert weights == sorted(sizes or (4, 4)) and {t.name for t in model.graph.initializer} >= {"p0/weight", "p1/bias"}
    assert not {"w", "b", "sizes"} & {t.name for t in model.graph.initializer}  # the old constants went
    assert "Constant" not in ops
    after = _run(model)
    assert [a.shape[1] for a in after] == list(sizes or (4, 4))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("kwargs", [{"extra_use": True}, {"group": 2}, {"sizes": (2, 5)}], ids=str)
def test_other_patterns_are_left_alone(kwargs):
    model = _graph(17, **kwargs)
    text = model.SerializeToString()
    assert split_convs(model) == 0
    assert model.SerializeToString() == text


@pytest.mark.parametrize(
    ("name", "kind", "shape"), [("w", TensorProto.FLOAT, [8, 4, 3, 3]), ("sizes", TensorProto.INT64, [2])]
)
def test_constants_the_caller_may_feed_are_left_alone(name, kind, shape):
    model = _graph(17)
    model.graph.input.append(helper.make_tensor_value_info(name, kind, shape))
    text = model.SerializeToString()
    assert split_convs(model) == 0 and model.SerializeToString() == text


def test_sizes_read_elsewhere_too_are_kept():
    model = _graph(13, constant_sizes=True)
    model.graph.node.append(helper.make_node("Identity", ["sizes"], ["sizes_too"]))
    model.graph.output.append(helper.make_tensor_value_info("sizes_too", TensorProto.INT64, [2]))
    before = _run(model)
    assert split_convs(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("Constant") == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, _run(model)))


def test_new_names_never_clash_and_stale_shapes_go():
    """Names the pass would pick already taken (a tensor, an initializer, a node); the removed tensors' shapes
    recorded in value_info must not describe the new ones."""
    model = _graph(17)
    graph = model.graph
    graph.node.append(helper.make_node("Identity", ["x"], ["p0/conv"], name="p0/sigmoid"))
    graph.output.append(helper.make_tensor_value_info("p0/conv", TensorProto.FLOAT, [1, 4, 6, 7]))
    graph.initializer.append(_const("p0/weight", 2))
    graph.value_info.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8, 6, 7]) for n in ("y", "s", "a"))
    before = _run(model)
    assert split_convs(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert not {v.name for v in graph.value_info} & {"y", "s", "a"}
    names = [o for n in graph.node for o in n.output] + [t.name for t in graph.initializer]
    assert len(names) == len(set(names)) and len({n.name for n in graph.node}) == len(graph.node)
    assert all(np.array_equal(a, b) for a, b in zip(before, _run(model)))


def test_a_split_on_another_axis_or_of_another_producer_is_left_alone():
    model = _graph(17, silu=False)
    model.graph.node[-1].attribute[0].i = 2
    assert split_convs(model) == 0
    model = _graph(17)
    model.graph.node[1].op_type = "Tanh"  # Tanh(y) * y is no SiLU
    assert split_convs(model) == 0


def test_exported_yolov8n_has_no_split_and_matches_the_plain_export(tmp_path):
    model = randomize(from_config("yolov8n.yaml"))
    plain, parts = tmp_path / "plain.onnx", tmp_path / "parts.onnx"
    export_onnx(model, plain, imgsz=64, split_convs=False)
    result = export_onnx(model, parts, imgsz=64)
    unslimmed = export_onnx(model, tmp_path / "unslimmed.onnx", imgsz=64, simplify=False)
    assert "Split" not in {n.op_type for n in onnx.load(str(unslimmed.path)).graph.node}
    before = Counter(n.op_type for n in onnx.load(str(plain)).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(parts)).graph.node)
    assert before["Split"] == 8 and after["Split"] == 0  # the C2f blocks' splits
    assert after["Conv"] - before["Conv"] == 8 and after["Sigmoid"] - before["Sigmoid"] == 8
    assert result.rel_diff < 1e-5
    x = torch.rand(1, 3, 64, 64).numpy()
    a, b = (session(str(p)).run(None, {"images": x})[0] for p in (plain, parts))
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    save(Loaded(model, "ultralytics", "x", {"train_args": {}}), tmp_path / "m.pt", {})
    for flag, splits in (("--no-split-convs", 8), ("--split-convs", 0)):
        cli = tmp_path / f"cli{splits}.onnx"
        assert main(["export", str(tmp_path / "m.pt"), "-o", str(cli), "--imgsz", "64", flag]) == 0
        assert Counter(n.op_type for n in onnx.load(str(cli)).graph.node)["Split"] == splits
