"""Handler table and helpers shared by the op modules."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from yoloprune.graph.nest import tensors_in
from yoloprune.graph.records import Call
from yoloprune.graph.slots import Labels

if TYPE_CHECKING:  # the tracer calls these handlers; they never import it at run time
    from yoloprune.graph.tracer import Tracer

Handler = Callable[["Tracer", Call], None]
HANDLERS: dict[Any, Handler | object] = {}
SKIP = object()

_NAMESPACES = (torch, torch.Tensor, F, torch.special)


def _lookup(names: Iterable[str], inplace: bool = True) -> list[Any]:
    found = []
    for name in names:
        for space in _NAMESPACES:
            for variant in (name, name + "_") if inplace else (name,):
                obj = getattr(space, variant, None)
                if callable(obj) and not isinstance(obj, type):
                    found.append(obj)
    return found


def _register(handler: Handler | object, funcs: Iterable[Any]) -> None:
    for f in funcs:
        if f is not None and getattr(f, "__hash__", None) is not None:
            HANDLERS[f] = handler


def _getter(name: str) -> Any:
    found = getattr(torch.Tensor, name, None)
    return getattr(found, "__get__", None)


def _first_tensor(call: Call) -> torch.Tensor:
    for t in tensors_in(call.args) + tensors_in(call.kwargs):
        return t
    raise AssertionError(f"{call.name} has no tensor argument")


def _put_all(tr: Tracer, call: Call, labels: Labels) -> None:
    for t in tensors_in(call.out):
        if t.ndim == labels.ndim:
            tr.put(t, labels)
        else:
            tr.const(t, f"result of {tr.describe(call)}")


def _freeze_all(tr: Tracer, call: Call, reason: str) -> None:
    """Freeze every input's channels and make every output a frozen constant."""
    what = f"{reason} by {tr.describe(call)}"
    for t in tensors_in(call.args) + tensors_in(call.kwargs):
        tr.freeze(tr.get(t), what)
    for t in tensors_in(call.out):
        tr.const(t, what)


def _dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _dims_arg(value: Any, ndim: int) -> set[int]:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return set(range(ndim))
    if isinstance(value, int):
        return {_dim(value, ndim)}
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return {_dim(v, ndim) for v in value}
    return set(range(ndim))
