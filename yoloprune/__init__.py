"""yoloprune: physically prune YOLO detectors on an exact channel-dependency graph.

Importing ``yoloprune`` loads nothing heavy and changes no environment variable: the names below are imported on
first use. (The command line sets ``YOLO_OFFLINE=1`` for ultralytics; set it yourself in Python to keep ultralytics
from reaching for the network.)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prune": "yoloprune.workflows.pipeline",
    "PruneReport": "yoloprune.pruning.run",
    "load": "yoloprune.adapters",
    "finetune": "yoloprune.train.recover",
    "PruneError": "yoloprune.graph.surgery",
    "TraceError": "yoloprune.graph.tracer",
}
_SUBPACKAGES = ("adapters", "data", "evaluate", "export", "graph", "pruning", "train", "workflows")

__all__ = ["PruneError", "PruneReport", "TraceError", "__version__", "finetune", "graph", "load", "prune"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'yoloprune' has no attribute {name!r}")
