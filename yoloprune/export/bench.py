"""Latency on this machine: onnxruntime CPU and PyTorch, with warm-up, fixed threads and percentiles."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from yoloprune.export.onnx import export_onnx, family_hooks, read_metadata, run_session, session
from yoloprune.graph.counting import count_macs, count_params


@dataclass
class Timing:
    """Milliseconds per forward pass over ``runs`` timed runs after ``warmup`` untimed ones."""

    p50: float
    p90: float
    mean: float
    runs: int
    warmup: int


@dataclass
class BenchResult:
    model: str
    imgsz: int
    threads: int
    macs: int
    params: int
    onnx: Timing
    torch: Timing | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"{self.model} at {self.imgsz}x{self.imgsz}, {self.threads} thread(s): "
            f"{self.macs / 1e9:.2f} GMACs, {self.params / 1e6:.2f}M params",
            f"  onnxruntime  p50 {self.onnx.p50:8.2f} ms  p90 {self.onnx.p90:8.2f} ms  mean {self.onnx.mean:8.2f} ms",
        ]
        if self.torch is not None:
            t = self.torch
            lines.append(f"  pytorch      p50 {t.p50:8.2f} ms  p90 {t.p90:8.2f} ms  mean {t.mean:8.2f} ms")
        return "\n".join(lines)


def time_calls(call: Callable[[], Any], runs: int = 50, warmup: int = 10) -> Timing:
    """Time ``call`` ``runs`` times after ``warmup`` calls."""
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return Timing(
        p50=statistics.median(times),
        p90=float(np.percentile(times, 90)),
        mean=statistics.fmean(times),
        runs=runs,
        warmup=warmup,
    )


def _runner(s: Any, imgsz: int, what: str | Path = "the ONNX file") -> Callable[[], Any]:
    """One forward pass of session ``s`` (of the file ``what``) on a fixed random image batch of one."""
    inp = s.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz)).astype(dtype)
    return lambda: run_session(s, {inp.name: x}, what)


def onnx_latency(path: str | Path, imgsz: int, threads: int, runs: int = 50, warmup: int = 10) -> Timing:
    """onnxruntime CPU latency of an ONNX file on a random image batch of one."""
    return time_calls(_runner(session(path, threads, imgsz), imgsz, path), runs, warmup)


def torch_latency(net: torch.nn.Module, imgsz: int, threads: int, runs: int = 50, warmup: int = 10) -> Timing:
    """PyTorch CPU latency (eval mode, no autograd) with ``threads`` intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.rand(1, 3, imgsz, imgsz)
    try:
        with torch.inference_mode():
            return time_calls(lambda: net(x), runs, warmup)
    finally:
        torch.set_num_threads(previous)


def onnx_counts(path: str | Path) -> tuple[int, int]:
    """MACs and parameters of an ONNX file: from the metadata yoloprune writes, else from the graph itself."""
    meta = read_metadata(path)
    stated = [meta.get(key, "").strip() for key in ("macs", "params")]
    if all(v.isascii() and v.isdigit() and len(v) < 20 for v in stated):
        return int(stated[0]), int(stated[1])
    try:  # shapes only: external data (which may point anywhere) is never read here
        proto = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    except Exception as exc:  # onnx's DecodeError, ValidationError, InferenceError
        raise ValueError(f"{path}: onnx cannot infer its shapes ({type(exc).__name__})") from None
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.output})
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    macs = 0
    for node in proto.graph.node:
        out = shapes.get(node.output[0])
        weighted = len(node.input) > 1 and node.input[1] in weights
        if not out or node.op_type not in ("Conv", "Gemm", "MatMul") or not weighted:
            continue
        w = weights[node.input[1]]
        per_output = int(np.prod(w[1:])) if node.op_type == "Conv" else w[0] if node.op_type == "MatMul" else w[-1]
        macs += int(np.prod(out)) * per_output
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if len(t.dims) > 0)
    return macs, params


def bench(
    model: str | Path, imgsz: int = 640, threads: int | None = None, runs: int = 50, warmup: int = 10
) -> BenchResult:
    """Benchmark a checkpoint or config (exported to a temporary ONNX file first) or an ONNX file, with ``threads``
    (default: every core this process may use, as the command line)."""
    from yoloprune.adapters import load_model
    from yoloprune.images import check_imgsz
    from yoloprune.options import default_threads

    check_imgsz(imgsz)
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if Path(model).suffix == ".onnx":
        if not Path(model).is_file():
            raise FileNotFoundError(f"no such model: {model}")
        macs, params = onnx_counts(model)
        return BenchResult(str(model), imgsz, threads, macs, params, onnx_latency(model, imgsz, threads, runs, warmup))
    loaded = load_model(str(model))
    adapter, net, _ = family_hooks(loaded.model, loaded.family)
    x = torch.zeros(1, 3, imgsz, imgsz)
    macs, params = count_macs(net, x), count_params(net)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(net, path, imgsz=imgsz, family=loaded.family)
        ort_timing = onnx_latency(path, imgsz, threads, runs, warmup)
    deploy = adapter.export_module(net)
    return BenchResult(
        str(model), imgsz, threads, macs, params, ort_timing, torch_latency(deploy, imgsz, threads, runs, warmup)
    )


def module_latency(
    model: nn.Module, imgsz: int, threads: int, runs: int = 20, onnx_path: str | Path | None = None
) -> float:
    """p50 milliseconds of ``model`` exported to ONNX (verified; kept at ``onnx_path`` when given) and run by
    onnxruntime on this machine."""
    if onnx_path is not None:
        export_onnx(model, onnx_path, imgsz=imgsz)
        return onnx_latency(onnx_path, imgsz, threads, runs=runs, warmup=5).p50
    with tempfile.TemporaryDirectory() as tmp:
        return module_latency(model, imgsz, threads, runs, Path(tmp) / "probe.onnx")


def relative_latency(
    model: nn.Module, reference: str | Path, imgsz: int, threads: int, rounds: int = 4, runs: int = 8
) -> float:
    """``model``'s onnxruntime latency over that of the ONNX file ``reference``, ``model`` exported (verified) and
    both timed in ``rounds`` interleaved rounds of ``runs``: the median of the per-round ratios, so a drift in the
    machine's speed (10-25% between minutes with 2 threads on a 2-core machine, measured here) hits both alike."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, imgsz=imgsz)
        return statistics.median(ms / ref for ref, ms in interleaved([reference, path], imgsz, threads, rounds, runs))


def interleaved(
    paths: Sequence[str | Path], imgsz: int, threads: int, rounds: int = 4, runs: int = 8
) -> list[list[float]]:
    """p50 milliseconds of every ONNX file in each of ``rounds`` rounds, each timing the files in turn ``runs`` times
    (every session open throughout): a machine whose speed drifts between minutes moves a round's files alike."""
    runners = [_runner(session(p, threads, imgsz), imgsz, p) for p in paths]
    return [[time_calls(run, runs, warmup=2).p50 for run in runners] for _ in range(rounds)]


def side_by_side(paths: Sequence[str | Path], imgsz: int, threads: int, rounds: int = 4, runs: int = 8) -> list[float]:
    """Milliseconds of every ONNX file timed in turn with the others: the median over ``rounds`` interleaved rounds
    of its p50 over ``runs`` runs, so figures meant for one table come from one stretch of time."""
    timed = interleaved(paths, imgsz, threads, rounds, runs)
    return [statistics.median(r[i] for r in timed) for i in range(len(paths))]
