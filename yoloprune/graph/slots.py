"""Channel slots: the identity of every channel position seen while tracing.

Each traced tensor carries a *label array*: an integer array with the tensor's number of dimensions, of size 1 on
every dimension except at most one (the dimension whose positions are separate channels), holding slot ids. Two
positions that must be removed together are joined by a union; removing a slot removes every position labelled with
it. Unions are only recorded while tracing and resolved once at the end (connected components), so recording costs
one array append per operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Labels = np.ndarray


@dataclass
class Event:
    """Slots touched by something that freezes them (or, for errors, that the tracer could not understand)."""

    slots: np.ndarray
    reason: str


@dataclass
class Slots:
    """Allocates slots, records unions between them and the events that freeze them."""

    count: int = 0
    const: set[int] = field(default_factory=set)
    freezes: list[Event] = field(default_factory=list)
    errors: list[Event] = field(default_factory=list)
    _a: list[np.ndarray] = field(default_factory=list)
    _b: list[np.ndarray] = field(default_factory=list)

    def new(self, n: int) -> np.ndarray:
        """Return ``n`` fresh slot ids."""
        start = self.count
        self.count += n
        return np.arange(start, start + n, dtype=np.int64)

    def new_const(self, reason: str) -> int:
        """Return one fresh slot that is frozen from birth (inputs, constants, unhandled results)."""
        slot = int(self.new(1)[0])
        self.const.add(slot)
        self.freezes.append(Event(np.array([slot]), reason))
        return slot

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Record that positions labelled ``a`` and ``b`` (broadcastable arrays) are the same channels."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        a, b = a.reshape(-1), b.reshape(-1)
        differ = a != b
        if differ.any():
            self._a.append(a[differ])
            self._b.append(b[differ])

    def freeze(self, slots: np.ndarray, reason: str) -> None:
        """Record that these slots must never be removed, and why."""
        slots = np.unique(np.asarray(slots).reshape(-1))
        if slots.size and not (slots.size == 1 and int(slots[0]) in self.const):
            self.freezes.append(Event(slots, reason))

    def error(self, slots: np.ndarray, message: str) -> None:
        """Record an operation the tracer does not understand; it is an error if its slots end up prunable."""
        self.errors.append(Event(np.unique(np.asarray(slots).reshape(-1)), message))

    def components(self) -> tuple[int, np.ndarray]:
        """Resolve all unions: return the number of components and the component id of every slot."""
        if not self._a:
            return self.count, np.arange(self.count, dtype=np.int64)
        a = np.concatenate(self._a)
        b = np.concatenate(self._b)
        ones = np.ones(a.size, dtype=np.int8)
        adj = coo_matrix((ones, (a, b)), shape=(self.count, self.count)).tocsr()
        n, comp = connected_components(adj, directed=False)
        return n, comp.astype(np.int64)


def uniform(ndim: int, slot: int) -> Labels:
    """Labels for a tensor whose every element belongs to ``slot``."""
    return np.full((1,) * ndim, slot, dtype=np.int64)


def vary_dim(labels: Labels) -> int | None:
    """The dimension along which the labels vary, or None when they are uniform."""
    dims = [d for d, n in enumerate(labels.shape) if n > 1]
    return dims[0] if dims else None


def along(labels: Labels, dim: int, size: int) -> np.ndarray | None:
    """The 1-D labels of the ``size`` positions along ``dim``; None if the labels vary along another dimension."""
    d = vary_dim(labels)
    if d is None:
        return np.full(size, labels.reshape(-1)[0], dtype=np.int64)
    if d != dim:
        return None
    return labels.reshape(-1)


def spread(vector: np.ndarray, ndim: int, dim: int) -> Labels:
    """Labels for an ``ndim``-dimensional tensor whose positions along ``dim`` carry ``vector``."""
    shape = [1] * ndim
    shape[dim] = vector.size
    return vector.reshape(shape)


def first(labels: Labels) -> int:
    """The slot of a uniform label array."""
    return int(labels.reshape(-1)[0])
