"""Model-agnostic channel-dependency graph: trace, couple, remove. Knows nothing of YOLO."""

from .check import max_relative_difference, zero_producers
from .graph import Graph, Group, build
from .registry import FixupContext, Policy
from .surgery import PruneError, Removal, remove_channels
from .tracer import TraceError

__all__ = [
    "FixupContext",
    "Graph",
    "Group",
    "Policy",
    "PruneError",
    "Removal",
    "TraceError",
    "build",
    "max_relative_difference",
    "remove_channels",
    "zero_producers",
]
