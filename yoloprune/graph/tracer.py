"""Trace one forward pass with a ``TorchFunctionMode`` and label every channel position it touches.

The trace runs on a copy of the model whose parameters live on the ``meta`` device, so it costs the same at any
input size and never changes the user's model. Models whose forward needs real values (``.item()``, data-dependent
control flow) are traced again on a real copy.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from yoloprune.graph.macs import COUNTERS, meta_args, op_macs
from yoloprune.graph.nest import map_tensors as _map_tensors
from yoloprune.graph.nest import tensors_in
from yoloprune.graph.records import Call, ConvCall, Member, OutputSelector, SplitRecord, Trace, TraceError
from yoloprune.graph.registry import Policy, policy_for
from yoloprune.graph.slots import Labels, Slots, spread, uniform


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are empty ``meta`` tensors (no weights are copied)."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        m = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
    return copy.deepcopy(model, memo)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def conv_call(args: tuple, kwargs: dict) -> ConvCall:
    """The geometry of a ``conv2d(input, weight, bias, stride, padding, dilation, groups)`` call."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    given = {**dict(zip(names, args)), **kwargs}
    x, weight = given["input"], given["weight"]
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    dilation = _pair(given.get("dilation", 1))
    padding = given.get("padding", 0)
    if isinstance(padding, str):  # "valid" or "same" (stride 1)
        padding = (0, 0) if padding == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return ConvCall(
        in_channels=int(x.shape[-3]),
        out_channels=int(weight.shape[0]),
        kernel=kernel,
        stride=_pair(given.get("stride", 1)),
        padding=_pair(padding),
        dilation=dilation,
        groups=int(given.get("groups", 1)),
        size=(int(x.shape[-2]), int(x.shape[-1])),
    )


class Tracer(TorchFunctionMode):
    """Labels every channel position of one forward pass; see ``yoloprune.graph.slots``."""

    def __init__(
        self,
        model: nn.Module,
        ignore: Sequence[str],
        policies: Mapping[Any, Policy] | None,
        meta: bool,
        frozen_io: Iterable[str] = (),
    ):
        super().__init__()
        self.frozen_io = set(frozen_io)
        self._keep: list[torch.Tensor] = []
        from yoloprune.graph.ops import HANDLERS, SKIP

        self.handlers = HANDLERS
        self.skip = SKIP
        self.model = model
        self.meta = meta
        self.slots = Slots()
        self.members: dict[tuple[str, int], Member] = {}
        self.splits: list[SplitRecord] = []
        self.table: dict[int, tuple[torch.Tensor, Labels]] = {}
        self.stack: list[str] = []
        self.ops = 0
        self.macs = 0
        self.weighted_macs: dict[str, int] = {}
        self.convs: dict[str, list[ConvCall]] = {}
        self.ignore = tuple(ignore)
        self.policies = policies
        self.names: dict[int, str] = {}
        self.aliases: dict[str, list[str]] = {}
        self.buffer_ids: set[int] = set()
        for name, t in model.named_parameters(remove_duplicate=False):
            self._name(t, name)
        for name, t in model.named_buffers(remove_duplicate=False):
            self._name(t, name)
            self.buffer_ids.add(id(t))
        self.module_of: dict[int, str] = {}
        self.classes: dict[str, type] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.module_of.setdefault(id(m), name)
            self.classes[name] = type(m)
        self._ignored: dict[str, bool] = {}

    def _name(self, t: torch.Tensor, name: str) -> None:
        canonical = self.names.setdefault(id(t), name)
        self.aliases.setdefault(canonical, [])
        if name not in self.aliases[canonical]:
            self.aliases[canonical].append(name)

    # ----------------------------------------------------------------------------------------------- context
    def where(self) -> str:
        """Qualified name of the innermost module being run ('' for the root)."""
        return self.stack[-1] if self.stack else ""

    def ignored(self, module: str) -> bool:
        """Whether ``module`` or one of its parents matches an ``ignore`` glob."""
        hit = self._ignored.get(module)
        if hit is None:
            parts = module.split(".") if module else []
            names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
            hit = any(fnmatch.fnmatchcase(n, pat) for n in names for pat in self.ignore)
            self._ignored[module] = hit
        return hit

    def policy(self, module: str) -> Policy | None:
        cls = self.classes.get(module)
        return policy_for(cls, self.policies) if cls is not None else None

    def describe(self, call: Call) -> str:
        module = self.where()
        cls = self.classes.get(module)
        where = f"{module or '<root>'} ({cls.__name__})" if cls is not None else (module or "<root>")
        return f"{call.name} in {where}"

    # ------------------------------------------------------------------------------------------------ labels
    def get(self, t: torch.Tensor) -> Labels:
        """Labels of a tensor; parameters, buffers and unseen tensors are labelled on first use."""
        entry = self.table.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        name = self.names.get(id(t))
        if name is not None:
            wide = [d for d, n in enumerate(t.shape) if n > 1]
            if len(wide) == 1:
                vec = self.member(t, wide[0], None, "channel")
                labels = spread(vec, t.ndim, wide[0])
            else:
                labels = uniform(t.ndim, self.slots.new_const(f"tensor {name} of shape {tuple(t.shape)}"))
        else:
            reason = f"constant of shape {tuple(t.shape)} in {self.where() or '<root>'}"
            labels = uniform(t.ndim, self.slots.new_const(reason))
        self.put(t, labels)
        return labels

    def put(self, t: torch.Tensor, labels: Labels) -> None:
        if labels.ndim != t.ndim:
            raise AssertionError(f"labels of rank {labels.ndim} for a tensor of rank {t.ndim}")
        self.table[id(t)] = (t, labels)

    def const(self, t: torch.Tensor, reason: str) -> Labels:
        labels = uniform(t.ndim, self.slots.new_const(reason))
        self.put(t, labels)
        return labels

    def freeze(self, labels: np.ndarray, reason: str) -> None:
        self.slots.freeze(labels, reason)

    def member(self, t: torch.Tensor, dim: int, labels: np.ndarray | None, role: str) -> np.ndarray:
        """Bind dimension ``dim`` of a model tensor to channel labels; returns the member's labels.

        ``labels`` None gives fresh slots on first use. A tensor bound twice (shared weights, a module called
        several times) has its labels joined.
        """
        name = self.names[id(t)]
        key = (name, dim)
        found = self.members.get(key)
        if found is None:
            vec = self.slots.new(t.shape[dim]) if labels is None else np.array(labels, dtype=np.int64).reshape(-1)
            module = name.rsplit(".", 1)[0] if "." in name else ""
            self.members[key] = Member(name, dim, vec, role, module, id(t) in self.buffer_ids)
            if labels is None and role == "out" and self.ignored(module):  # ignore keeps the channels it produces
                self.freeze(vec, f"module {module} is ignored")
            return vec
        if labels is not None:
            self.slots.union(found.labels, np.asarray(labels).reshape(-1))
        return found.labels

    def is_model_tensor(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.names

    # -------------------------------------------------------------------------------------- unhandled calls
    def unhandled(self, call: Call, reason: str | None = None) -> None:
        """An operation the tracer cannot map: its channels are frozen, and it is an error unless they are
        frozen anyway or the module is ignored."""
        inputs = tensors_in(call.args) + tensors_in(call.kwargs)
        touched = [self.get(t) for t in inputs]
        what = self.describe(call)
        message = reason or f"unsupported operation {what}"
        if touched:
            slots = np.concatenate([lab.reshape(-1) for lab in touched])
            if self.ignored(self.where()):
                self.freeze(slots, f"{message} (module ignored)")
            else:
                self.slots.error(slots, message)
        for t in tensors_in(call.out):
            self.const(t, f"result of {what}")

    # ---------------------------------------------------------------------------------------- torch function
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is self.skip:
            return func(*args, **kwargs)
        if self.meta:
            args, kwargs = self._meta_args(args, kwargs)
        out = func(*args, **kwargs)
        if handler is None and not tensors_in(out):
            return out
        self.ops += 1
        if func in COUNTERS:
            macs = op_macs(func, args, kwargs, out)
            self.macs += macs
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            name = self.names.get(id(weight)) if isinstance(weight, torch.Tensor) else None
            if name is not None:
                self.weighted_macs[name] = self.weighted_macs.get(name, 0) + macs
                if func is torch.nn.functional.conv2d:
                    self.convs.setdefault(name, []).append(conv_call(args, kwargs))
        call = Call(func, args, kwargs, out)
        if handler is None:
            self.unhandled(call)
        else:
            handler(self, call)
        return out

    def _meta_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return meta_args(args, kwargs, self._to_meta)

    def _to_meta(self, t: torch.Tensor) -> torch.Tensor:
        """A meta stand-in for a real tensor met during a meta trace, with the same identity and labels."""
        m = torch.empty_like(t, device="meta")
        self._keep.append(m)
        name = self.names.get(id(t))
        if name is not None:  # the same model tensor under another device
            self.names[id(m)] = name
            if id(t) in self.buffer_ids:
                self.buffer_ids.add(id(m))
            entry = self.table.get(id(t))
            if entry is not None and entry[0] is t:
                self.put(m, entry[1])
        else:
            self.put(m, self.get(t))
        return m

    # --------------------------------------------------------------------------------------------- running
    def run(self, inputs: Any, outputs: OutputSelector | None) -> None:
        hooks = []
        for name, m in self.model.named_modules():
            hooks.append(m.register_forward_pre_hook(self._enter(name)))
            hooks.append(m.register_forward_hook(self._leave(name), always_call=True))
        try:
            args, kwargs = _as_call_args(inputs)
            for t in tensors_in(args) + tensors_in(kwargs):
                self.const(t, "model input")
            with torch.no_grad(), self:
                out = self.model(*args, **kwargs)
            kept = out if outputs is None else outputs(out)
            for t in tensors_in(kept):
                entry = self.table.get(id(t))
                if entry is not None and entry[0] is t:
                    self.freeze(entry[1], "model output")
        finally:
            for h in hooks:
                h.remove()

    def _enter(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any) -> None:
            self._freeze_io(name, args, "input")
            self.stack.append(name)

        return hook

    def _leave(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            self._freeze_io(name, out, "output")

        return hook

    def _freeze_io(self, name: str, obj: Any, what: str) -> None:
        policy = self.policy(name)
        if (policy is not None and policy.frozen_io) or name in self.frozen_io:
            cls = self.classes[name].__name__
            for t in tensors_in(obj):
                self.freeze(self.get(t), f"{what} of {name} ({cls}), whose forward reads sizes from its inputs")


def _as_call_args(inputs: Any) -> tuple[tuple, dict]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, Iterable):
        return tuple(inputs), {}
    raise TypeError(f"example inputs must be a tensor, a tuple of tensors or a dict, not {type(inputs).__name__}")


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    outputs: OutputSelector | None = None,
    ignore: Sequence[str] = (),
    policies: Mapping[Any, Policy] | None = None,
    frozen_io: Iterable[str] = (),
) -> Trace:
    """Trace ``model`` on ``example_inputs`` (on the meta device where possible) without changing it."""
    errors = []
    for device in ("meta", "real"):
        try:
            copy_ = meta_copy(model) if device == "meta" else copy.deepcopy(model)
        except Exception as exc:
            errors.append(exc)
            continue
        copy_.eval()
        inputs = _map_tensors(example_inputs, lambda t: torch.empty_like(t, device="meta"))
        if device == "real":
            inputs = example_inputs
        tracer = Tracer(copy_, ignore, policies, meta=device == "meta", frozen_io=frozen_io)
        try:
            tracer.run(inputs, outputs)
        except Exception as exc:
            errors.append(exc)
            continue
        numels = {name: int(p.numel()) for name, p in copy_.named_parameters()}
        return Trace(
            tracer.slots,
            tracer.members,
            tracer.splits,
            tracer.aliases,
            tracer.ops,
            device,
            tracer.macs,
            tracer.weighted_macs,
            numels,
            tracer.convs,
        )
    raise TraceError(f"the model cannot run on the example inputs: {errors[-1]}") from errors[-1]
