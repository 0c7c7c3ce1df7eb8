"""Calibrated pruning: after channels are removed, repair what they did, from a folder of unlabelled images.

Two repairs, both leaving the architecture stock (only existing weights and statistics change):

- ``reconstruct``: every dense convolution whose input lost channels gets new weights that make its
  output match the original model's on the calibration images, by least squares over sampled output positions
  (the channel-pruning reconstruction of He et al., 2017). Layers are visited in the order the forward pass reaches
  them, and each is fitted to the *pruned* network's own inputs, so later layers also correct earlier layers' error.
  A ridge term, chosen on held-out samples, pulls the solution toward the pruned weights, and a refit that does not
  predict the held-out samples better is not kept.
- ``recalibrate_norms``: batch-norm running statistics are re-estimated on the images (the pruned network's
  activations no longer have the statistics the original learned).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from yoloprune.images import Preprocess, letterbox, list_images, read_image, to_tensor


@dataclass
class Calibration:
    """What calibration did: layers refitted, their mean relative output error before and after, seconds."""

    layers: int = 0
    error_before: float = 0.0
    error_after: float = 0.0
    norms: int = 0
    images: int = 0
    seconds: float = 0.0
    output_before: float | None = None
    output_after: float | None = None

    def __str__(self) -> str:
        text = (
            f"calibrated on {self.images} images in {self.seconds:.1f} s: {self.layers} layers refitted (held-out "
            f"relative error {self.error_before:.3f} -> {self.error_after:.3f}), {self.norms} norm layers re-estimated"
        )
        if self.output_before is not None:
            text += f"; output error vs the original {self.output_before:.3f} -> {self.output_after:.3f}"
        return text


def calibration_batches(
    folder: str | Path, imgsz: int, spec: Preprocess | None = None, images: int = 64, batch: int = 8
) -> list[torch.Tensor]:
    """Up to ``images`` letterboxed images of a folder (sorted by name), in batches."""
    paths = calibration_images(folder)[:images]
    if not paths:
        raise ValueError(f"--calib {folder}: no images there")
    return image_batches(paths, imgsz, spec, batch)


def calibration_images(folder: str | Path) -> list[Path]:
    """The images of a calibration folder, sorted by name (an error names the folder)."""
    try:
        return list_images(folder)
    except (ValueError, OSError) as exc:
        raise ValueError(f"--calib {folder}: {exc}") from None


def image_batches(
    paths: Sequence[Path], imgsz: int, spec: Preprocess | None = None, batch: int = 8
) -> list[torch.Tensor]:
    """``paths`` read and letterboxed to ``imgsz`` as the model's preprocessing ``spec`` says, in batches."""
    spec = spec or Preprocess()
    tensors = [to_tensor(letterbox(read_image(p), imgsz, spec.fill)[0], spec) for p in paths]
    return [torch.cat(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]


def refittable(module: nn.Module) -> bool:
    """Dense 2-D convolutions (every YOLO family's consumers); grouped and depthwise ones carry channels through."""
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def _order(model: nn.Module, batch: torch.Tensor) -> list[str]:
    """Names of refittable layers in the order the forward pass first reaches them."""
    seen: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _i, name=name: seen.append(name) if name not in seen else None)
        for name, m in model.named_modules()
        if refittable(m)
    ]
    try:
        with torch.no_grad():
            model(batch[:1])
    finally:
        for h in hooks:
            h.remove()
    return seen


def sample_positions(shape: torch.Size, count: int, seed: int) -> torch.Tensor:
    """``count`` output positions (flat indices over batch and space) drawn with ``seed``: the same for the original
    and the pruned layer, whose outputs have the same shape."""
    total = int(shape[0]) * (int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:count]


def patches(layer: nn.Module, x: torch.Tensor, out_shape: torch.Size, where: torch.Tensor) -> torch.Tensor:
    """The layer's input rows at output positions ``where``: (positions, in_features), in the weight's layout, without
    unfolding whole feature maps."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    oh, ow = int(out_shape[2]), int(out_shape[3])
    b, rest = where // (oh * ow), where % (oh * ow)
    top, left = (rest // ow) * sh, (rest % ow) * sw
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = torch.arange(kh) * dh
    cols = torch.arange(kw) * dw
    h = (top[:, None, None] + rows[None, :, None]).expand(-1, kh, kw)
    w = (left[:, None, None] + cols[None, None, :]).expand(-1, kh, kw)
    picked = padded[b[:, None, None], :, h, w]  # (N, kh, kw, C)
    return picked.permute(0, 3, 1, 2).reshape(len(where), -1)


def _targets(y: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The original layer's output at positions ``where``: (positions, out_features)."""
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])[where]


class _Reached(Exception):
    """Stops a forward pass once the layer being refitted has been seen (nothing after it is needed)."""


def _inputs(model: nn.Module, name: str, batches: Sequence[torch.Tensor], count: int, seed: int) -> list:
    """Per batch, the sampled input rows of module ``name`` at its first call (the forward stops there)."""
    module = model.get_submodule(name)
    got: list[torch.Tensor] = []

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        where = sample_positions(out.shape, count, seed + len(got))
        got.append(patches(m, args[0].detach().float(), out.shape, where))
        raise _Reached

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                with contextlib.suppress(_Reached):
                    model(batch)
    finally:
        handle.remove()
    return got


OnCall = Callable[[str, int, nn.Module, tuple, torch.Tensor], None]


def first_calls(model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor], on_call: OnCall) -> None:
    """Run ``model`` on every batch (no gradients) and call ``on_call(name, batch_index, module, args, output)`` at the
    first call of each module of ``names`` in each pass (a module called twice in one forward is refitted for its
    first call)."""
    seen: set[tuple[str, int]] = set()
    index = [0]

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if (name, index[0]) not in seen:
                seen.add((name, index[0]))
                on_call(name, index[0], module, args, out)

        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in names]
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                index[0] = i
                model(batch)
    finally:
        for handle in handles:
            handle.remove()


def _outputs(model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor], count: int, seed: int) -> dict:
    """Per module of ``names`` and per batch, the sampled output rows at its first call: one pass per batch."""
    got: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def keep(name: str, i: int, _m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        got[name].append(_targets(out.float(), sample_positions(out.shape, count, seed + i)))

    first_calls(model, names, batches, keep)
    return got


RIDGES = (1e-3, 1e-2, 1e-1, 1.0)
"""Ridge strengths tried, relative to the mean diagonal of the input Gram matrix; the one with the least error on
held-out samples is used."""


def _solve(gram: torch.Tensor, cross: torch.Tensor, w0: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_W ||P W^T - Y||^2 + lam ||W - w0||^2 from P^T P and P^T Y."""
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + lam * eye, cross + lam * w0.T).T


def _error(p: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    return float((p @ w.T - y).norm() / y.norm().clamp_min(1e-12))


def _refit(
    layer: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor], seed: int, norm: nn.Module | None = None
) -> tuple[float, float]:
    """Least-squares weights and offset for ``layer`` from sampled pruned inputs and original outputs, pulled toward
    the current weights by a ridge chosen on a fifth of the samples held out; kept only when they predict the
    held-out samples better than the current weights. The offset (what removed channels contributed on average) goes
    into the layer's bias, or, for a layer without one, into the running mean of the batch norm ``norm`` that reads
    its output. Returns the held-out relative error before and after."""
    p, y = torch.cat(xs).double(), torch.cat(ys).double()
    bias = layer.bias is not None or norm is not None
    w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    if bias:
        p = torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], 1)
        b0 = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w0.shape[0], dtype=w0.dtype)
        w0 = torch.cat([w0, b0[:, None]], 1)
    order = torch.randperm(p.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = max(1, p.shape[0] // 5)
    held, fit = order[:cut], order[cut:]
    gram, cross = p[fit].T @ p[fit], p[fit].T @ y[fit]
    before = _error(p[held], y[held], w0)
    after, ridge = min((_error(p[held], y[held], _solve(gram, cross, w0, r)), r) for r in RIDGES)
    if not after < before:
        return before, before
    solution = _solve(p.T @ p, p.T @ y, w0, ridge)
    if not torch.isfinite(solution).all():
        return before, before
    with torch.no_grad():
        columns = w0.shape[1] - (1 if bias else 0)
        layer.weight.copy_(solution[:, :columns].reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(solution[:, -1].to(layer.bias.dtype))
        elif norm is not None:  # norm(y + b) with mean m equals norm(y) with mean m - b
            norm.running_mean.sub_(solution[:, -1].to(norm.running_mean.dtype))
    return before, after


def following_norms(model: nn.Module, batch: torch.Tensor, names: Sequence[str]) -> dict[str, nn.Module]:
    """For each layer of ``names`` without a bias, the batch norm (with running statistics) that reads its output
    directly, found by watching one forward pass."""
    produced: dict[int, str] = {}
    found: dict[str, nn.Module] = {}

    def remember(name: str) -> Callable:
        return lambda _m, _args, out: produced.__setitem__(id(out), name)

    def check(norm: nn.Module, args: tuple) -> None:
        name = produced.get(id(args[0])) if args else None
        if name is not None and norm.running_mean is not None:
            found.setdefault(name, norm)

    wanted = [n for n in names if model.get_submodule(n).bias is None]
    handles = [model.get_submodule(n).register_forward_hook(remember(n)) for n in wanted]
    handles += [
        m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with torch.no_grad():
            model(batch[:1])
    finally:
        for h in handles:
            h.remove()
    return found


def reconstruct(
    pruned: nn.Module,
    original: nn.Module,
    batches: Sequence[torch.Tensor],
    removed: dict[str, list[int]] | None = None,
    *,
    samples: int = 8192,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Refit, in forward order, every refittable layer of ``pruned`` whose input lost channels (compared with the
    layer of the same name in ``original``) so that its output matches the original's on ``batches``. ``removed``
    (the pruning plan's, by module name) says which output channels a layer lost itself: its targets are the
    original outputs of the channels it kept."""
    start = time.perf_counter()
    result = Calibration(images=sum(int(b.shape[0]) for b in batches))
    modes = pruned.training, original.training
    pruned.eval(), original.eval()
    try:
        names = [
            name
            for name in _order(pruned, batches[0])
            if pruned.get_submodule(name).weight.shape[1:] != original.get_submodule(name).weight.shape[1:]
        ]  # a layer whose inputs are all there computes what the original computes
        count = max(1, samples // len(batches))
        targets = _outputs(original, names, batches, count, seed)
        norms = following_norms(pruned, batches[0], names)
        errors: list[tuple[float, float]] = []

        def refit(name: str, xs: list[torch.Tensor]) -> None:
            layer, reference = pruned.get_submodule(name), original.get_submodule(name)
            kept = _kept(reference.weight.shape[0], (removed or {}).get(name, ()))
            before, after = _refit(layer, xs, [y[:, kept] for y in targets[name]], seed, norms.get(name))
            errors.append((before, after))
            if progress:
                progress(f"refit {name}: relative error {before:.3f} -> {after:.3f}")

        wanted = [name for name in names if _refittable_as_planned(pruned, original, name, removed, targets, batches)]
        if _fits_in_one_pass(pruned, batches):
            _refit_in_one_pass(pruned, wanted, batches, count, seed, refit)
        else:  # each layer's inputs from a pass that stops at it (memory: one batch at a time)
            for name in wanted:
                refit(name, _inputs(pruned, name, batches, count, seed))
        result.layers = len(errors)
        if errors:
            result.error_before = sum(e[0] for e in errors) / len(errors)
            result.error_after = sum(e[1] for e in errors) / len(errors)
    finally:
        pruned.train(modes[0]), original.train(modes[1])
    result.seconds = time.perf_counter() - start
    return result


def _refittable_as_planned(
    pruned: nn.Module,
    original: nn.Module,
    name: str,
    removed: dict[str, list[int]] | None,
    targets: dict[str, list[torch.Tensor]],
    batches: Sequence[torch.Tensor],
) -> bool:
    """Whether the plan says which outputs layer ``name`` kept and the original reached it on every batch."""
    kept = _kept(original.get_submodule(name).weight.shape[0], (removed or {}).get(name, ()))
    return len(kept) == pruned.get_submodule(name).weight.shape[0] and len(targets[name]) == len(batches)


ONE_PASS_BYTES = 6 << 30
"""The most memory one forward pass over every calibration image may take (estimated from one image's): above it,
or above half the memory available now, layers are refitted from passes of one batch each, stopping at the layer."""


def _fits_in_one_pass(model: nn.Module, batches: Sequence[torch.Tensor]) -> bool:
    """Whether a forward pass over all ``batches`` at once stays within ``ONE_PASS_BYTES``. A pass holds a few feature
    maps at once: measured peaks (yolov8s at 320, 64 and 128 images: 10 MiB an image) stay under four times the
    largest one plus the input, the estimate used here."""
    largest = [0]

    def note(_m: nn.Module, _args: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(note) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(batches[0][:1])
    finally:
        for h in handles:
            h.remove()
    first = batches[0][:1]
    per_image = 4 * largest[0] + first.numel() * first.element_size()
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no such figure on this system
        available = ONE_PASS_BYTES * 2
    return per_image * sum(int(b.shape[0]) for b in batches) <= min(ONE_PASS_BYTES, available // 2)


def _refit_in_one_pass(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    count: int,
    seed: int,
    refit: Callable[[str, list[torch.Tensor]], None],
) -> None:
    """One forward pass over every batch at once: when it reaches a layer of ``names`` (its first call), the layer is
    refitted on its inputs, which come from the layers refitted before it, and the pass goes on with the refitted
    layer's output. The sampled positions are those of a pass per batch, so the result is the same."""
    sizes = [int(b.shape[0]) for b in batches]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pending = set(names)

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if name not in pending:
                return None
            pending.discard(name)
            x = args[0].detach().float()
            xs = []
            for i, (start, size) in enumerate(zip(starts, sizes)):
                shape = torch.Size([size, *out.shape[1:]])
                xs.append(patches(module, x[start : start + size], shape, sample_positions(shape, count, seed + i)))
            refit(name, xs)
            return F.conv2d(args[0], module.weight, module.bias, module.stride, module.padding, module.dilation)

        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name)) for name in names]
    try:
        with torch.no_grad():
            model(torch.cat(list(batches)))
    finally:
        for handle in handles:
            handle.remove()


def _kept(channels: int, gone: Sequence[int]) -> list[int]:
    gone = set(gone)
    return [i for i in range(channels) if i not in gone]


def recalibrate_norms(model: nn.Module, batches: Sequence[torch.Tensor]) -> int:
    """Re-estimate every batch norm's running mean and variance on ``batches`` (a cumulative average; nothing else
    changes); returns how many layers were re-estimated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    training = model.training
    saved = [(m, m.momentum) for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
        m.train()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(training)
    return len(norms)


def output_error(pruned: nn.Module, original: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """Mean relative difference of the two models' outputs that have the same shape (detections, not the pruned
    feature maps) over ``batches``, in eval mode."""
    from yoloprune.graph.nest import tensors_in

    modes = pruned.training, original.training
    pruned.eval(), original.eval()
    errors = []
    try:
        with torch.no_grad():
            for batch in batches:
                for a, b in zip(tensors_in(original(batch)), tensors_in(pruned(batch))):
                    if a.shape == b.shape:
                        errors.append(float((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-12)))
    finally:
        pruned.train(modes[0]), original.train(modes[1])
    return sum(errors) / max(len(errors), 1)


def calibrate(
    pruned: nn.Module,
    original: nn.Module,
    batches: Sequence[torch.Tensor],
    removed: dict[str, list[int]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Reconstruct the layers whose inputs lost channels, then re-estimate norm statistics, keeping the new
    statistics only when the outputs on the last batch (held out from them) come closer to the original's."""
    start = time.perf_counter()
    result = reconstruct(pruned, original, batches, removed, progress=progress)
    held, fit = batches[-1:], (batches[:-1] or batches)
    result.output_before = output_error(pruned, original, held)
    norms = [m for m in pruned.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in norms if m.running_mean is not None]
    count = recalibrate_norms(pruned, fit)
    result.output_after = output_error(pruned, original, held)
    if result.output_after >= result.output_before:  # the statistics it has fit better: put them back
        with torch.no_grad():
            for m, (mean, var) in zip([m for m in norms if m.running_mean is not None], saved):
                m.running_mean.copy_(mean), m.running_var.copy_(var)
        result.output_after, count = result.output_before, 0
    result.norms = count
    result.seconds = time.perf_counter() - start
    if progress:
        progress(str(result))
    return result


__all__ = ["Calibration", "calibrate", "calibration_batches", "output_error", "recalibrate_norms", "reconstruct"]
