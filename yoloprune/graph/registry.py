"""How a module keeps itself consistent after its channels change: a small registry adapters fill.

The graph engine knows no model family. When a module's own ``forward`` splits channels with sizes it stores in an
attribute (``x.split((self.c, self.c), 1)``), the engine must either freeze those channels or know that the module
will be updated. A family adapter declares that with a ``Policy``: how the parts may change and a ``fixup`` that
rewrites the module's attributes once its parameters have shrunk. Stock upstream classes stay; nothing is rewritten
into a class of ours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class FixupContext:
    """What a fixup may need: the new sizes of each channel split traced in the module's own forward, in order."""

    splits: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """How to keep one module class consistent.

    ``splits``: ``"equal"`` when every channel split or slice in its forward must keep equal parts (sizes read from an
    attribute such as ``self.c``), ``"free"`` when parts may change independently, None when splits with fixed sizes
    freeze their channels. ``fixup(module, context)`` updates the module's attributes after pruning.
    ``frozen_io``: the channels of every tensor entering or leaving the module are kept (for modules whose forward
    reads sizes from their inputs, e.g. attention that reshapes values back to the input's channel count).
    """

    splits: str | None = None
    fixup: Callable[[nn.Module, FixupContext], None] | None = None
    frozen_io: bool = False

    def __post_init__(self) -> None:
        if self.splits not in (None, "equal", "free"):
            raise ValueError(f"splits must be 'equal', 'free' or None, not {self.splits!r}")


def policy_for(cls: type, policies: Mapping[Any, Policy] | None) -> Policy | None:
    """The policy registered for ``cls`` (or a base class), by class object or by class name."""
    if not policies:
        return None
    for base in cls.__mro__:
        found = policies.get(base) or policies.get(base.__name__)
        if found is not None:
            return found
    return None
