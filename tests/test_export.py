"""ONNX export verifies itself; fp16, INT8, dynamic shapes and NMS; latency benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import randomize

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.export import onnx as export_module
from yoloprune.export.bench import bench, onnx_counts, time_calls
from yoloprune.export.onnx import ExportError, export_onnx, read_metadata, session
from yoloprune.graph.counting import count_macs
from yoloprune.images import load_batch, sample_image

IMGSZ = 128


@pytest.fixture(scope="module")
def pruned():
    model = randomize(from_config("yolov8n.yaml"))
    model.names = {i: f"c{i}" for i in range(80)}
    yoloprune.prune(model, torch.zeros(1, 3, IMGSZ, IMGSZ), ratio=0.3)
    return model


def test_export_verifies_and_writes_metadata(pruned, tmp_path):
    out = tmp_path / "m.onnx"
    result = export_onnx(pruned, out, imgsz=IMGSZ)
    assert result.rel_diff < 1e-3 and result.outputs == [[1, 84, 336]]
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = read_metadata(out)
    assert meta["family"] == "ultralytics" and meta["stride"] == "32" and eval(meta["names"])[5] == "c5"
    assert int(meta["macs"]) == count_macs(pruned, torch.zeros(1, 3, IMGSZ, IMGSZ))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # Conv+BN fused


def test_the_dfl_exports_on_its_bin_axis_with_ultralytics_outputs(pruned, tmp_path):
    """The export computes the DFL without moving the bins to axis 1 (one Softmax on axis 2, no Transpose before it)
    and predicts what ultralytics' own export-mode network predicts."""
    from yoloprune.adapters.ultralytics import BinAxisDFL, export_module

    net = export_module(pruned)
    stock = export_module(pruned)
    head = stock.model[-1]
    head.dfl = pruned.model[-1].dfl  # ultralytics' DFL back in place
    assert isinstance(net.model[-1].dfl, BinAxisDFL) and type(head.dfl).__name__ == "DFL"
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        ours, theirs = net(x), stock(x)
    assert ours.shape == theirs.shape == (2, 84, 336)
    assert (ours - theirs).abs().max().item() < 1e-4 * theirs.abs().max().item()
    out = tmp_path / "m.onnx"
    export_onnx(pruned, out, imgsz=IMGSZ)
    nodes = onnx.load(str(out)).graph.node
    softmax = [n for n in nodes if n.op_type == "Softmax"]
    made_by = {o: n.op_type for n in nodes for o in n.output}
    assert [(a.name, a.i) for n in softmax for a in n.attribute] == [("axis", 2)]
    assert made_by[softmax[0].input[0]] == "Reshape"


def test_export_that_does_not_match_keeps_no_file(pruned, tmp_path, monkeypatch):
    real = export_module._run_onnx
    monkeypatch.setattr(export_module, "_run_onnx", lambda data, x: [o * 1.01 for o in real(data, x)])
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(pruned, out, imgsz=IMGSZ)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dynamic_export_runs_at_other_sizes_and_batches(pruned, tmp_path):
    out = tmp_path / "dyn.onnx"
    export_onnx(pruned, out, imgsz=IMGSZ, dynamic=True)
    s = session(out)
    y = s.run(None, {"images": np.zeros((2, 3, 96, 160), dtype=np.float32)})[0]
    assert y.shape == (2, 84, 3 * 5 + 6 * 10 + 12 * 20)


def test_half_export_has_fp16_weights(pruned, tmp_path):
    out = tmp_path / "half.onnx"
    result = export_onnx(pruned, out, imgsz=IMGSZ, half=True)
    proto = onnx.load(str(out))
    kinds = {t.data_type for t in proto.graph.initializer if len(t.dims) > 1}
    assert kinds == {onnx.TensorProto.FLOAT16} and result.tolerance == 1e-2


def test_nms_export_matches_torch_detections(tmp_path, monkeypatch):
    rewritten = []
    real = export_module.give_parts_own_convs
    monkeypatch.setattr(export_module, "give_parts_own_convs", lambda proto: rewritten.append(real(proto)))
    torch.manual_seed(0)
    model = randomize(from_config("yolov8n.yaml"))
    with torch.no_grad():
        for seq in model.model[-1].cv3:
            seq[-1].bias.fill_(2.0)  # confident class scores, so NMS has work to do
    out = tmp_path / "nms.onnx"
    result = export_onnx(model, out, imgsz=IMGSZ, nms=True)
    assert result.outputs[0][1] == 6 and 0 < result.outputs[0][0] <= 300 and result.max_abs_diff < 1e-3
    assert rewritten == [8, 8]  # the written file and the pre-NMS network strictly compared with PyTorch


def test_end2end_export_of_yolo26_needs_no_nms(tmp_path):
    """The NMS-free one-to-one head (``--end2end``) of a pruned YOLO26: (1, K, 6) detections that match PyTorch's
    as a set, read back by ``eval`` as end-to-end; the default export stays the dense one-to-many output."""
    from yoloprune.data import synthesize
    from yoloprune.evaluate.coco import evaluate

    model = randomize(from_config({**from_config("yolo26n.yaml").yaml, "nc": 3}))
    yoloprune.prune(model, torch.zeros(1, 3, IMGSZ, IMGSZ), target_macs=0.5)
    with torch.no_grad():
        for seq in model.model[-1].one2one_cv3:
            seq[-1].bias.fill_(2.0)  # confident class scores, as a trained model's
    result = export_onnx(model, tmp_path / "e2e.onnx", imgsz=IMGSZ, end2end=True)
    assert result.outputs[0][0] == 1 and result.outputs[0][2] == 6 and result.rel_diff < 1e-3
    assert read_metadata(tmp_path / "e2e.onnx")["layout"] == "end2end"
    dense = export_onnx(model, tmp_path / "dense.onnx", imgsz=IMGSZ)
    assert dense.outputs == [[1, 7, (IMGSZ // 8) ** 2 + (IMGSZ // 16) ** 2 + (IMGSZ // 32) ** 2]]
    data = synthesize(tmp_path / "d", train=2, val=2, imgsz=IMGSZ, classes=3, seed=3)
    assert evaluate(tmp_path / "e2e.onnx", data, imgsz=IMGSZ).images == 2
    with pytest.raises(ValueError, match="no NMS-free one-to-one head"):
        export_onnx(randomize(from_config("yolov8n.yaml")), tmp_path / "v8.onnx", imgsz=IMGSZ, end2end=True)
    assert main(["export", "yolo26n.yaml", "-o", str(tmp_path / "x.onnx"), "--nms", "--end2end"]) == 2


def test_int8_export_reports_its_difference(pruned, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        (calib / f"{i}.jpg").write_bytes(sample_image().read_bytes())
    out = tmp_path / "int8.onnx"
    result = export_onnx(pruned, out, imgsz=IMGSZ, int8_calib=calib)
    proto = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node) and result.notes
    assert np.isfinite(result.rel_diff)


def test_stock_ultralytics_runs_the_exported_file(pruned, tmp_path):
    from ultralytics import YOLO

    out = tmp_path / "m.onnx"
    export_onnx(pruned, out, imgsz=IMGSZ)
    result = YOLO(str(out), task="detect").predict(sample_image(), imgsz=IMGSZ, verbose=False)[0]
    assert result.names[5] == "c5" and result.boxes.data.shape[1] == 6


def test_bench_onnx_and_counts(pruned, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(pruned, out, imgsz=IMGSZ)
    result = bench(out, imgsz=IMGSZ, threads=1, runs=3, warmup=1)
    assert result.onnx.runs == 3 and 0 < result.onnx.p50 <= result.onnx.p90 * 1.0001 + 1e-9
    macs, params = onnx_counts(out)
    assert macs == count_macs(pruned, torch.zeros(1, 3, IMGSZ, IMGSZ)) and params == result.params
    stripped = tmp_path / "plain.onnx"
    proto = onnx.load(str(out))
    del proto.metadata_props[:]
    onnx.save(proto, str(stripped))
    graph_macs, graph_params = onnx_counts(stripped)  # counted from the graph itself
    assert abs(graph_macs - macs) / macs < 0.01 and abs(graph_params - params) / params < 0.01


def test_bench_checkpoint_times_both_runtimes(tmp_path, capsys):
    src = tmp_path / "p.pt"
    assert main(["prune", "yolov8n.yaml", "-o", str(src), "--imgsz", "64"]) == 0
    assert main(["bench", str(src), "--imgsz", "64", "--runs", "2", "--warmup", "1", "--json"]) == 0
    printed = capsys.readouterr().out
    data = __import__("json").loads(printed[printed.index("{") :])
    assert data["torch"]["runs"] == 2 and data["onnx"]["runs"] == 2 and data["macs"] > 0


def test_time_calls_rejects_bad_counts():
    with pytest.raises(ValueError):
        time_calls(lambda: None, runs=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--int8"], "--int8 needs --calib"), (["--imgsz", "30"], "--imgsz must be a positive multiple of 32")],
)
def test_export_cli_bad_input(extra, message, tmp_path, capsys):
    code = main(["export", "yolov8n.yaml", "-o", str(tmp_path / "x.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and ("error" in err)
    assert not (tmp_path / "x.onnx").exists()


def test_load_batch_letterboxes_the_family_way():
    x = load_batch(sample_image(), 64)
    assert x.shape == (1, 3, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), 114 / 255))  # bus.jpg is portrait: padded left
