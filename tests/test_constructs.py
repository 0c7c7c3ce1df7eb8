"""Exactness on small models that each isolate one construct the graph must couple, with concrete channel counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import prune_exact as _prune_exact
from helpers import randomize, shapes
from torch import nn

import yoloprune
from yoloprune.graph import Policy, build


def prune_exact(*args, **kwargs):
    """These models isolate one construct, usually in their first layer: do not protect it."""
    return _prune_exact(*args, protect_first=False, **kwargs)


def cbs(c1: int, c2: int, k: int = 3, s: int = 1, g: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), act or nn.SiLU())


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbs(3, 16), cbs(16, 32), nn.Conv2d(32, 8, 1)

    def forward(self, x):
        return self.head(self.b(self.a(x)))


def test_chain_counts():
    m = randomize(Chain())
    report = prune_exact(m, X, ratio=0.5)
    assert shapes(m)["a.0.weight"] == (8, 3, 3, 3)
    assert shapes(m)["b.0.weight"] == (16, 8, 3, 3)
    assert shapes(m)["head.weight"] == (8, 16, 1, 1)  # model output keeps its channels
    assert m.b[1].num_features == 16 and m.b[1].running_mean.shape == (16,)
    assert sorted(report.removed) == ["a.0", "a.1", "b.0", "b.1"]
    assert len(report.removed["a.0"]) == 8


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.r1, self.r2, self.head = cbs(3, 16), cbs(16, 16), cbs(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.r1(x)
        x = x - self.r2(x) * 0.5
        return self.head(x)


def test_residual_add_couples_all_branches():
    m = randomize(Residual())
    g = build(m, X)
    coupled = next(grp for grp in g.groups if "stem.0.weight:out[all 16]" in grp.members)
    assert {"r1.0.weight:out[all 16]", "r2.0.weight:out[all 16]", "head.weight:in[all 16]"} <= set(coupled.members)
    prune_exact(m, X, ratio=0.25)
    assert m.stem[0].out_channels == m.r1[0].out_channels == m.r2[0].out_channels == 12


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbs(3, 8), cbs(3, 16), cbs(3, 24)
        self.head = nn.Conv2d(8 + 16 + 8 + 24 + 8, 4, 1)

    def forward(self, x):
        a, b, c = self.a(x), self.b(x), self.c(x)
        inner = torch.cat([a, b], 1)
        return self.head(torch.cat([inner, a, torch.cat((c,), dim=1), a], dim=-3))  # nested, same tensor thrice


def test_concat_nested_and_repeated():
    m = randomize(Concat())
    prune_exact(m, X, ratio=0.5)
    assert (m.a[0].out_channels, m.b[0].out_channels, m.c[0].out_channels) == (4, 8, 12)
    assert m.head.in_channels == 4 + 8 + 4 + 12 + 4


class Chunk(nn.Module):
    """C2f-style: one conv chunked in two halves that go different ways."""

    def __init__(self):
        super().__init__()
        self.cv1, self.m, self.cv2 = cbs(3, 32, 1), cbs(16, 16), nn.Conv2d(48, 8, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def test_chunk_halves_are_tied_and_lose_equal_counts():
    m = randomize(Chunk())
    g = build(m, X)
    tied = g.tied()
    assert len(tied) == 1
    halves = next(iter(tied.values()))
    assert [h.channels for h in halves] == [16, 16]
    assert halves[0].members[0] == "cv1.0.weight:out[0:16]"
    prune_exact(m, X, ratio=0.5)
    assert m.cv1[0].out_channels == 16 and m.m[0].in_channels == 8 and m.cv2.in_channels == 24


class FixedSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.sizes = [8, 24]
        self.cv, self.a, self.b = cbs(3, 32), nn.Conv2d(8, 4, 1), nn.Conv2d(24, 4, 1)

    def forward(self, x):
        p, q = self.cv(x).split(self.sizes, 1)
        return self.a(p) + self.b(q)


def test_split_with_stored_sizes_freezes_unless_a_policy_says_how():
    m = randomize(FixedSplit())
    g = build(m, X)
    parts = [grp for grp in g.groups if grp.members[0].startswith("cv.0.weight:out")]
    assert [grp.channels for grp in parts] == [8, 24]
    assert all("split with sizes fixed in forward()" in grp.frozen and "FixedSplit" in grp.frozen for grp in parts)
    with pytest.raises(yoloprune.PruneError, match="nothing to prune"):
        yoloprune.prune(copy.deepcopy(m), X, ratio=0.5, protect_first=False)

    def fixup(module, context):
        module.sizes = context.splits[0]

    policies = {FixedSplit: Policy(splits="free", fixup=fixup)}
    prune_exact(m, X, ratio=0.5, policies=policies)
    assert m.sizes == [4, 12] and m.cv[0].out_channels == 16


class Slices(nn.Module):
    def __init__(self):
        super().__init__()
        self.cv, self.a, self.b = cbs(3, 32), nn.Conv2d(8, 4, 1), nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = self.cv(x)
        return self.a(y[:, :8]) + self.b(y[:, 8:])


def test_fixed_slice_keeps_the_channels_its_bounds_depend_on():
    m = randomize(Slices())
    report = prune_exact(m, X, ratio=0.5)
    removed = report.removed["cv.0"]
    assert removed and min(removed) >= 8  # the first 8 channels fix both slices' bounds
    assert m.a.in_channels == 8 and m.b.in_channels == 24 - len(removed)


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw, self.dw, self.dw2 = cbs(3, 16, 1), cbs(16, 16, 3, g=16), nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.dw2(self.dw(self.pw(x))))


def test_depthwise_with_channel_multiplier():
    m = randomize(Depthwise())
    prune_exact(m, X, ratio=0.5)
    assert (m.pw[0].out_channels, m.dw[0].groups, m.dw[0].out_channels) == (8, 8, 8)
    assert (m.dw2.in_channels, m.dw2.out_channels, m.dw2.groups) == (8, 16, 8)
    assert m.head.in_channels == 16


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.g, self.head = cbs(3, 16), cbs(16, 32, 3, g=4), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.g(self.a(x)))


def test_grouped_conv_loses_the_same_channels_in_every_group():
    m = randomize(Grouped())
    report = prune_exact(m, X, ratio=0.5)
    assert m.g[0].groups == 4 and m.g[0].in_channels == 8 and m.g[0].weight.shape == (16, 2, 3, 3)
    removed = report.removed["a.0"]
    per_group = {i % 4 for i in removed}, {i // 4 for i in removed}
    assert len(removed) == 8 and len(per_group[0]) == 2 and per_group[1] == {0, 1, 2, 3}


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbs(3, 16)
        self.up = nn.ConvTranspose2d(16, 16, 2, 2)
        self.upg = nn.ConvTranspose2d(16, 16, 2, 2, groups=2)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.upg(F.relu(self.up(self.a(x)))))


def test_conv_transpose_plain_and_grouped():
    m = randomize(Transposed())
    prune_exact(m, X, ratio=0.5)
    assert (m.up.in_channels, m.up.out_channels) == (8, 8)
    assert (m.upg.in_channels, m.upg.out_channels, m.upg.weight.shape[:2]) == (8, 8, (8, 4))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = cbs(3, 16, s=2)
        self.fc1, self.fc2 = nn.Linear(16 * 8 * 8, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(torch.flatten(self.f(x), 1))))


def test_linear_after_flatten_of_channels_and_space():
    m = randomize(Classifier())
    prune_exact(m, X, ratio=0.5)
    assert m.f[0].out_channels == 8 and m.fc1.in_features == 8 * 64 and m.fc1.out_features == 16
    assert m.fc2.in_features == 16 and m.fc2.out_features == 10


class Pyramid(nn.Module):
    """SPPF-like: one max-pool module called three times, then upsampling and a shared activation."""

    def __init__(self):
        super().__init__()
        self.act = nn.SiLU()  # one instance shared by every layer
        self.cv1 = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), self.act)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = nn.Sequential(nn.Conv2d(64, 16, 1), nn.BatchNorm2d(16), self.act)
        self.down = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        z = self.cv2(torch.cat(y, 1))
        w = F.interpolate(self.down(z), scale_factor=2.0, mode="bilinear")
        return self.head(torch.cat([self.up(self.down(z)), w], 1))


def test_pool_module_called_three_times_and_resampling():
    m = randomize(Pyramid())
    prune_exact(m, X, ratio=0.5)
    assert m.cv1[0].out_channels == 8 and m.cv2[0].in_channels == 32 and m.head.in_channels == 16


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbs(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)  # applied twice: its input and output are the same channels
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.shared(F.relu(self.shared(self.a(x)))))


def test_module_called_twice_couples_its_input_and_output():
    m = randomize(SharedConv())
    prune_exact(m, X, ratio=0.5)
    assert m.shared.weight.shape == (8, 8, 3, 3) and m.a[0].out_channels == 8


class Gate(nn.Module):
    """Squeeze-and-excitation: a per-channel sigmoid gate multiplies the features."""

    def __init__(self):
        super().__init__()
        self.f = cbs(3, 32)
        self.fc1, self.fc2, self.head = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        y = self.f(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.head(torch.where(gate > 2, y, y * gate) / 1.0)


def test_channel_gate_mul_where_and_spatial_mean():
    m = randomize(Gate())
    prune_exact(m, X, ratio=0.5)
    assert m.f[0].out_channels == 16 and m.fc2.out_channels == 16 and m.fc1.out_channels == 4


class Implicit(nn.Module):
    """YOLOv7 IDetect-like learned per-channel tensors: one added before a conv, one multiplying its output."""

    def __init__(self):
        super().__init__()
        self.f = cbs(3, 16)
        self.ia = nn.Parameter(torch.randn(1, 16, 1, 1))
        self.mid = nn.Conv2d(16, 16, 1)
        self.im = nn.Parameter(torch.randn(1, 16, 1, 1) + 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.mid(self.f(x) + self.ia) * self.im))


def test_learned_per_channel_tensors_are_sliced():
    m = randomize(Implicit())
    report = prune_exact(m, X, ratio=0.5)
    assert m.im.shape == (1, 8, 1, 1) and m.ia.shape == (1, 8, 1, 1) and m.mid.weight.shape[0] == 8
    assert "mid" in report.removed and "" in report.removed  # the root module owns the learned tensors


class Tokens(nn.Module):
    """Channels travel through flatten/transpose/view into a Linear over channels and back."""

    def __init__(self):
        super().__init__()
        self.f, self.mix, self.head = cbs(3, 16), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.f(x)
        b, _c, h, w = y.shape
        t = self.mix(y.flatten(2).transpose(1, 2))
        return self.head(t.permute(0, 2, 1).reshape(b, -1, h, w))


def test_permute_and_views_where_channels_stay_separable():
    m = randomize(Tokens())
    prune_exact(m, X, ratio=0.5)
    assert m.f[0].out_channels == 8 and (m.mix.in_features, m.mix.out_features) == (8, 8)


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 16, 1)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.b(F.relu(self.gn(self.a(x))))
        y = self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(y)


def test_group_and_layer_norm_against_a_hand_sliced_reference():
    """Norms over channels are not zero-exact: compare with the model sliced by hand instead."""
    m = randomize(Norms())
    ref = copy.deepcopy(m)
    report = yoloprune.prune(m, X, ratio=0.5, protect_first=False)
    assert m.gn.num_channels == 8 and m.gn.num_groups == 4 and m.ln.normalized_shape == (8,)
    keep_a = [i for i in range(16) if i not in report.removed["a"]]
    keep_b = [i for i in range(16) if i not in report.removed["b"]]
    assert len(keep_a) == 8 and {i // 4 for i in report.removed["a"]} == {0, 1, 2, 3}
    with torch.no_grad():
        ref.a.weight.data, ref.a.bias.data = ref.a.weight[keep_a], ref.a.bias[keep_a]
        ref.gn = nn.GroupNorm(4, 8)
        ref.gn.weight.data, ref.gn.bias.data = m.gn.weight.clone(), m.gn.bias.clone()
        ref.b.weight.data, ref.b.bias.data = ref.b.weight[keep_b][:, keep_a], ref.b.bias[keep_b]
        ref.ln = nn.LayerNorm(8)
        ref.ln.weight.data, ref.ln.bias.data = m.ln.weight.clone(), m.ln.bias.clone()
        ref.head.weight.data = ref.head.weight[:, keep_b]
        assert torch.allclose(ref(X), m(X), atol=1e-5)


class Heads(nn.Module):
    """Attention-style view of channels into heads: those channels are frozen, the rest still prunes."""

    def __init__(self):
        super().__init__()
        self.f, self.qkv, self.proj, self.head = (
            cbs(3, 16),
            nn.Conv2d(16, 48, 1),
            nn.Conv2d(16, 16, 1),
            nn.Conv2d(16, 4, 1),
        )

    def forward(self, x):
        y = self.f(x)
        b, _c, h, w = y.shape
        q, k, v = self.qkv(y).view(b, 2, 24, h * w).split([8, 8, 8], dim=2)
        attn = (q.transpose(-2, -1) @ k).softmax(-1)
        out = (v @ attn.transpose(-2, -1)).view(b, 16, h, w)
        return self.head(y + self.proj(out))


def test_attention_heads_are_frozen_with_a_reason():
    m = randomize(Heads())
    g = build(m, X)
    qkv = [grp for grp in g.groups if any(s.startswith("qkv.weight:out") for s in grp.members)]
    assert qkv and all(grp.frozen for grp in qkv)
    assert any("attention heads" in grp.frozen or "mixed" in grp.frozen for grp in qkv)
    prune_exact(m, X, ratio=0.5)
    assert m.f[0].out_channels == 8 and m.proj.out_channels == 8 and m.qkv.weight.shape == (48, 8, 1, 1)


class MultiOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbs(3, 16), cbs(16, 16), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        a = self.a(x)
        b = self.b(a)
        return {"main": self.c(b), "aux": [torch.stack([a, a]).sum(0)]}


def test_every_output_of_a_nest_stays_intact():
    m = randomize(MultiOutput())
    prune_exact(m, X, ratio=0.5)
    assert m.a[0].out_channels == 16 and m.b[0].out_channels == 8  # `a` is an output


def test_requires_grad_false_gives_the_same_graph():
    m = randomize(Chunk())
    before = [(g.channels, g.frozen, g.tie, g.members) for g in build(m, X).groups]
    for p in m.parameters():
        p.requires_grad_(False)
    after = [(g.channels, g.frozen, g.tie, g.members) for g in build(m, X).groups]
    assert before == after and len(before) == 5
    prune_exact(m, X, ratio=0.5)
    assert not any(p.requires_grad for p in m.parameters())


def test_train_mode_model_is_traced_in_eval_and_left_in_train():
    m = randomize(Residual()).train()
    bn_mean = m.r1[1].running_mean.clone()
    build(m, X)
    assert m.training and torch.equal(bn_mean, m.r1[1].running_mean)


def test_random_importance_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        m = randomize(Chain())
        runs.append(yoloprune.prune(m, X, ratio=0.5, importance="random", seed=7, protect_first=False).removed)
    other = yoloprune.prune(randomize(Chain()), X, ratio=0.5, importance="random", seed=8, protect_first=False).removed
    assert runs[0] == runs[1] and runs[0] != other


def test_l1_and_l2_remove_the_smallest_filters():
    m = randomize(Chain())
    with torch.no_grad():
        m.a[0].weight[[1, 5, 9]] *= 1e-3
    report = yoloprune.prune(m, X, ratio=3 / 16, importance="l1", protect_first=False)
    assert report.removed["a.0"] == [1, 5, 9]


def test_ignore_keeps_a_module():
    m = randomize(Chain())
    report = prune_exact(m, X, ratio=0.5, ignore=["a*"])
    assert m.a[0].out_channels == 16 and "a.0" not in report.removed and m.b[0].out_channels == 16


class SpatialCat(nn.Module):
    """Concatenation along a spatial dimension joins the channels of both inputs."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbs(3, 16), cbs(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)[:, :, :4]], dim=2))


def test_cat_on_a_spatial_dim_couples_the_inputs():
    m = randomize(SpatialCat())
    prune_exact(m, X, ratio=0.5)
    assert m.a[0].out_channels == m.b[0].out_channels == m.head.in_channels == 8


class DataDependent(nn.Module):
    """Forward reads values (``.item()``): traced on a real copy instead of the meta one."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbs(3, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if x.abs().sum().item() >= 0:  # a value read from the input; a sum over y's channels would freeze them
            y = y * 2
        return self.b(y)


def test_forward_that_needs_real_values_falls_back_to_a_real_trace():
    m = randomize(DataDependent())
    assert build(m, X).trace.device == "real"
    prune_exact(m, X, ratio=0.5)
    assert m.a[0].out_channels == 8
