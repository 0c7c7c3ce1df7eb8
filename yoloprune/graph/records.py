"""What a trace records: calls, channel-carrying parameter dimensions, splits, and the trace itself (the types the
tracer and the op handlers share)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.overrides import resolve_name

from yoloprune.graph.slots import Slots

OutputSelector = Callable[[Any], Any]


class TraceError(RuntimeError):
    """The model could not be traced, or the trace met an operation it cannot keep consistent."""


@dataclass
class Member:
    """One dimension of a parameter or buffer whose positions are channels.

    ``role`` is ``"out"`` for the output side of a producer (conv/linear weight rows and biases), ``"in"`` for the
    input side of a consumer, ``"channel"`` for per-channel scales, shifts and learned tensors, ``"stat"`` for
    running statistics.
    """

    name: str
    dim: int
    labels: np.ndarray
    role: str
    module: str
    is_buffer: bool

    @property
    def size(self) -> int:
        return int(self.labels.size)


@dataclass
class SplitRecord:
    """A split of channels into parts inside one module's forward, and how its parts may change."""

    module: str
    op: str
    parts: list[np.ndarray]
    mode: str  # "equal": every part loses the same count; "free": parts change independently


@dataclass
class Trace:
    """Everything one traced forward pass produced."""

    slots: Slots
    members: dict[tuple[str, int], Member]
    splits: list[SplitRecord]
    aliases: dict[str, list[str]]
    ops: int
    device: str
    macs: int
    weighted_macs: dict[str, int] = field(default_factory=dict)  # weight name -> MACs of the calls that used it
    numels: dict[str, int] = field(default_factory=dict)  # parameter name -> element count
    convs: dict[str, list[ConvCall]] = field(default_factory=dict)  # conv2d weight name -> its calls


@dataclass(frozen=True)
class ConvCall:
    """The geometry of one 2-d convolution call at full width: what a latency model needs to time it alone."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    size: tuple[int, int]  # input height and width


@dataclass
class Call:
    """One intercepted torch call."""

    func: Any
    args: tuple
    kwargs: dict
    out: Any

    @property
    def name(self) -> str:
        return op_name(self.func)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if index < len(self.args):
            return self.args[index]
        return default


def op_name(func: Any) -> str:
    """A readable name for a torch function or tensor method."""
    try:
        name = resolve_name(func)
    except Exception:
        name = None
    return name or getattr(func, "__qualname__", None) or repr(func)
