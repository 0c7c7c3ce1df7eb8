"""Element-wise operations, reductions and scans, channel-mixing products, constants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from yoloprune.graph.nest import tensors_in
from yoloprune.graph.ops.base import SKIP, Handler, _dims_arg, _first_tensor, _freeze_all, _getter, _lookup, _register
from yoloprune.graph.records import Call
from yoloprune.graph.slots import Labels, first, spread, uniform, vary_dim

if TYPE_CHECKING:  # the tracer calls these handlers; they never import it at run time
    from yoloprune.graph.tracer import Tracer


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


_UNARY = """
    abs absolute neg negative exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sin cos tan sinh cosh tanh
    asin acos atan erf erfc erfinv sign sgn floor ceil round trunc frac reciprocal square sigmoid logit
    relu relu6 silu gelu elu selu celu leaky_relu hardswish hardsigmoid hardtanh mish softplus softsign
    tanhshrink hardshrink softshrink logsigmoid rrelu threshold dropout dropout1d dropout2d dropout3d
    alpha_dropout feature_alpha_dropout clamp clip clamp_min clamp_max nan_to_num contiguous clone
    detach float half double bfloat16 to type type_as cpu cuda requires_grad_ zero fill normal uniform
    bernoulli positive bitwise_not logical_not isnan isinf isfinite signbit pin_memory zeros_like
    ones_like empty_like full_like rand_like randn_like randint_like
""".split()
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


_BINARY = """
    add sub subtract rsub mul multiply div divide true_divide floor_divide remainder fmod pow
    float_power maximum minimum fmax fmin atan2 arctan2 hypot eq ne lt le gt ge greater greater_equal
    less less_equal not_equal logical_and logical_or logical_xor bitwise_and bitwise_or bitwise_xor
    where lerp addcmul addcdiv masked_fill copysign xlogy copy heaviside isclose
""".split()
_DUNDER = """
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__
    __rtruediv__ __itruediv__ __div__ __rdiv__ __idiv__ __floordiv__ __rfloordiv__ __ifloordiv__ __mod__
    __rmod__ __pow__ __rpow__ __ipow__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __and__ __or__ __xor__
    __rand__ __ror__ __rxor__ __iand__ __ior__ __ixor__
""".split()
_register(elementwise, _lookup(_BINARY))
_register(elementwise, [getattr(torch.Tensor, n, None) for n in _DUNDER])


def minmax(tr: Tracer, call: Call) -> None:
    """``max``/``min``: element-wise with a second tensor, a reduction otherwise."""
    other = call.arg(1, "other")
    if isinstance(other, torch.Tensor):
        elementwise(tr, call)
    else:
        reduction(1, None, keeps_shape=False)(tr, call)


# ------------------------------------------------------------------------------------- reductions and scans
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
        """
    sum mean nansum nanmean amax amin prod std var logsumexp argmax argmin median nanmedian mode all any
    count_nonzero std_mean var_mean aminmax
""".split(),
        inplace=False,
    ),
)
_register(minmax, [torch.max, torch.min, torch.Tensor.max, torch.Tensor.min])
_register(reduction(2, None, False), [torch.norm, torch.Tensor.norm])
_register(
    reduction(1, None, True),
    _lookup(
        ["softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp", "cummax", "cummin"],
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
        """
    matmul mm bmm baddbmm addmm addbmm addmv mv dot vdot inner outer kron tensordot einsum cdist
    scaled_dot_product_attention multi_head_attention_forward embedding embedding_bag bilinear unfold
    fold local_response_norm cross cosine_similarity pairwise_distance meshgrid cartesian_prod
    grid_sample affine_grid
""".split(),
        inplace=False,
    ),
)
_register(mixing, [torch.Tensor.__matmul__, torch.Tensor.__rmatmul__])


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
