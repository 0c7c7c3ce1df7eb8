"""Channel importance: one score per channel of the graph, aggregated over every member of its group.

A channel's score gathers every tensor it lives in: the producing layer's output rows, the norm scales that follow
it, and the input columns of every consumer (so channels split or concatenated into several layers score
consistently). Lower scores are removed first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from yoloprune.graph import Graph
from yoloprune.graph.records import Member
from yoloprune.graph.surgery import _tensor
from yoloprune.options import AGGREGATES, CRITERIA, resolve_importance

LossFn = Callable[[nn.Module], torch.Tensor]


def channel_scores(
    model: nn.Module,
    graph: Graph,
    criterion: str = "l2",
    seed: int = 0,
    *,
    aggregate: str = "mean",
    normalize_layers: bool = False,
    taylor_loss: LossFn | None = None,
    calib_batches: Sequence[torch.Tensor] | None = None,
) -> np.ndarray:
    """Score every channel (graph component).

    ``l1``/``l2``: summed absolute / squared weights of the channel in each member. ``bn``: absolute norm scale
    (network slimming; channels without a norm fall back to ``l2``). ``taylor``: first-order Taylor
    ``|sum(w * dL/dw)|`` with gradients from ``taylor_loss(model)`` (a few batches of the family's loss).
    ``auto``: ``recon`` when ``calib_batches`` are given, else ``l2``.
    ``recon``: the output error each channel's removal leaves in its consumers after least-squares refitting, on
    ``calib_batches`` (``pruning.recon_scores``; channels with no dense consumer fall back to ``l2``).
    ``random``: uniform noise from ``seed``. Per-member values are combined with ``aggregate`` (mean, sum or max),
    after dividing each member by its own mean when ``normalize_layers``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    criterion = resolve_importance(criterion, bool(calib_batches))
    if criterion == "random":
        return np.random.default_rng(seed).random(graph.num_comps)
    if criterion in ("bn", "recon"):
        if criterion == "bn":
            scores, seen = _combine(model, graph, _is_norm_scale, 1, aggregate, normalize_layers)
        elif calib_batches:
            from yoloprune.pruning.recon_scores import reconstruction_scores

            scores, seen = reconstruction_scores(model, graph, calib_batches, seed=seed)
        else:
            raise ValueError("importance 'recon' needs calibration images: pass calib=DIR (--calib DIR)")
        fallback, _ = _combine(model, graph, _is_weight, 2, aggregate, normalize_layers)
        if seen.any():  # put the fallback on the same scale as the scores
            fallback = fallback * (scores[seen].mean() / max(fallback[seen].mean(), 1e-12))
        return np.where(seen, scores, fallback)
    grads = _taylor_grads(model, taylor_loss) if criterion == "taylor" else None
    scores, _ = _combine(model, graph, _is_weight, 1 if criterion == "l1" else 2, aggregate, normalize_layers, grads)
    return scores


def check_scores(scores: Any, graph: Graph, importance: Callable[..., Any]) -> np.ndarray:
    """What a custom ``importance(model, graph)`` returned, as one finite float per channel, or an error naming it."""
    name = getattr(importance, "__qualname__", type(importance).__name__)
    where = f"importance {name} (module {getattr(importance, '__module__', None)})"
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    try:
        values = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{where} returned {type(scores).__name__}, not one number per channel") from None
    if values.shape != (graph.num_comps,):
        raise ValueError(
            f"{where} returned scores of shape {values.shape}; the graph has {graph.num_comps} channels, one score each"
        )
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{where} returned {bad} NaN or infinite scores of {values.size}")
    return values


def _is_weight(member: Member) -> bool:
    if member.is_buffer or member.role == "stat":
        return False
    if member.role in ("out", "in"):
        return not member.name.endswith("bias")
    return member.name.endswith("weight")


def _is_norm_scale(member: Member) -> bool:
    return member.role == "channel" and not member.is_buffer and member.name.endswith("weight")


def _combine(
    model: nn.Module,
    graph: Graph,
    include: Callable[[Member], bool],
    p: int,
    aggregate: str,
    normalize_layers: bool,
    grads: dict[str, torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel values (``|w|^p`` summed per position, or ``|sum w*grad|``) combined over the members."""
    total = np.full(graph.num_comps, -np.inf) if aggregate == "max" else np.zeros(graph.num_comps)
    count = np.zeros(graph.num_comps)
    with torch.no_grad():
        for member, comps in zip(graph.members, graph.member_comps):
            if not include(member):
                continue
            t = _tensor(model, member.name).detach().float()
            if grads is not None:
                g = grads.get(member.name)
                if g is None:
                    continue
                v = (t * g).movedim(member.dim, 0).reshape(t.shape[member.dim], -1).sum(1).abs()
            else:
                rows = t.movedim(member.dim, 0).reshape(t.shape[member.dim], -1)
                v = rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1)
            v = v.cpu().numpy().astype(float)
            if normalize_layers:
                v = v / max(float(v.mean()), 1e-12)
            if aggregate == "max":
                np.maximum.at(total, comps, v)
            else:
                np.add.at(total, comps, v)
            np.add.at(count, comps, 1)
    seen = count > 0
    if aggregate == "mean":
        total = total / np.maximum(count, 1)
    total[~seen] = 0.0
    return total, seen


def _taylor_grads(model: nn.Module, loss_fn: LossFn | None) -> dict[str, torch.Tensor]:
    """Parameter gradients of ``loss_fn(model)``, with every parameter temporarily trainable."""
    if loss_fn is None:
        raise ValueError("importance 'taylor' needs data: pass taylor_loss (the CLI builds it from --data)")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}  # the loss may run in train mode
    training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(True)
            p.grad = None
        loss = loss_fn(model)
        loss.backward()
        return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.train(training)
