"""The loss Taylor importance differentiates: a network's own detection loss over fixed labelled batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def detection_loss(batches: list[dict[str, torch.Tensor]]) -> Callable[[nn.Module], torch.Tensor]:
    """A function of a network: its family's detection loss (``Adapter.train_loss``) summed over ``batches``,
    computed in training mode (the mode is restored after)."""
    from yoloprune.adapters import adapter, family_of_model

    def loss(net: nn.Module) -> torch.Tensor:
        compute = adapter(family_of_model(net)).train_loss(net, int(batches[0]["img"].shape[-1]))
        training = net.training
        net.train()
        try:
            return sum(compute(batch) for batch in batches)
        finally:
            net.train(training)

    return loss


def taylor_loss_from(
    data: str | Path, imgsz: int, batch: int = 8, count: int = 4
) -> Callable[[nn.Module], torch.Tensor]:
    """``detection_loss`` over ``count`` seeded batches of the training split of a labelled data yaml."""
    from yoloprune.data.batches import labelled_batches

    return detection_loss(labelled_batches(data, imgsz, batch, count))
