"""How each torch operation moves channel labels (a dict from function object to handler).

Every handler receives the tracer and the call (with its real output, so shapes never need to be re-derived) and
states, position by position, which channels of its inputs and outputs are the same. Anything it cannot keep
consistent is frozen with a reason; operations missing from this table freeze what they touch and are reported as
errors unless those channels are frozen anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .slots import Labels, along, first, spread, uniform, vary_dim
from .tracer import Call, SplitRecord, Tracer, tensors_in

Handler = Callable[[Tracer, Call], None]
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


# --------------------------------------------------------------------------------------------------- unary
def unary(tr: Tracer, call: Call) -> None:
    """Element-wise on one tensor: every output position keeps its input's channel."""
    src = _first_tensor(call)
    labels = tr.get(src)
    for t in tensors_in(call.out):
        if t.shape == src.shape:
            tr.put(t, labels)
        else:
            tr.unhandled(call, f"{tr.describe(call)} changed the shape {tuple(src.shape)} -> {tuple(t.shape)}")


_UNARY = [
    "abs",
    "absolute",
    "neg",
    "negative",
    "exp",
    "exp2",
    "expm1",
    "log",
    "log2",
    "log10",
    "log1p",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "tanh",
    "asin",
    "acos",
    "atan",
    "erf",
    "erfc",
    "erfinv",
    "sign",
    "sgn",
    "floor",
    "ceil",
    "round",
    "trunc",
    "frac",
    "reciprocal",
    "square",
    "sigmoid",
    "logit",
    "relu",
    "relu6",
    "silu",
    "gelu",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "mish",
    "softplus",
    "softsign",
    "tanhshrink",
    "hardshrink",
    "softshrink",
    "logsigmoid",
    "rrelu",
    "threshold",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "clamp",
    "clip",
    "clamp_min",
    "clamp_max",
    "nan_to_num",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "cpu",
    "cuda",
    "requires_grad_",
    "zero",
    "fill",
    "normal",
    "uniform",
    "bernoulli",
    "positive",
    "bitwise_not",
    "logical_not",
    "isnan",
    "isinf",
    "isfinite",
    "signbit",
    "pin_memory",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand_like",
    "randn_like",
    "randint_like",
]
_register(unary, _lookup(_UNARY))
_register(
    unary,
    [
        _getter("data"),
        torch.Tensor.__neg__,
        torch.Tensor.__abs__,
        torch.Tensor.__invert__,
        torch.Tensor.__pos__ if hasattr(torch.Tensor, "__pos__") else None,
    ],
)


# ---------------------------------------------------------------------------------------------- elementwise
def broadcast(tr: Tracer, operands: list[torch.Tensor], shape: torch.Size, call: Call) -> Labels:
    """Join the channels of broadcast operands and return the result's labels.

    Operands that vary along the same dimension are joined position by position. A uniform operand the same size as
    the result along that dimension is joined with every channel; one broadcast across it (size 1) is frozen, since
    it is shared by all channels.
    """
    nd = len(shape)
    aligned = []
    for t in operands:
        lab = tr.get(t)
        if lab.ndim > nd:
            tr.unhandled(call)
            return uniform(nd, tr.slots.new_const(f"result of {tr.describe(call)}"))
        pad = (1,) * (nd - lab.ndim)
        aligned.append((pad + tuple(t.shape), lab.reshape(pad + lab.shape)))
    dims = {vary_dim(lab) for _, lab in aligned} - {None}
    if len(dims) > 1:
        reason = f"channels on different dimensions mixed by {tr.describe(call)}"
        for _, lab in aligned:
            tr.freeze(lab, reason)
        return uniform(nd, tr.slots.new_const(reason))
    if not dims:
        slots = [first(lab) for _, lab in aligned]
        for s in slots[1:]:
            tr.slots.union(np.array([slots[0]]), np.array([s]))
        return uniform(nd, slots[0]) if slots else uniform(nd, tr.slots.new_const("empty"))
    d = dims.pop()
    n = shape[d]
    base = next(lab for _, lab in aligned if vary_dim(lab) == d).reshape(-1)
    for tshape, lab in aligned:
        if vary_dim(lab) == d:
            tr.slots.union(lab.reshape(-1), base)
        elif tshape[d] == n:
            tr.slots.union(np.full(n, first(lab)), base)
        elif first(lab) not in tr.slots.const:
            tr.freeze(lab, f"broadcast across channels by {tr.describe(call)}")
    return spread(base, nd, d)


def elementwise(tr: Tracer, call: Call) -> None:
    """Element-wise on several broadcast tensors (add, mul, where, comparisons, in-place variants)."""
    outs = tensors_in(call.out)
    operands = tensors_in(call.args) + tensors_in(call.kwargs)
    if not outs:
        return
    labels = broadcast(tr, operands, outs[0].shape, call)
    for t in outs:
        if t.shape == outs[0].shape:
            tr.put(t, labels)
        else:
            tr.const(t, f"result of {tr.describe(call)}")


_BINARY = [
    "add",
    "sub",
    "subtract",
    "rsub",
    "mul",
    "multiply",
    "div",
    "divide",
    "true_divide",
    "floor_divide",
    "remainder",
    "fmod",
    "pow",
    "float_power",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
    "atan2",
    "arctan2",
    "hypot",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "greater",
    "greater_equal",
    "less",
    "less_equal",
    "not_equal",
    "logical_and",
    "logical_or",
    "logical_xor",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "where",
    "lerp",
    "addcmul",
    "addcdiv",
    "masked_fill",
    "copysign",
    "xlogy",
    "copy",
    "heaviside",
    "isclose",
]
_DUNDER = [
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "__div__",
    "__rdiv__",
    "__idiv__",
    "__floordiv__",
    "__rfloordiv__",
    "__ifloordiv__",
    "__mod__",
    "__rmod__",
    "__pow__",
    "__rpow__",
    "__ipow__",
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__and__",
    "__or__",
    "__xor__",
    "__rand__",
    "__ror__",
    "__rxor__",
    "__iand__",
    "__ior__",
    "__ixor__",
]
_register(elementwise, _lookup(_BINARY))
_register(elementwise, [getattr(torch.Tensor, n, None) for n in _DUNDER])


def minmax(tr: Tracer, call: Call) -> None:
    """``max``/``min``: element-wise with a second tensor, a reduction otherwise."""
    other = call.arg(1, "other")
    if isinstance(other, torch.Tensor):
        elementwise(tr, call)
    else:
        reduction(1, None, keeps_shape=False)(tr, call)


# ------------------------------------------------------------------------------------------ dense producers
def conv(spatial: int, transposed: bool) -> Handler:
    """Convolutions: the weight consumes the input's channels and produces new ones.

    Depthwise convolutions carry each input channel to its outputs; grouped ones join the same position of every
    group, so that every group always loses the same channels.
    """

    def handle(tr: Tracer, call: Call) -> None:
        x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
        groups = int(call.arg(6, "groups", 1))
        out = call.out
        cdim = x.ndim - spatial - 1
        lx = tr.get(x)
        cin = x.shape[cdim]
        vin = along(lx, cdim, cin)
        if vin is None:
            tr.freeze(lx, f"channels spread over spatial dimensions reach {tr.describe(call)}")
            vin = np.full(cin, tr.slots.new_const("spatially mixed input"))
        if not tr.is_model_tensor(w):
            _freeze_all(tr, call, "weight computed inside forward()")
            return
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        cout = out.shape[cdim]
        if groups == 1:
            tr.member(w, in_dim, vin, "in")
            vout = tr.member(w, out_dim, None, "out")
        elif groups == cin:  # depthwise: output j comes from input j // mult
            mult = cout // cin
            if transposed:
                vout = np.repeat(tr.member(w, 0, vin, "out"), mult)
            else:
                vout = tr.member(w, 0, np.repeat(vin, mult), "out")
        else:
            cin_g, cout_g = cin // groups, cout // groups
            grid = vin.reshape(groups, cin_g)
            tr.slots.union(grid, grid[:1])
            if transposed:
                tr.member(w, 0, vin, "in")
                vout = np.tile(tr.member(w, 1, None, "out"), groups)
            else:
                tr.member(w, 1, grid[0], "in")
                vout = tr.member(w, 0, None, "out")
                rows = vout.reshape(groups, cout_g)
                tr.slots.union(rows, rows[:1])
        if b is not None:
            if tr.is_model_tensor(b):
                tr.member(b, 0, vout, "out")
            else:
                tr.freeze(vout, f"bias computed inside forward() of {tr.describe(call)}")
        tr.put(out, spread(vout, out.ndim, cdim))

    return handle


_register(conv(1, False), [F.conv1d])
_register(conv(2, False), [F.conv2d])
_register(conv(3, False), [F.conv3d])
_register(conv(1, True), [F.conv_transpose1d])
_register(conv(2, True), [F.conv_transpose2d])
_register(conv(3, True), [F.conv_transpose3d])


def linear(tr: Tracer, call: Call) -> None:
    """``F.linear`` over the last dimension; after a flatten each channel owns several input features."""
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    lx = tr.get(x)
    n_in = x.shape[-1]
    vin = along(lx, x.ndim - 1, n_in)
    if vin is None:
        tr.freeze(lx, f"channels on another dimension reach {tr.describe(call)}")
        vin = np.full(n_in, tr.slots.new_const("mixed input"))
    if not tr.is_model_tensor(w):
        _freeze_all(tr, call, "weight computed inside forward()")
        return
    tr.member(w, 1, vin, "in")
    vout = tr.member(w, 0, None, "out")
    if b is not None:
        if tr.is_model_tensor(b):
            tr.member(b, 0, vout, "out")
        else:
            tr.freeze(vout, f"bias computed inside forward() of {tr.describe(call)}")
    tr.put(call.out, spread(vout, call.out.ndim, call.out.ndim - 1))


_register(linear, [F.linear])


# ---------------------------------------------------------------------------------------- per-channel norms
def _channel_vector(tr: Tracer, call: Call, x: torch.Tensor, cdim: int) -> np.ndarray | None:
    lab = tr.get(x)
    vec = along(lab, cdim, x.shape[cdim])
    if vec is None:
        _freeze_all(tr, call, "channels on a non-channel dimension normalised")
    return vec


def _bind_channel_params(tr: Tracer, call: Call, vec: np.ndarray, params: list[tuple[Any, str]]) -> None:
    for t, role in params:
        if t is None:
            continue
        if tr.is_model_tensor(t) and t.ndim == 1 and t.shape[0] == vec.size:
            tr.member(t, 0, vec, role)
        else:
            tr.freeze(vec, f"per-channel tensor computed inside forward() of {tr.describe(call)}")


def batch_norm(tr: Tracer, call: Call) -> None:
    """Batch and instance norm: statistics and affine parameters follow the channels (dim 1)."""
    x = call.arg(0, "input")
    cdim = 1 if x.ndim > 1 else 0
    vec = _channel_vector(tr, call, x, cdim)
    if vec is None:
        return
    params = [
        (call.arg(1, "running_mean"), "stat"),
        (call.arg(2, "running_var"), "stat"),
        (call.arg(3, "weight"), "channel"),
        (call.arg(4, "bias"), "channel"),
    ]
    _bind_channel_params(tr, call, vec, params)
    _put_all(tr, call, tr.get(x))


_register(batch_norm, [F.batch_norm, F.instance_norm])


def group_norm(tr: Tracer, call: Call) -> None:
    """Group norm: the same position of every group is one channel, so groups keep equal sizes."""
    x, groups = call.arg(0, "input"), int(call.arg(1, "num_groups"))
    vec = _channel_vector(tr, call, x, 1)
    if vec is None:
        return
    grid = vec.reshape(groups, -1)
    tr.slots.union(grid, grid[:1])
    _bind_channel_params(tr, call, vec, [(call.arg(2, "weight"), "channel"), (call.arg(3, "bias"), "channel")])
    _put_all(tr, call, tr.get(x))


_register(group_norm, [F.group_norm])


def layer_norm(tr: Tracer, call: Call) -> None:
    """Layer/RMS norm over the last dims: affine parameters follow channels on a normalised dimension."""
    x, shape = call.arg(0, "input"), call.arg(1, "normalized_shape")
    lab = tr.get(x)
    d = vary_dim(lab)
    first_norm = x.ndim - len(tuple(shape))
    if d is not None and d >= first_norm:
        weight = call.arg(2, "weight")
        bias = None if call.func is getattr(F, "rms_norm", None) else call.arg(3, "bias")
        if weight is None or len(tuple(shape)) != 1:
            _freeze_all(tr, call, "normalized_shape without affine parameters cannot follow pruned channels")
            return
        _bind_channel_params(tr, call, lab.reshape(-1), [(weight, "channel"), (bias, "channel")])
    _put_all(tr, call, lab)


_register(layer_norm, [F.layer_norm, getattr(F, "rms_norm", None)])


def prelu(tr: Tracer, call: Call) -> None:
    x, w = call.arg(0, "input"), call.arg(1, "weight")
    if w.numel() > 1:
        vec = _channel_vector(tr, call, x, 1 if x.ndim > 1 else 0)
        if vec is None:
            return
        _bind_channel_params(tr, call, vec, [(w, "channel")])
    _put_all(tr, call, tr.get(x))


_register(prelu, [F.prelu, torch.prelu])


# --------------------------------------------------------------------------------------- spatial operations
def spatial(tr: Tracer, call: Call) -> None:
    """Pooling and resampling: they act on the dims after (N, C) and keep channels apart."""
    x = _first_tensor(call)
    lab = tr.get(x)
    d = vary_dim(lab)
    if d is not None and d >= 2 and x.ndim > 2:
        _freeze_all(tr, call, "channels on a spatial dimension pooled")
        return
    _put_all(tr, call, lab)


_POOL = [
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool1d_with_indices",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "fractional_max_pool2d",
    "fractional_max_pool3d",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
]
_register(spatial, _lookup(_POOL, inplace=False))


def pad(tr: Tracer, call: Call) -> None:
    x, widths = call.arg(0, "input"), list(call.arg(1, "pad"))
    lab = tr.get(x)
    d = vary_dim(lab)
    for i in range(len(widths) // 2):
        if d == x.ndim - 1 - i and (widths[2 * i] or widths[2 * i + 1]):
            _freeze_all(tr, call, "channel dimension padded")
            return
    _put_all(tr, call, lab)


_register(pad, [F.pad])


def shuffle(tr: Tracer, call: Call) -> None:
    """Pixel/channel shuffles move channels into space: only uniform labels pass."""
    lab = tr.get(_first_tensor(call))
    if vary_dim(lab) is not None:
        _freeze_all(tr, call, "channels rearranged")
        return
    _put_all(tr, call, uniform(call.out.ndim, first(lab)))


_register(shuffle, _lookup(["pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle"]))


# ------------------------------------------------------------------------------------- reductions and scans
def _dims_arg(value: Any, ndim: int) -> set[int]:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return set(range(ndim))
    if isinstance(value, int):
        return {_dim(value, ndim)}
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return {_dim(v, ndim) for v in value}
    return set(range(ndim))


def reduction(index: int, default: Any, keeps_shape: bool) -> Handler:
    """Reductions and scans along ``dim`` (argument ``index``): only along a non-channel dimension."""

    def handle(tr: Tracer, call: Call) -> None:
        x = _first_tensor(call)
        lab = tr.get(x)
        d = vary_dim(lab)
        dims = _dims_arg(call.arg(index, "dim", default), x.ndim)
        if d is not None and d in dims:
            _freeze_all(tr, call, "reduced or normalised over channels")
            return
        for t in tensors_in(call.out):
            if t.ndim == x.ndim:
                tr.put(t, lab)
            elif d is None:
                tr.put(t, uniform(t.ndim, first(lab)))
            else:
                dropped = [i for i in sorted(dims) if i < x.ndim]
                kept = np.squeeze(lab, axis=tuple(dropped)) if t.ndim == x.ndim - len(dropped) else None
                if kept is None:
                    tr.unhandled(call)
                    return
                tr.put(t, kept)

    return handle


_register(
    reduction(1, None, False),
    _lookup(
        [
            "sum",
            "mean",
            "nansum",
            "nanmean",
            "amax",
            "amin",
            "prod",
            "std",
            "var",
            "logsumexp",
            "argmax",
            "argmin",
            "median",
            "nanmedian",
            "mode",
            "all",
            "any",
            "count_nonzero",
            "std_mean",
            "var_mean",
            "aminmax",
        ],
        inplace=False,
    ),
)
_register(minmax, [torch.max, torch.min, torch.Tensor.max, torch.Tensor.min])
_register(reduction(2, None, False), [torch.norm, torch.Tensor.norm])
_register(
    reduction(1, None, True),
    _lookup(
        [
            "softmax",
            "log_softmax",
            "softmin",
            "cumsum",
            "cumprod",
            "logcumsumexp",
            "cummax",
            "cummin",
        ],
        inplace=False,
    ),
)
_register(reduction(1, -1, True), _lookup(["sort", "argsort", "msort"], inplace=False))
_register(reduction(2, -1, True), _lookup(["topk", "kthvalue"], inplace=False))
_register(reduction(2, 1, True), [F.normalize])


def mixing(tr: Tracer, call: Call) -> None:
    """Products that contract or pair up positions (matmul, attention): their channels stay."""
    _freeze_all(tr, call, "channels mixed")


_register(
    mixing,
    _lookup(
        [
            "matmul",
            "mm",
            "bmm",
            "baddbmm",
            "addmm",
            "addbmm",
            "addmv",
            "mv",
            "dot",
            "vdot",
            "inner",
            "outer",
            "kron",
            "tensordot",
            "einsum",
            "cdist",
            "scaled_dot_product_attention",
            "multi_head_attention_forward",
            "embedding",
            "embedding_bag",
            "bilinear",
            "unfold",
            "fold",
            "local_response_norm",
            "cross",
            "cosine_similarity",
            "pairwise_distance",
            "meshgrid",
            "cartesian_prod",
            "grid_sample",
            "affine_grid",
        ],
        inplace=False,
    ),
)
_register(mixing, [torch.Tensor.__matmul__, torch.Tensor.__rmatmul__])


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


def factory(tr: Tracer, call: Call) -> None:
    """``Tensor.new_*``: the source tensor only gives dtype and device; the result is a constant."""
    for t in tensors_in(call.out):
        tr.const(t, f"constant created by {tr.describe(call)}")


_register(
    factory,
    [
        torch.Tensor.new_full,
        torch.Tensor.new_zeros,
        torch.Tensor.new_ones,
        torch.Tensor.new_empty,
        torch.Tensor.new_tensor,
        getattr(torch.Tensor, "new_empty_strided", None),
    ],
)

# ------------------------------------------------------------------------------- calls that move no channels
_register(
    SKIP,
    [
        torch.Tensor.dim,
        torch.Tensor.size,
        torch.Tensor.numel,
        torch.Tensor.__len__,
        torch.Tensor.is_floating_point,
        torch.Tensor.is_complex,
        torch.Tensor.is_contiguous,
        torch.Tensor.element_size,
        torch.Tensor.stride,
        torch.Tensor.data_ptr,
        torch.Tensor.get_device,
        torch.Tensor.__format__,
        torch.Tensor.__repr__,
        torch.Tensor.__hash__,
        _getter("shape"),
        _getter("dtype"),
        _getter("device"),
        _getter("ndim"),
        _getter("requires_grad"),
        _getter("is_cuda"),
        _getter("is_meta"),
        _getter("layout"),
        _getter("grad_fn"),
        _getter("is_leaf"),
        _getter("grad"),
        _getter("names"),
    ],
)
