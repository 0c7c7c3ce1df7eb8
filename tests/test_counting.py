"""yoloprune's MAC counter agrees with torch's own FLOP counter (which costs seconds per pass on meta tensors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from yoloprune.graph.counting import count_macs, count_params


def torch_macs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1, groups=1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(16, 8, 2, 2, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.up(self.dw(self.c(x)))
        t = y.flatten(2).transpose(1, 2)
        return self.fc(t @ (t.transpose(1, 2) @ t) / 100)


@pytest.mark.parametrize("name", ["mixed", "yolov8n.yaml", "yolo11n.yaml"])
def test_macs_match_torch_flop_counter(name):
    if name == "mixed":
        model, x = Mixed(), torch.randn(2, 3, 8, 8)
    else:
        from ultralytics.nn.tasks import DetectionModel

        model, x = DetectionModel(name, verbose=False), torch.zeros(1, 3, 64, 64)
    assert count_macs(model, x) == torch_macs(model, x) > 0


def test_params_count_shared_once():
    conv = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(conv, conv)
    assert count_params(model) == 12
