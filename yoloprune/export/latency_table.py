"""Time single convolutions with onnxruntime on this machine: the entries of a latency table.

Each convolution is built directly as a three-node ONNX graph (Conv, Sigmoid, Mul: the SiLU every YOLO family
exports) and timed alone with the given intra-op threads. Timings are cached in one JSON file per machine,
onnxruntime version and thread count, under ``$YOLOPRUNE_CACHE_DIR`` (default ``~/.cache/yoloprune``), so a table is
measured once per machine; a cache that does not parse as a table is ignored and measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from yoloprune.export.bench import time_calls
from yoloprune.export.onnx import session
from yoloprune.graph.records import ConvCall
from yoloprune.io import write_atomic

CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where latency tables are cached: ``$YOLOPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/yoloprune``, else
    ``~/.cache/yoloprune``."""
    if os.environ.get("YOLOPRUNE_CACHE_DIR"):
        return Path(os.environ["YOLOPRUNE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloprune"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(threads: int) -> str:
    """What a timing depends on besides the layer: CPU, core count, onnxruntime version, threads."""
    import onnxruntime

    return f"{_cpu_name()} | {os.cpu_count()} cores | onnxruntime {onnxruntime.__version__} | {threads} threads"


def conv_key(call: ConvCall) -> str:
    return ",".join(
        str(v)
        for v in (
            call.in_channels,
            call.out_channels,
            *call.kernel,
            *call.stride,
            *call.padding,
            *call.dilation,
            call.groups,
            *call.size,
        )
    )


def conv_onnx(call: ConvCall, opset: int = 17) -> bytes:
    """A one-convolution model (with SiLU) of this geometry, random weights, batch 1."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal(
        (call.out_channels, call.in_channels // call.groups, *call.kernel), dtype=np.float32
    ) * np.float32(0.01)
    bias = np.zeros(call.out_channels, dtype=np.float32)
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["y"],
        kernel_shape=list(call.kernel),
        strides=list(call.stride),
        pads=[*call.padding, *call.padding],
        dilations=list(call.dilation),
        group=call.groups,
    )
    graph = helper.make_graph(
        [conv, helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["y", "s"], ["z"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, call.in_channels, *call.size])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model.SerializeToString()


class ConvTimer:
    """``timer(call)``: p50 milliseconds of one convolution under onnxruntime with ``threads`` intra-op threads,
    from the cache when measured before (the first one it must time says so on stderr). ``save()`` writes new
    timings back."""

    def __init__(self, threads: int, runs: int = 7, warmup: int = 2, cache: Path | None = None) -> None:
        self.threads, self.runs, self.warmup = threads, runs, warmup
        self.key = machine_key(threads)
        name = hashlib.sha256(self.key.encode()).hexdigest()[:16]
        self.path = (cache or cache_dir()) / f"latency-{name}.json"
        self.entries = self._load()
        self.measured = 0

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        ok = (
            isinstance(data, dict)
            and data.get("version") == CACHE_VERSION
            and data.get("machine") == self.key
            and isinstance(data.get("convs"), dict)
            and all(isinstance(v, float) and v >= 0 for v in data["convs"].values())
        )
        return dict(data["convs"]) if ok else {}

    def __call__(self, call: ConvCall) -> float:
        key = conv_key(call)
        if key not in self.entries:
            if not self.measured:  # the first miss: say why the next seconds go by
                print(
                    f"timing convolutions alone with onnxruntime for the latency table ({self.threads} thread(s); "
                    f"cached in {self.path.parent})",
                    file=sys.stderr,
                    flush=True,
                )
            s = session(conv_onnx(call), self.threads)
            x = np.random.default_rng(0).random((1, call.in_channels, *call.size), dtype=np.float32)
            self.entries[key] = time_calls(lambda: s.run(None, {"x": x}), self.runs, self.warmup).p50
            self.measured += 1
        return self.entries[key]

    def save(self) -> Path | None:
        """Write the table back when anything new was measured (atomically; a failure to cache is not an error)."""
        if not self.measured:
            return None
        text = json.dumps({"version": CACHE_VERSION, "machine": self.key, "convs": self.entries}, indent=0)
        try:
            return write_atomic(self.path, lambda f: f.write(text.encode()), overwrite=True)
        except OSError:
            return None


__all__ = ["ConvTimer", "cache_dir", "conv_onnx", "machine_key"]
