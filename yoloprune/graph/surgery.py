"""Physical channel removal: slice every member once, then bring module attributes in line with the new shapes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from yoloprune.graph.graph import Graph
from yoloprune.graph.registry import FixupContext, policy_for


class PruneError(ValueError):
    """A removal the model cannot take (for example one that would empty a layer)."""


@dataclass
class Removal:
    """What a removal took out, numbered as before pruning.

    ``modules``: module name -> removed output-channel indices, for every module whose outputs shrank.
    ``tensors``: parameter/buffer name -> {dim: removed indices}, for every member that shrank.
    ``producers``: the subset of ``tensors`` that produces channels (weights' output rows, biases, per-channel
    scales and shifts): zeroing these in an unpruned copy makes the removed channels carry zeros.
    ``sizes``: module name -> output channels before the removal, for the modules in ``modules``.
    """

    modules: dict[str, list[int]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    producers: dict[str, dict[int, list[int]]] = field(default_factory=dict)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        path, leaf = name.rsplit(".", 1)
        return model.get_submodule(path), leaf
    return model, name


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module, leaf = _owner(model, name)
    if leaf in module._parameters:
        return module._parameters[leaf]
    return module._buffers[leaf]


def remove_channels(model: nn.Module, graph: Graph, removed: np.ndarray, policies=None) -> Removal:
    """Remove the channels (components) flagged in ``removed`` from ``model``, in place.

    Every new tensor is computed before the first one is assigned, so a removal that cannot be done leaves the model
    untouched.
    """
    cuts: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    result = Removal()
    widest: dict[str, int] = {}
    for member, comps in zip(graph.members, graph.member_comps):
        keep = ~removed[comps]
        if keep.all():
            continue
        if not keep.any():
            raise PruneError(f"{member.name} would lose all {member.size} of its channels along dim {member.dim}")
        gone = np.flatnonzero(~keep).tolist()
        cuts[member.name].append((member.dim, keep))
        result.tensors.setdefault(member.name, {})[member.dim] = gone
        if member.role in ("out", "channel"):
            if not member.is_buffer:
                result.producers.setdefault(member.name, {})[member.dim] = gone
            if member.size > widest.get(member.module, -1):
                widest[member.module] = member.size
                result.modules[member.module] = gone
                result.sizes[member.module] = member.size
    fresh: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, dims in cuts.items():
            data = _tensor(model, name).detach()
            for dim, keep in dims:
                data = data.index_select(dim, torch.as_tensor(np.flatnonzero(keep), device=data.device))
            fresh[name] = data.contiguous()
    touched = set()
    for name, data in fresh.items():
        old = _tensor(model, name)
        is_param = isinstance(old, nn.Parameter)
        new = nn.Parameter(data, requires_grad=old.requires_grad) if is_param else data
        for alias in graph.trace.aliases.get(name, [name]):
            module, leaf = _owner(model, alias)
            (module._parameters if is_param else module._buffers)[leaf] = new
            touched.add(alias.rsplit(".", 1)[0] if "." in alias else "")
    for name in touched:
        resync(model.get_submodule(name) if name else model)
    _fixups(model, graph, removed, policies)
    return result


def resync(module: nn.Module) -> None:
    """Update a torch module's size attributes from its (already sliced) parameters."""
    if isinstance(module, nn.modules.conv._ConvNd):
        w, g = module.weight, module.groups
        if g > 1 and g == module.in_channels:  # depthwise, possibly with a channel multiplier
            mult = module.out_channels // module.in_channels
            cin = w.shape[0] if module.transposed else w.shape[0] // mult
            module.in_channels, module.out_channels, module.groups = cin, cin * mult, cin
        elif module.transposed:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * g
        else:
            module.out_channels, module.in_channels = w.shape[0], w.shape[1] * g
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()


def _fixups(model: nn.Module, graph: Graph, removed: np.ndarray, policies) -> None:
    if not policies:
        return
    sizes: dict[str, list[list[int]]] = defaultdict(list)
    for record in graph.trace.splits:
        sizes[record.module].append([int((~removed[graph.comp[p]]).sum()) for p in record.parts])
    for name, module in model.named_modules():
        policy = policy_for(type(module), policies)
        if policy is not None and policy.fixup is not None:
            policy.fixup(module, FixupContext(splits=sizes.get(name, [])))


class Snapshot:
    """Every module's attributes, parameters and buffers, to undo a removal that turned out to break forward()."""

    def __init__(self, model: nn.Module):
        self.saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers)) for m in model.modules()]

    def restore(self) -> None:
        for module, attrs, params, buffers in self.saved:
            module.__dict__.update(attrs)
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
