"""Concatenation, splits, indexing, views and permutations: where channel index bugs usually live."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from yoloprune.graph.nest import tensors_in
from yoloprune.graph.ops.base import Handler, _dim, _dims_arg, _freeze_all, _getter, _lookup, _put_all, _register
from yoloprune.graph.ops.pointwise import broadcast
from yoloprune.graph.records import Call, SplitRecord
from yoloprune.graph.slots import Labels, along, first, spread, uniform, vary_dim

if TYPE_CHECKING:  # the tracer calls these handlers; they never import it at run time
    from yoloprune.graph.tracer import Tracer


# ---------------------------------------------------------------------------------- concatenation and splits
def cat(tr: Tracer, call: Call) -> None:
    """Concatenation: along the channel dimension it lays channels side by side; along another it joins them."""
    tensors = [t for t in call.arg(0, "tensors") if not (t.ndim == 1 and t.numel() == 0)]
    out = call.out
    dim = _dim(int(call.arg(1, "dim", 0)), out.ndim)
    labels = [tr.get(t) for t in tensors]
    vary = [vary_dim(lab) for lab in labels]
    if any(v == dim for v in vary):
        if any(v is not None and v != dim for v in vary):
            _freeze_all(tr, call, "channels on different dimensions concatenated")
            return
        vec = np.concatenate([along(lab, dim, t.shape[dim]) for lab, t in zip(labels, tensors)])
        tr.put(out, spread(vec, out.ndim, dim))
        return
    others = {v for v in vary if v is not None}
    if len(others) > 1:
        _freeze_all(tr, call, "channels on different dimensions concatenated")
        return
    if others:
        tr.put(out, broadcast(tr, tensors, (*out.shape[:dim], 1, *out.shape[dim + 1 :]), call))
        return
    slots = [first(lab) for lab in labels]
    if all(s in tr.slots.const for s in slots):
        tr.put(out, broadcast(tr, tensors, out.shape, call))
        return
    vec = np.concatenate([np.full(t.shape[dim], s) for s, t in zip(slots, tensors)])
    tr.put(out, spread(vec, out.ndim, dim))


_register(cat, [torch.cat, torch.concat, torch.concatenate])


def stack(tr: Tracer, call: Call) -> None:
    tensors = list(call.arg(0, "tensors"))
    out = call.out
    dim = _dim(int(call.arg(1, "dim", 0)), out.ndim)
    lab = broadcast(tr, tensors, tensors[0].shape, call)
    tr.put(out, np.expand_dims(lab, dim))


_register(stack, [torch.stack])


def split(kind: str) -> Handler:
    """split / chunk / tensor_split / unbind.

    Along the channel dimension: ``chunk`` parts must lose equal counts (recorded as a tie); sizes written in
    forward() (``split``) freeze the channels unless the module's policy says how its sizes follow.
    """

    def handle(tr: Tracer, call: Call) -> None:
        x = call.args[0]
        parts = tensors_in(call.out)
        dim = _dim(int(call.arg(1 if kind == "unbind" else 2, "dim", 0)), x.ndim)
        lab = tr.get(x)
        if vary_dim(lab) != dim:
            for p in parts:
                tr.put(p, lab if p.ndim == x.ndim else np.squeeze(lab, axis=dim))
            return
        vec = lab.reshape(-1)
        sizes = [1 if kind == "unbind" else p.shape[dim] for p in parts]
        segments, start = [], 0
        for size in sizes:
            segments.append(vec[start : start + size])
            start += size
        for p, seg in zip(parts, segments):
            tr.put(p, spread(seg, p.ndim, dim) if p.ndim == x.ndim else uniform(p.ndim, int(seg[0])))
        module = tr.where()
        where = tr.describe(call)
        equal = len(set(sizes)) == 1
        if kind == "unbind":
            tr.freeze(vec, f"channels unbound by {where}")
            return
        if kind == "chunk":
            if equal and len(parts) == int(call.arg(1, "chunks")):
                tr.splits.append(SplitRecord(module, call.name, segments, "equal"))
            else:
                tr.freeze(vec, f"chunk into unequal parts by {where}")
            return
        mode = getattr(tr.policy(module), "splits", None)
        if mode == "free" or (mode == "equal" and equal):
            tr.splits.append(SplitRecord(module, call.name, segments, mode))
            return
        tr.freeze(vec, f"channel split with sizes fixed in forward(): {where}; register a Policy for its class")

    return handle


_register(
    split("split"),
    [
        torch.split,
        torch.Tensor.split,
        torch.Tensor.split_with_sizes,
        torch.split_with_sizes if hasattr(torch, "split_with_sizes") else None,
    ],
)
_register(split("split"), [torch.tensor_split, torch.Tensor.tensor_split])
_register(split("chunk"), [torch.chunk, torch.Tensor.chunk])
_register(split("unbind"), [torch.unbind, torch.Tensor.unbind])


def _slice_frozen(n: int, start: int | None, stop: int | None) -> np.ndarray:
    """Positions that must stay so that a slice with fixed bounds still selects the same channels."""
    keep = np.zeros(n, dtype=bool)
    for bound in (start, stop):
        if bound is None:
            continue
        if bound >= 0:
            keep[: min(bound, n)] = True
        else:
            keep[max(n + bound, 0) :] = True
    return keep


def getitem(tr: Tracer, call: Call) -> None:
    """Basic indexing; a slice of channels with fixed bounds keeps the channels its bounds depend on."""
    x, index, out = call.args[0], call.args[1], call.out
    lab = tr.get(x)
    d = vary_dim(lab)
    index = index if isinstance(index, tuple) else (index,)
    advanced = any(isinstance(i, (torch.Tensor, list, np.ndarray, bool)) for i in index)
    if advanced:
        if d is None:
            tr.put(out, uniform(out.ndim, first(lab)))
        else:
            _freeze_all(tr, call, "channels picked by advanced indexing")
        return
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        index = index[:at] + (slice(None),) * (x.ndim - consumed) + index[at + 1 :]
    else:
        index = index + (slice(None),) * (x.ndim - consumed)
    safe, axis = [], 0
    for i in index:
        if i is None:
            safe.append(None)
            continue
        if axis == d:
            n = x.shape[axis]
            if isinstance(i, slice):
                picked = range(n)[i]
                if picked.step != 1 and len(picked) > 1:
                    _freeze_all(tr, call, "channels sliced with a step")
                    return
                tr.freeze(lab.reshape(-1)[_slice_frozen(n, i.start, i.stop)], f"channel slice in {tr.describe(call)}")
            else:
                i = int(i)
                tr.freeze(
                    lab.reshape(-1)[_slice_frozen(n, None, i + 1 if i >= 0 else i)],
                    f"channel index in {tr.describe(call)}",
                )
            safe.append(i)
        else:
            safe.append(slice(None) if isinstance(i, slice) else 0)
        axis += 1
    result = lab[tuple(safe)]
    if result.ndim != out.ndim:
        tr.unhandled(call)
        return
    tr.put(out, result)


_register(getitem, [torch.Tensor.__getitem__])


def setitem(tr: Tracer, call: Call) -> None:
    """In-place writes into part of a tensor: both sides keep their channels."""
    x = call.args[0]
    for t in tensors_in(call.args):
        lab = tr.get(t)
        if vary_dim(lab) is not None:
            tr.freeze(lab, f"written in place by {tr.describe(call)}")
    tr.get(x)


_register(setitem, [torch.Tensor.__setitem__])


def narrow(tr: Tracer, call: Call) -> None:
    x = call.args[0]
    dim, start, length = _dim(int(call.arg(1, "dim")), x.ndim), int(call.arg(2, "start")), int(call.arg(3, "length"))
    lab = tr.get(x)
    if vary_dim(lab) == dim:
        vec = lab.reshape(-1)
        tr.freeze(vec[_slice_frozen(vec.size, start, start + length)], f"channels narrowed by {tr.describe(call)}")
        tr.put(call.out, spread(vec[start : start + length], x.ndim, dim))
    else:
        tr.put(call.out, lab)


_register(narrow, [torch.narrow, torch.Tensor.narrow])


def select(tr: Tracer, call: Call) -> None:
    x = call.args[0]
    dim, i = _dim(int(call.arg(1, "dim")), x.ndim), int(call.arg(2, "index"))
    lab = tr.get(x)
    if vary_dim(lab) == dim:
        vec = lab.reshape(-1)
        frozen = _slice_frozen(vec.size, None, i + 1 if i >= 0 else i)
        tr.freeze(vec[frozen], f"channel selected by {tr.describe(call)}")
        tr.put(call.out, uniform(call.out.ndim, int(vec[i])))
    else:
        tr.put(call.out, np.squeeze(lab, axis=dim))


_register(select, [torch.select, torch.Tensor.select])


def index_select(tr: Tracer, call: Call) -> None:
    x = call.args[0]
    dim = _dim(int(call.arg(1, "dim")), x.ndim)
    lab = tr.get(x)
    if vary_dim(lab) == dim:
        _freeze_all(tr, call, "channels picked by index")
        return
    tr.put(call.out, lab)


_register(index_select, [torch.index_select, torch.Tensor.index_select])


# ----------------------------------------------------------------------------------------- views and shapes
def _blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape a -> b into the smallest runs of dims whose sizes multiply to the same number."""
    blocks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ins, outs, pa, pb = [], [], 1, 1
        if i < len(a):
            ins.append(i)
            pa = a[i]
            i += 1
        if j < len(b):
            outs.append(j)
            pb = b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                ins.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                outs.append(j)
                pb *= b[j]
                j += 1
            else:
                return None
        blocks.append((ins, outs))
    return blocks


def reshape_labels(lab: Labels, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Labels | None:
    """Labels after a reshape; None when the channels end up spread over several dims (e.g. attention heads)."""
    d = vary_dim(lab)
    if d is None:
        return uniform(len(out_shape), first(lab))
    if 0 in in_shape:
        return None
    blocks = _blocks(tuple(in_shape), tuple(out_shape))
    if blocks is None:
        return None
    ins, outs = next((i, o) for i, o in blocks if d in i)
    if not outs:
        return None
    sizes_in = [in_shape[i] for i in ins]
    if int(np.prod(sizes_in)) > 50_000_000:
        return None
    vec = lab.reshape(-1)
    block = np.broadcast_to(vec.reshape([in_shape[i] if i == d else 1 for i in ins]), sizes_in)
    block = block.reshape([out_shape[j] for j in outs])
    moving = [k for k in range(block.ndim) if block.shape[k] > 1 and not (block == block.take([0], axis=k)).all()]
    if not moving:
        return uniform(len(out_shape), int(vec[0]))
    if len(moving) > 1:
        return None
    k = moving[0]
    line = block[tuple(slice(None) if a == k else 0 for a in range(block.ndim))]
    return spread(np.ascontiguousarray(line), len(out_shape), outs[k])


def reshape(tr: Tracer, call: Call) -> None:
    """view / reshape / flatten / unflatten / squeeze / unsqueeze: follow the channels through the new shape."""
    x = call.args[0]
    lab = tr.get(x)
    for t in tensors_in(call.out):
        result = reshape_labels(lab, tuple(x.shape), tuple(t.shape))
        if result is None:
            tr.freeze(lab, f"channels split across dimensions by {tr.describe(call)} (e.g. attention heads)")
            tr.const(t, f"result of {tr.describe(call)}")
        else:
            tr.put(t, result)


_register(
    reshape,
    _lookup(["view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"]),
)


def permute(tr: Tracer, call: Call) -> None:
    """Dimension permutations: replay the call on a meta probe whose sizes name the dims."""
    x = call.args[0]
    lab = tr.get(x)
    probe = torch.empty([1000 + i for i in range(x.ndim)], device="meta")
    moved = call.func(probe, *call.args[1:], **call.kwargs)
    order = [s - 1000 for s in moved.shape]
    tr.put(call.out, np.transpose(lab, order))


_register(permute, _lookup(["permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis", "adjoint"]))
_register(permute, [_getter("T"), _getter("mT"), _getter("H"), _getter("mH")])


def expand(tr: Tracer, call: Call) -> None:
    """expand / broadcast_to / repeat / tile: copies of one channel across a dimension freeze that channel."""
    x, out = call.args[0], call.out
    lab = tr.get(x)
    pad = (1,) * (out.ndim - x.ndim)
    shape = pad + tuple(x.shape)
    lab = lab.reshape(pad + lab.shape)
    d = vary_dim(lab)
    for k, (before, after) in enumerate(zip(shape, out.shape)):
        if after == before or after == 0:
            continue
        if k == d:
            lab = np.tile(lab, [after // before if a == k else 1 for a in range(lab.ndim)])
        elif d is None and first(lab) not in tr.slots.const:
            tr.freeze(lab, f"one channel copied along a dimension by {tr.describe(call)}")
    tr.put(out, lab)


_register(expand, _lookup(["expand", "expand_as", "broadcast_to", "repeat", "tile"]))


def repeat_interleave(tr: Tracer, call: Call) -> None:
    x, repeats, dim = call.args[0], call.arg(1, "repeats"), call.arg(2, "dim")
    lab = tr.get(x)
    d = vary_dim(lab)
    if d is None:
        _put_all(tr, call, uniform(call.out.ndim, first(lab)))
    elif dim is None or isinstance(repeats, torch.Tensor):
        _freeze_all(tr, call, "channels repeated")
    else:
        dim = _dim(int(dim), x.ndim)
        tr.put(call.out, np.repeat(lab, int(repeats), axis=dim) if dim == d else lab)


_register(repeat_interleave, [torch.repeat_interleave, torch.Tensor.repeat_interleave])


def flip(tr: Tracer, call: Call) -> None:
    x = call.args[0]
    lab = tr.get(x)
    dims = _dims_arg(call.arg(1, "dims"), x.ndim)
    d = vary_dim(lab)
    tr.put(call.out, np.flip(lab, axis=d).copy() if d in dims else lab)


_register(flip, [torch.flip, torch.Tensor.flip])


def roll(tr: Tracer, call: Call) -> None:
    x = call.args[0]
    lab = tr.get(x)
    d = vary_dim(lab)
    dims = call.arg(2, "dims")
    if d is not None and (dims is None or d in _dims_arg(dims, x.ndim)):
        _freeze_all(tr, call, "channels rolled")
        return
    tr.put(call.out, lab)


_register(roll, [torch.roll, torch.Tensor.roll])
