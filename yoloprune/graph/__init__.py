"""Model-agnostic channel-dependency graph: trace, couple, remove. Knows nothing of YOLO."""

from yoloprune.graph.check import max_relative_difference, zero_producers
from yoloprune.graph.graph import Graph, Group, build
from yoloprune.graph.records import TraceError
from yoloprune.graph.registry import FixupContext, Policy
from yoloprune.graph.surgery import PruneError, Removal, remove_channels

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
