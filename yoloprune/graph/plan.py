"""A pruning plan is data: the output channels removed from each module, numbered as in the unpruned model.

Plans are plain JSON-able dicts, so they can be stored in a checkpoint, read by a person, composed across steps and
replayed onto a fresh copy of the original model (which is how ``yoloprune.load`` rebuilds a pruned network from a
config and a state_dict).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from yoloprune.graph import build
from yoloprune.graph.surgery import PruneError, Removal, remove_channels

FORMAT = 1


def compose(first: dict[str, list[int]], sizes: dict[str, int], later: dict[str, list[int]]) -> dict[str, list[int]]:
    """The plan of two prunes in a row, in the original numbering.

    ``first`` and ``sizes`` (each module's original channel count) describe the first prune; ``later`` is numbered
    in the model the first prune left.
    """
    out = {m: sorted(set(idx)) for m, idx in first.items()}
    for module, idx in later.items():
        gone = set(first.get(module, ()))
        if module not in sizes and gone:
            raise ValueError(f"plan has no size for module {module}")
        kept = [i for i in range(sizes.get(module, 0) or (max(idx) + 1 + len(gone))) if i not in gone]
        out[module] = sorted(gone | {kept[i] for i in idx})
    return out


def replay(model: nn.Module, example_inputs: Any, removed: dict[str, list[int]], target: Any) -> Removal:
    """Remove from ``model`` (unpruned, same architecture) exactly the channels ``removed`` names, in place."""
    graph = build(target.module, example_inputs, outputs=target.outputs, policies=target.policies)
    flags = np.zeros(graph.num_comps, dtype=bool)
    widest: dict[str, int] = {}
    for member in graph.members:
        if member.role in ("out", "channel") and member.size > widest.get(member.module, -1):
            widest[member.module] = member.size
    unknown = set(removed) - set(widest)
    if unknown:
        raise PruneError(f"the plan names modules this model does not have: {sorted(unknown)[:5]}")
    for member, comps in zip(graph.members, graph.member_comps):
        if member.module in removed and member.role in ("out", "channel") and member.size == widest[member.module]:
            idx = np.asarray(removed[member.module], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= member.size):
                raise PruneError(
                    f"the plan removes channel {int(idx.max())} of {member.module}, which has {member.size}"
                )
            flags[comps[idx]] = True
    if (flags & graph.frozen).any():
        raise PruneError("the plan removes channels this model must keep (outputs or frozen couplings)")
    result = remove_channels(target.module, graph, flags, target.policies)
    if {m: v for m, v in result.modules.items() if v} != {m: sorted(v) for m, v in removed.items() if v}:
        raise PruneError("the plan does not match this model: replaying it removes other channels than it names")
    return result


def rebuild(
    section: dict[str, Any],
    build: Callable[[Any], nn.Module],
    target_of: Callable[..., Any],
    adjust: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, Any]:
    """A pruned network from a checkpoint section: ``build(section["config"])`` makes the unpruned network, the plan
    is replayed onto it, ``adjust`` (if any) changes what the plan records beyond channels (a head's class count),
    and the saved state_dict is loaded strictly; the composed plan is recorded on the network."""
    import copy

    import torch

    net = build(section["config"])
    imgsz = int(section.get("imgsz", 640))  # checked by the caller (``yoloprune.adapters.load``) before this runs
    target = target_of(net, prune_head=True)
    replay(net, torch.zeros(1, 3, imgsz, imgsz), section["plan"]["removed"], target)
    if adjust is not None:
        adjust(net)
    net.load_state_dict(section["state_dict"], strict=True)
    if target.record is not None:
        target.record(copy.deepcopy(section["plan"]))
    return net, target
