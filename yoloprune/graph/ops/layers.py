"""Layers with parameters (convolutions, linear, norms) and spatial operations (pooling, resampling, padding)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from yoloprune.graph.ops.base import Handler, _first_tensor, _freeze_all, _lookup, _put_all, _register
from yoloprune.graph.records import Call
from yoloprune.graph.slots import along, first, spread, uniform, vary_dim

if TYPE_CHECKING:  # the tracer calls these handlers; they never import it at run time
    from yoloprune.graph.tracer import Tracer


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


_POOL = """
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices
    max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
    adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices
    lp_pool1d lp_pool2d lp_pool3d fractional_max_pool2d fractional_max_pool3d interpolate upsample
    upsample_nearest upsample_bilinear
""".split()
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
