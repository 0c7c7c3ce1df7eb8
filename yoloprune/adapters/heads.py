"""A trained head given a new class list (transfer to a user's dataset): output rows that keep their meaning (boxes,
objectness, mask coefficients) are copied, class rows start fresh as the family's trainer starts them, and the new
class count is recorded in the plan so that ``yoloprune.load`` rebuilds the same network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from yoloprune.options import MAX_CLASSES

PLAN_CLASSES = "classes"  # in a plan: the class count the head was given after the channels were removed


def check_classes(nc: Any) -> int:
    """``nc`` as a class count, refused unless an int in [1, MAX_CLASSES] (plans come from untrusted files)."""
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= MAX_CLASSES:
        raise ValueError(f"a class count must be an integer in [1, {MAX_CLASSES}], got {nc!r:.40}")
    return nc


def remap_rows(layer: nn.Conv2d | nn.Linear, sources: Sequence[int | None], fresh_bias: float) -> nn.Module:
    """A copy of the output ``layer`` (a convolution or a linear layer) whose output row i is the old row
    ``sources[i]``, or where that is None a fresh row: torch's default initialisation, bias ``fresh_bias``."""
    weight = layer.weight
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError("a grouped output convolution cannot be given new classes")
        new: nn.Module = nn.Conv2d(
            layer.in_channels, len(sources), layer.kernel_size, layer.stride, layer.padding, layer.dilation
        )
    else:
        new = nn.Linear(layer.in_features, len(sources))
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for row, source in enumerate(sources):
            if source is None:
                new.bias[row] = fresh_bias
            else:
                new.weight[row] = weight[source]
                new.bias[row] = layer.bias[source] if layer.bias is not None else 0.0
    new.requires_grad_(weight.requires_grad)
    return new


def remap_vector(values: torch.Tensor, sources: Sequence[int | None], fresh: float) -> nn.Parameter:
    """A per-output-row parameter shaped ``(1, C, 1, 1)`` (YOLOv7's implicit scales) remapped as ``remap_rows``
    remaps rows; fresh rows get ``fresh``."""
    out = torch.full((1, len(sources), 1, 1), fresh, dtype=values.dtype, device=values.device)
    for row, source in enumerate(sources):
        if source is not None:
            out[0, row] = values.detach()[0, source]
    return nn.Parameter(out, requires_grad=values.requires_grad)


def anchor_rows(anchors: int, outputs: int, classes: int, nc: int) -> list[int | None]:
    """Output rows of an anchor-based head (per anchor: 4 box terms, objectness, ``classes`` class scores, then
    anything else such as mask coefficients) after the class scores become ``nc`` fresh ones."""
    rows: list[int | None] = []
    for anchor in range(anchors):
        base = anchor * outputs
        rows += [base + j for j in range(5)]
        rows += [None] * nc
        rows += [base + j for j in range(5 + classes, outputs)]
    return rows


def record_classes(target: Any, nc: int) -> None:
    """Record in the plan the model carries (``target.history``) that its head has ``nc`` classes."""
    if target.record is None:
        raise ValueError(f"a {target.family} model cannot record a new class list")
    target.record({**(target.history or {"removed": {}, "sizes": {}}), PLAN_CLASSES: nc})


def replayer(plan: dict[str, Any], set_classes: Callable[[nn.Module, int], None]) -> Callable[[nn.Module], None]:
    """What ``graph.plan.rebuild`` applies after the channels are removed: the class count the plan records."""
    nc = plan.get(PLAN_CLASSES)
    if nc is not None:
        check_classes(nc)

    def apply(net: nn.Module) -> None:
        if nc is not None:
            set_classes(net, nc)

    return apply
