"""Bad input gets a clear error that names what went wrong."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize
from torch import nn

import yoloprune
from yoloprune.graph import TraceError, build

X = torch.randn(1, 3, 8, 8)


class Odd(nn.Module):
    """Uses an operation the tracer does not know (a cumulative max over channels via a custom op path)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = torch.nn.functional.hardtanh(y)
        return self.b(torch.special.i0(y))


def test_unknown_op_names_the_op_and_module_and_suggests_ignore():
    with pytest.raises(TraceError) as info:
        build(Odd(), X)
    message = str(info.value)
    assert "i0" in message and "<root> (Odd)" in message and "ignore" in message


def test_ignoring_the_module_freezes_instead():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.odd, self.c = Odd(), nn.Conv2d(4, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.c(self.odd(x)))

    m = randomize(Wrap())
    report = yoloprune.prune(m, X, ratio=0.5, ignore=["odd"])
    assert m.c.out_channels == 4 and m.odd.a.out_channels == 8 and "odd.a" not in report.removed


def test_example_input_the_model_cannot_run():
    with pytest.raises(TraceError, match="cannot run on the example inputs"):
        build(nn.Conv2d(3, 8, 1), torch.randn(1, 4, 8, 8))


def test_prune_that_removes_nothing():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    with pytest.raises(yoloprune.PruneError, match="nothing to prune"):
        yoloprune.prune(m, X, ratio=0.2)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="ratio must be in"):
        yoloprune.prune(nn.Conv2d(3, 4, 1), X, ratio=ratio)


def test_unknown_importance():
    with pytest.raises(ValueError, match="unknown importance 'taylorx'"):
        yoloprune.prune(nn.Conv2d(3, 4, 1), X, importance="taylorx")


def test_inputs_are_not_modified_by_a_failed_prune():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(yoloprune.PruneError):
        yoloprune.prune(m, X, ratio=0.2)
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
