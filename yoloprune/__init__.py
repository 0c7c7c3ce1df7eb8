"""yoloprune: physically prune YOLO detectors on an exact channel-dependency graph."""

from . import graph
from .graph.surgery import PruneError
from .graph.tracer import TraceError
from .models import load
from .prune import PruneReport, prune

__version__ = "0.1.0"
__all__ = ["PruneError", "PruneReport", "TraceError", "__version__", "graph", "load", "prune"]
