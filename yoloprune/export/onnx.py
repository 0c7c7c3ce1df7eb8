"""ONNX export that verifies itself against PyTorch on a real image, with onnxslim, metadata, fp16 and INT8."""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from yoloprune.adapters import GENERIC, Adapter, adapter, resolve
from yoloprune.export.split_convs import split_convs as give_parts_own_convs
from yoloprune.graph.nest import tensors_in
from yoloprune.images import Preprocess, check_imgsz, list_images, load_batch, sample_image
from yoloprune.io import write_atomic
from yoloprune.options import MAX_IMGSZ

DEFAULT_OPSET = 17  # torch 2.14's TorchScript exporter; the dynamo exporter wrote an invalid Split at opset 17
MIN_OPSET = 11  # measured with torch 2.14: Upsample fails below 9, YOLOX's strided slices below 10, --nms below 11
INT8_MIN_OPSET = 13  # onnxruntime refuses per-channel DequantizeLinear (the axis attribute) before opset 13


class ExportError(RuntimeError):
    """An export that did not verify: no file is kept."""


@dataclass
class ExportResult:
    """Where the file went and how closely onnxruntime matched PyTorch on the verification image."""

    path: Path
    max_abs_diff: float
    rel_diff: float
    tolerance: float
    seconds: float
    outputs: list[list[int | str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"exported {self.path} in {self.seconds:.1f} s; onnxruntime vs PyTorch on the verification image: "
            f"max abs diff {self.max_abs_diff:.2e} ({self.rel_diff:.2e} relative, limit {self.tolerance:.0e})"
        )


def family_hooks(model: nn.Module, family: str | None = None) -> tuple[Adapter, nn.Module, Preprocess]:
    """The family adapter (``GENERIC`` for an unknown network), the network to export and its image convention."""
    target = resolve(model, family=family, prune_head=True)
    found = adapter(target.family)
    return found, target.module, found.PREPROCESS


def _outputs(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach() for t in tensors_in(net(x))]


def _dynamic_axes(net: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, dict[int, str]]:
    """Mark batch and image-size dims of the input, and every output dim that changes with them."""
    base = [t.shape for t in _outputs(net, x)]
    bigger = torch.zeros(2, x.shape[1], x.shape[2] + 32, x.shape[3] + 64)
    moved = [t.shape for t in _outputs(net, bigger)]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name, a, b in zip(names, base, moved):
        axes[name] = {d: f"{name}_d{d}" for d in range(len(a)) if a[d] != b[d]}
    return axes


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    imgsz: int = 640,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = False,
    simplify: bool = True,
    split_convs: bool = True,
    half: bool = False,
    nms: bool = False,
    end2end: bool = False,
    int8_calib: str | Path | None = None,
    family: str | None = None,
    image: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    tolerance: float | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export ``model`` to ONNX at ``out`` in its family's export mode and verify it (``end2end``: the NMS-free
    one-to-one head of YOLO26/YOLOv10; ``nms``: NMS in the graph; ``split_convs``: each part of a channel split gets
    its own convolution, which onnxruntime's CPU provider ran 1-6.5% faster here, see ``yoloprune.export.split_convs``).

    onnxruntime's outputs on ``image`` (default: ultralytics' ``bus.jpg``, letterboxed the family's way) must match
    PyTorch's within ``tolerance`` (relative to the largest output value; default 1e-3, 1e-2 with ``half``); otherwise
    ``ExportError`` is raised and no file is written. INT8 (static, calibrated on the images in ``int8_calib``)
    changes outputs by design: its difference is reported, not enforced. An existing ``out`` is replaced only with
    ``overwrite``.
    """
    start = time.perf_counter()
    check_imgsz(imgsz)
    check_opset(opset, int8=int8_calib is not None)
    adapter, net, spec = family_hooks(model, family)
    if nms and end2end:
        raise ValueError("--nms and --end2end exclude each other: an NMS-free head needs no NMS")
    export_net = adapter.export_module(net, dynamic, end2end)
    layout = adapter.nms_layout(export_net) if adapter is not GENERIC else None
    if nms:
        from yoloprune.export.nms import with_nms

        if dynamic:
            raise ValueError("--nms exports batch 1; it cannot be combined with --dynamic")
        raw_net = export_net
        export_net = with_nms(export_net, adapter)
    x = load_batch(image or sample_image(), imgsz, spec)
    reference = _outputs(export_net, x)
    names = [f"output{i}" for i in range(len(reference))]
    axes = _dynamic_axes(export_net, x, names) if dynamic else None
    proto = _to_onnx(export_net, x, opset, axes, simplify, split_convs, names)
    notes = []
    from yoloprune.graph.counting import count_macs, count_params

    meta = {**adapter.export_metadata(net, imgsz), **(metadata or {})}
    meta["macs"], meta["params"] = str(count_macs(net, x)), str(count_params(net))
    meta["preprocess"] = json.dumps(asdict(spec))
    if layout is not None:
        meta["layout"], meta["nc"] = ("nms" if nms else layout[0]), str(layout[1])
    meta["family"] = adapter.FAMILY
    meta["exported_by"] = "yoloprune"
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else _meta_value(value)
    onnx.checker.check_model(proto)
    if half:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True)
    data = proto.SerializeToString()
    if int8_calib is not None:
        data = _quantize(data, int8_calib, imgsz, spec)
        notes.append("INT8: static QDQ quantization; outputs differ from fp32 by design (difference reported)")
    got = _run_onnx(data, x)
    limit = tolerance if tolerance is not None else (1e-2 if half else 1e-3)
    if nms:  # the network before NMS must match strictly; the NMS result must be a valid NMS of it
        from yoloprune.export.nms import check_nms

        raw = _to_onnx(raw_net, x, opset, None, simplify, split_convs).SerializeToString()  # fp32, as before --half
        worst_abs, worst_rel = _compare(_outputs(raw_net, x), _run_onnx(raw, x))
        problem = check_nms(export_net, x, torch.from_numpy(got[0]).float())
        if problem:
            raise ExportError(f"the NMS graph disagrees with PyTorch: {problem}; no file written")
    else:
        worst_abs, worst_rel = _compare(reference, got, as_sets=layout is not None and layout[0] == "end2end")
    if worst_rel > limit and int8_calib is None:
        raise ExportError(
            f"onnxruntime differs from PyTorch by {worst_rel:.2e} (relative; limit {limit:.0e}); no file written"
        )
    path = write_atomic(out, lambda f: f.write(data), overwrite)
    return ExportResult(
        path, worst_abs, worst_rel, limit, time.perf_counter() - start, [list(t.shape) for t in reference], notes
    )


def _to_onnx(
    net: nn.Module,
    x: torch.Tensor,
    opset: int,
    axes: dict | None,
    simplify: bool,
    split_convs: bool,
    names: list[str] | None = None,
) -> onnx.ModelProto:
    """``net`` traced on ``x`` (TorchScript exporter), simplified with onnxslim and with each part of a channel split
    given its own convolution (``split_convs.split_convs``) when asked."""
    buffer = io.BytesIO()
    net.eval()  # the exporter restores the mode it finds, recursively
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            x,
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=["images"],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    if split_convs:
        give_parts_own_convs(proto)
    return proto


def _meta_value(value: Any) -> str:
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        return repr(value)  # ultralytics reads names with a literal eval
    if isinstance(value, (list, tuple)):
        return repr(list(value))
    return value if isinstance(value, str) else json.dumps(value, default=str)


def check_opset(opset: int, int8: bool = False) -> int:
    """Refuse an opset outside the range every family exports and verifies in: from ``MIN_OPSET`` (with ``int8``,
    ``INT8_MIN_OPSET``) to the newest torch's TorchScript exporter writes."""
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as high
    except ImportError:  # a private constant; this is torch 2.14's value
        high = 20
    low = INT8_MIN_OPSET if int8 else MIN_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        with_int8 = " with --int8" if int8 else ""
        raise ValueError(f"--opset {opset} is not supported{with_int8}: choose {low}..{high} (default {DEFAULT_OPSET})")
    return opset


def session(data: bytes | str | Path, threads: int = 0, imgsz: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads`` 0: onnxruntime's default); with ``imgsz``, a file exported at another
    fixed size is refused."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures are reported as one line by ``session`` and ``run_session``
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = data if isinstance(data, bytes) else str(data)
    what = "the exported model" if isinstance(data, bytes) else str(data)
    if not isinstance(data, bytes):  # a file given by the user: no loop that spins for ever, no tensor of GBs
        check_graph(data, imgsz)
    try:
        s = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise ExportError(f"onnxruntime {ort.__version__} cannot load {what}: {_reason(exc)}") from exc
    size = s.get_inputs()[0].shape[2:]
    if imgsz is not None and all(isinstance(d, int) for d in size) and list(size) != [imgsz, imgsz]:
        shape = "x".join(map(str, size))
        raise ValueError(f"{what} takes {shape} images, not --imgsz {imgsz}; pass --imgsz {size[0]} or export it again")
    return s


class ModelRunError(ValueError):
    """onnxruntime loaded an ONNX file but failed to run it (a node that fails, or asks for more memory than there
    is)."""


def _reason(exc: BaseException) -> str:
    """onnxruntime's message, one line of at most 200 characters, without what the file chose to say: quoted names
    and paths become ``'...'`` and anything unprintable is dropped."""
    text = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", text)
    text = "".join(c for c in text if c.isprintable())
    node = re.search(r"running (\w+) node", text)
    where = f"a {node.group(1)} node" if node else "it"
    if "allocate memory" in text or isinstance(exc, MemoryError):
        return f"{where} asks for more memory than there is"
    return text[:200]


def run_session(s: Any, feed: dict[str, np.ndarray], what: str | Path = "the exported model") -> list[Any]:
    """``s.run(None, feed)``, with onnxruntime's failures (a node that fails, memory it cannot have) reported as one
    line naming ``what``."""
    try:
        return s.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types, or MemoryError
        raise ModelRunError(f"onnxruntime cannot run {what}: {_reason(exc)}") from None


def _run_onnx(data: bytes, x: torch.Tensor) -> list[np.ndarray]:
    s = session(data)
    return run_session(s, {s.get_inputs()[0].name: x.numpy()})


def _compare(reference: list[torch.Tensor], got: list[np.ndarray], as_sets: bool = False) -> tuple[float, float]:
    """The largest absolute and relative difference between PyTorch's and onnxruntime's outputs; with ``as_sets``
    (end-to-end detections, whose equal scores top-k may order either way) each row of one is compared with the
    nearest row of the other's same image."""
    if len(reference) != len(got):
        raise ExportError(f"PyTorch returns {len(reference)} outputs, onnxruntime {len(got)}")
    worst_abs, worst_rel = 0.0, 0.0
    for ref, out in zip(reference, got):
        ref_np = ref.float().numpy()
        if ref_np.shape != out.shape:
            raise ExportError(f"output shape {out.shape} differs from PyTorch's {ref_np.shape}")
        out = out.astype(np.float32)
        if as_sets and ref_np.ndim == 3 and ref_np.size:  # (B, K, 6): each row against the other's nearest row
            # rows scored at the cut (the K-th score, 1e-4 in probability) are ties top-k may break either way
            cut = max(ref_np[..., 4].min(), out[..., 4].min()) + 1e-4
            gaps = np.abs(out[:, :, None, :] - ref_np[:, None, :, :]).max(-1)
            kept_out, kept_ref = out[..., 4] > cut, ref_np[..., 4] > cut
            diff = max(float(gaps.min(-1)[kept_out].max(initial=0.0)), float(gaps.min(-2)[kept_ref].max(initial=0.0)))
        else:
            diff = float(np.abs(ref_np - out).max()) if ref_np.size else 0.0
        scale = max(float(np.abs(ref_np).max()) if ref_np.size else 0.0, 1e-12)
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
    return worst_abs, worst_rel


def _quantize(data: bytes, calib: str | Path, imgsz: int, spec: Preprocess) -> bytes:
    """Static INT8 (QDQ, per-channel weights) calibrated on the images in ``calib``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = list_images(calib)[:64]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.items, None)
            return None if path is None else {"images": load_batch(path, imgsz, spec).numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return dst.read_bytes()


def _load(path: str | Path) -> Any:
    """The ModelProto of an ONNX file without its external data (which may point anywhere); a clear error for a file
    that is not ONNX (or cut short)."""
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except DecodeError:
        raise ValueError(f"{path} is not a readable ONNX file (truncated, or not ONNX at all)") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an ONNX file carries; a clear error for a file that is not ONNX (or cut short)."""
    return {p.key: p.value for p in _load(path).metadata_props}


CONTROL_FLOW = ("Loop", "Scan")
"""Operators that repeat a subgraph: a detector export (every family, with or without NMS) has none, and a ``Loop``
with a trip count of 10**15 would spin for ever. (``If``, which torch writes into NMS exports, runs a branch once;
its branches are checked like the main graph.)"""
MAX_TENSOR = 1 << 28
"""The most elements one tensor of an ONNX file may hold at batch one (1 GiB of fp32), or 64 times the input image's,
whichever is more: YOLO's largest feature maps (stride 2, up to 80 channels) are under 30 times the image."""


def check_graph(path: str | Path, imgsz: int | None = None) -> None:
    """Refuse an ONNX file given by the user before onnxruntime runs it: a control-flow operator anywhere (subgraphs
    and functions included), or a tensor (inferred at batch one and ``imgsz``, a ``ConstantOfShape``'s constant shape,
    an initializer) of more than ``MAX_TENSOR`` elements, so a tiny file can neither hang nor take gigabytes. External
    data is never read here."""
    proto = _load(path)
    graphs, constants = _graphs(proto), {}
    for graph in graphs:
        for node in graph.node:
            if node.op_type in CONTROL_FLOW:
                raise ValueError(
                    f"{path}: it holds a {node.op_type} node (a loop); detector exports have none, "
                    "refusing a file that could run for ever"
                )
        for tensor in getattr(graph, "initializer", ()):  # a function has none
            constants[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
                if value is not None:
                    constants[node.output[0]] = value
    inputs = [v for v in proto.graph.input if v.name not in constants]
    size = imgsz or 640
    if imgsz is None and inputs:
        dims = inputs[0].type.tensor_type.shape.dim
        size = dims[-1].dim_value if len(dims) == 4 and dims[-1].HasField("dim_value") else 640
    limit = max(MAX_TENSOR, 64 * 3 * min(size, MAX_IMGSZ) ** 2)

    def check(count: int, what: str) -> None:
        if count > limit:
            raise ValueError(
                f"{path}: {what} holds {count:,} elements (more than {limit:,}); refusing a file that asks for more "
                "memory than a detector needs"
            )

    for tensor in constants.values():
        check(_product(tensor.dims), "a constant tensor")
    for graph in graphs:
        for node in graph.node:
            shape = constants.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
            if shape is None or shape.data_location == onnx.TensorProto.EXTERNAL or _product(shape.dims) > 8:
                continue  # external data is never read here (it may point anywhere); a shape has a few entries
            try:
                shape = onnx.numpy_helper.to_array(shape)
            except Exception:  # malformed data: onnxruntime says why when it loads the file
                continue
            check(_product(int(d) for d in np.asarray(shape).reshape(-1)), "a ConstantOfShape node")
    for value in inputs:  # what yoloprune feeds: batch one, 3 x imgsz x imgsz
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_value = 1 if i == 0 else 3 if i == 1 else size
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # onnx's InferenceError, ValidationError: onnxruntime says why when it loads the file
        return
    for graph in _graphs(inferred):
        producers = {out: node.op_type for node in graph.node for out in node.output}
        for value in (*getattr(graph, "input", ()), *getattr(graph, "value_info", ()), *getattr(graph, "output", ())):
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                op = producers.get(value.name, "")
                what = f"a {op} node's output" if onnx.defs.has(op) else "a tensor"  # never a name the file chose
                check(_product(d.dim_value for d in dims), what)


def _graphs(proto: Any) -> list[Any]:
    """Every graph of a model: its main graph, the subgraphs of its nodes' attributes, and its functions' bodies."""
    found, stack = [], [proto.graph]
    stack.extend(proto.functions)
    while stack:
        graph = stack.pop()
        found.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return found


def _product(dims: Any) -> int:
    total = 1
    for d in dims:
        total *= max(int(d), 0)
    return total
