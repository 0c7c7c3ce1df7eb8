"""yoloprune: physically prune YOLO detectors on an exact channel-dependency graph."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: never reach for the network (YOLO_OFFLINE=0 to allow)

from . import graph
from .graph.surgery import PruneError
from .graph.tracer import TraceError
from .models import load
from .prune import PruneReport, prune

__version__ = "0.1.0"
__all__ = ["PruneError", "PruneReport", "TraceError", "__version__", "finetune", "graph", "load", "prune"]


def __getattr__(name: str) -> object:  # lazy: fine-tuning imports ultralytics' trainer
    if name == "finetune":
        from .train import finetune

        return finetune
    raise AttributeError(f"module 'yoloprune' has no attribute {name!r}")
