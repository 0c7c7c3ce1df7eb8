"""Group lasso over coupled channels: the gradient is the exact (sub)gradient of strength * sum_c ||W_c||."""

from __future__ import annotations

import torch
from helpers import randomize
from torch import nn

from yoloprune.graph import build
from yoloprune.pruning.sparsity import GroupLasso

X = torch.randn(1, 3, 8, 8)


class Residual(nn.Module):
    """conv a -> bn, then b and c consume it; b's output is added back onto a's (one group of 8 channels)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.head = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.bn(self.a(x))
        return self.head(y + self.b(y))


def reference_norms(m: Residual) -> torch.Tensor:
    """Each of the 8 channels lives in a's rows, bn's scale, b's rows and columns, and head's columns."""
    return (
        m.a.weight.pow(2).sum((1, 2, 3))
        + m.bn.weight.pow(2)
        + m.b.weight.pow(2).sum((1, 2, 3))
        + m.b.weight.pow(2).sum((0, 2, 3))
        + m.head.weight.pow(2).sum((0, 2, 3))
    ).sqrt()


def test_group_lasso_matches_autograd_on_a_coupled_group():
    m = randomize(Residual())
    lasso = GroupLasso(build(m, X))
    assert lasso.channels == 8
    assert torch.allclose(lasso.norms(m), reference_norms(m).detach(), rtol=1e-5)
    lasso.add_gradient(m, 0.1)
    ours = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    for p in m.parameters():
        p.grad = None
    (0.1 * reference_norms(m).sum()).backward()
    expected = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert set(ours) == set(expected) == {"a.weight", "bn.weight", "b.weight", "head.weight"}
    for name in expected:
        assert torch.allclose(ours[name], expected[name], rtol=1e-4, atol=1e-7), name


def test_group_lasso_steps_shrink_every_channel_and_touch_no_bias():
    m = randomize(Residual())
    lasso = GroupLasso(build(m, X))
    before = lasso.norms(m)
    biases = {n: p.detach().clone() for n, p in m.named_parameters() if n.endswith("bias")}
    optimizer = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        lasso.add_gradient(m, 0.1)
        optimizer.step()
    # each step moves W_c by lr * strength along -W_c/||W_c|| (b's weight, in two channels at once, moves more)
    assert bool(((before - lasso.norms(m)) > 20 * 0.05 * 0.1 * 0.99).all())
    assert all(torch.equal(p, biases[n]) for n, p in m.named_parameters() if n.endswith("bias"))
