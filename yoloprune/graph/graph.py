"""The channel-dependency graph: coupled channel groups built from one traced forward pass.

A *channel* is a connected component of slots: every position of every tensor and parameter that must disappear
together. Channels that touch exactly the same parameters (and the same split parts) form a *group*: the unit a
pruning criterion ranks and a ratio applies to. Groups may be *tied* (a ``chunk`` into equal parts): tied groups
always lose the same number of channels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from yoloprune.graph.records import Member, OutputSelector, Trace, TraceError
from yoloprune.graph.registry import Policy
from yoloprune.graph.slots import Event
from yoloprune.graph.tracer import trace


@dataclass
class Group:
    """Channels that are removed by the same rule: each one takes its positions in every member with it."""

    id: int
    comps: np.ndarray
    frozen: str | None
    tie: int | None = None
    placements: list[tuple[Member, np.ndarray]] = field(default_factory=list, repr=False)

    @property
    def channels(self) -> int:
        """Number of channels (removable units) in the group."""
        return int(self.comps.size)

    @property
    def prunable(self) -> bool:
        return self.frozen is None and self.channels > 1

    @property
    def members(self) -> list[str]:
        """Readable members: ``parameter:role[positions]`` for every parameter dimension the group touches."""
        return [f"{m.name}:{m.role}[{_ranges(pos, m.size)}]" for m, pos in self.placements if m.role != "stat"]

    @property
    def modules(self) -> list[str]:
        """Modules whose parameters the group touches, in trace order."""
        return list(dict.fromkeys(m.module for m, _ in self.placements))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channels": self.channels,
            "frozen": self.frozen,
            "tie": self.tie,
            "members": self.members,
        }


def _ranges(pos: np.ndarray, size: int) -> str:
    if pos.size == size:
        return f"all {size}"
    if pos.size and pos[-1] - pos[0] + 1 == pos.size:
        return f"{pos[0]}:{pos[-1] + 1}"
    return f"{pos.size} of {size}"


class Graph:
    """Channel groups of one model, with what is needed to rank and remove them."""

    def __init__(self, tr: Trace, model: nn.Module):
        self.trace = tr
        self.model = model
        self.members: list[Member] = list(tr.members.values())
        self.num_comps, self.comp = tr.slots.components()
        self.member_comps = [self.comp[m.labels] for m in self.members]
        self._resolve()

    # --------------------------------------------------------------------------------------------- building
    def _resolve(self) -> None:
        slots = self.trace.slots
        frozen = np.zeros(self.num_comps, dtype=bool)
        reason = np.full(self.num_comps, -1, dtype=np.int64)
        for k, event in enumerate(slots.freezes):
            comps = self.comp[event.slots]
            reason[comps[reason[comps] < 0]] = k
            frozen[comps] = True
        self._check_errors(frozen)
        for _ in range(8):
            groups, comp_group = self._group(frozen)
            ties, newly = self._ties(groups, comp_group, frozen)
            if not newly:
                break
            for comps, why in newly:
                fresh = comps[~frozen[comps]]
                frozen[fresh] = True
                reason[fresh] = len(slots.freezes)
                slots.freezes.append(Event(np.zeros(0, dtype=np.int64), why))
        self.frozen = frozen
        self.comp_group = comp_group
        reasons = [e.reason for e in slots.freezes]
        self.groups: list[Group] = []
        for gid, comps in enumerate(groups):
            why = reasons[reason[comps[0]]] if frozen[comps[0]] else None
            self.groups.append(Group(gid, comps, why, ties.get(gid)))
        for m, comps in zip(self.members, self.member_comps):
            gids = comp_group[comps]
            for gid in np.unique(gids[gids >= 0]):
                self.groups[gid].placements.append((m, np.flatnonzero(gids == gid)))

    def _check_errors(self, frozen: np.ndarray) -> None:
        problems = []
        for event in self.trace.slots.errors:
            if (~frozen[self.comp[event.slots]]).any():
                problems.append(event.reason)
        if problems:
            unique = list(dict.fromkeys(problems))
            more = f" (and {len(unique) - 3} more)" if len(unique) > 3 else ""
            raise TraceError(
                "; ".join(unique[:3]) + more + ". The tracer cannot follow channels through it: pass "
                "ignore=[<module glob>] (CLI: --ignore) to keep that module's channels, or report the model."
            )

    def _group(self, frozen: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Group channels by the exact set of members and split parts they touch (and their frozen state)."""
        spaces = list(self.member_comps)
        for record in self.trace.splits:
            spaces.extend(self.comp[part] for part in record.parts)
        comp_ids = np.concatenate([c for c in spaces]) if spaces else np.zeros(0, dtype=np.int64)
        space_ids = (
            np.concatenate([np.full(c.size, k, dtype=np.int64) for k, c in enumerate(spaces)])
            if spaces
            else np.zeros(0, dtype=np.int64)
        )
        relevant = np.zeros(self.num_comps, dtype=bool)
        relevant[np.concatenate(self.member_comps) if self.member_comps else []] = True
        pairs = np.unique(comp_ids * max(len(spaces), 1) + space_ids)
        pc, ps = pairs // max(len(spaces), 1), pairs % max(len(spaces), 1)
        rng = np.random.default_rng(0)
        keys = rng.integers(1, 2**62, size=(2, len(spaces) + 1), dtype=np.int64).astype(np.uint64)
        h1 = np.zeros(self.num_comps, dtype=np.uint64)
        h2 = np.zeros(self.num_comps, dtype=np.uint64)
        np.add.at(h1, pc, keys[0][ps])
        np.add.at(h2, pc, keys[1][ps])
        h1[frozen] += keys[0][-1]
        h2[frozen] += keys[1][-1]
        order = np.full(self.num_comps, np.iinfo(np.int64).max, dtype=np.int64)
        seen = np.concatenate(self.member_comps) if self.member_comps else np.zeros(0, dtype=np.int64)
        first_pos = np.unique(seen, return_index=True)
        order[first_pos[0]] = first_pos[1]
        comps = np.flatnonzero(relevant)
        comps = comps[np.argsort(order[comps], kind="stable")]
        sig = np.stack([h1[comps], h2[comps]], axis=1)
        _, inverse = np.unique(sig, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups: list[np.ndarray] = []
        label_of: dict[int, int] = {}
        comp_group = np.full(self.num_comps, -1, dtype=np.int64)
        members_of: list[list[int]] = []
        for comp, key in zip(comps.tolist(), inverse.tolist()):
            gid = label_of.setdefault(key, len(members_of))
            if gid == len(members_of):
                members_of.append([])
            members_of[gid].append(comp)
        for gid, items in enumerate(members_of):
            arr = np.array(items, dtype=np.int64)
            groups.append(arr)
            comp_group[arr] = gid
        return groups, comp_group

    def _ties(
        self, groups: list[np.ndarray], comp_group: np.ndarray, frozen: np.ndarray
    ) -> tuple[dict[int, int], list[tuple[np.ndarray, str]]]:
        """Tie the groups of every equal-parts split; freeze the parts of splits that mix groups."""
        parent = list(range(len(groups)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        bad: list[tuple[np.ndarray, str]] = []
        for record in self.trace.splits:
            if record.mode != "equal":
                continue
            parts = [self.comp[p] for p in record.parts]
            if all(frozen[p].all() for p in parts):
                continue
            gids = [np.unique(comp_group[p]) for p in parts]
            ok = (
                all(g.size == 1 and g[0] >= 0 for g in gids)
                and len({int(g[0]) for g in gids}) == len(gids)
                and all(np.unique(p).size == p.size for p in parts)
            )
            if not ok:
                bad.append(
                    (
                        np.unique(np.concatenate(parts)),
                        f"parts of {record.op} in {record.module or '<root>'} mix coupled channels",
                    )
                )
                continue
            root = find(int(gids[0][0]))
            for g in gids[1:]:
                parent[find(int(g[0]))] = root
        ties: dict[int, int] = {}
        sets: dict[int, list[int]] = {}
        for gid in range(len(groups)):
            sets.setdefault(find(gid), []).append(gid)
        for tie_id, gids in enumerate(g for g in sets.values() if len(g) > 1):
            for gid in gids:
                ties[gid] = tie_id
        return ties, bad

    # ---------------------------------------------------------------------------------------------- costs
    def estimate(self, removed: np.ndarray) -> tuple[int, int]:
        """MACs and parameters the model would have after removing the flagged channels, without removing them.

        Convolution and linear MACs scale with the kept fraction of their weight's output and input dimensions;
        every other MAC (matmuls between activations) stays. Exact for the layers yoloprune counts.
        """
        kept: dict[str, float] = {}
        for member, comps in zip(self.members, self.member_comps):
            if member.is_buffer:
                continue
            fraction = float((~removed[comps]).mean()) if comps.size else 1.0
            kept[member.name] = kept.get(member.name, 1.0) * fraction
        weighted = self.trace.weighted_macs
        macs = self.trace.macs - sum(weighted.values())
        macs += sum(m * kept.get(name, 1.0) for name, m in weighted.items())
        params = sum(n * kept.get(name, 1.0) for name, n in self.trace.numels.items())
        return round(macs), round(params)

    # ---------------------------------------------------------------------------------------------- queries
    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def tied(self) -> dict[int, list[Group]]:
        """Tie id -> the groups that must lose the same number of channels."""
        out: dict[int, list[Group]] = {}
        for g in self.groups:
            if g.tie is not None:
                out.setdefault(g.tie, []).append(g)
        return out

    def summary(self) -> dict[str, int]:
        prunable = self.prunable_groups
        return {
            "groups": len(self.groups),
            "prunable_groups": len(prunable),
            "channels": int(sum(g.channels for g in self.groups)),
            "prunable_channels": int(sum(g.channels for g in prunable)),
            "ops": self.trace.ops,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "traced_on": self.trace.device, "groups": [g.to_dict() for g in self.groups]}


def build(
    model: nn.Module,
    example_inputs: Any,
    *,
    outputs: OutputSelector | None = None,
    ignore: Sequence[str] = (),
    policies: Mapping[Any, Policy] | None = None,
    frozen_io: Iterable[str] = (),
) -> Graph:
    """Trace ``model`` once on ``example_inputs`` and return its channel groups. The model is not changed.

    ``outputs`` selects, from the model's return value, the tensors whose channels must stay (default: all).
    ``ignore`` holds module-name globs whose channels are kept. ``policies`` maps module classes (or class names) to
    a ``Policy`` that keeps them consistent. ``frozen_io`` names modules whose inputs and outputs keep all channels.
    """
    tr = trace(model, example_inputs, outputs=outputs, ignore=ignore, policies=policies, frozen_io=frozen_io)
    return Graph(tr, model)
