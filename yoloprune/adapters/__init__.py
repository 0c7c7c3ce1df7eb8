"""Family adapters: recognise a model's family from its classes and describe what the graph needs to know.

Each adapter module exposes ``matches(model) -> bool`` and ``target(model, prune_head) -> Target``. Adapters import
their upstream package lazily; the graph never imports an adapter.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..graph.registry import Policy

FAMILIES = ("ultralytics", "yolov5", "yolov7", "yolox")


@dataclass
class Target:
    """What to prune and how: the module, which outputs stay intact, module policies and default protections.

    ``history`` is the plan of earlier prunes the model carries (``{"removed": ..., "sizes": ...}``), if any;
    ``record(plan)`` stores the composed plan back on the model.
    """

    family: str
    module: nn.Module
    outputs: Callable[[Any], Any] | None = None
    policies: Mapping[Any, Policy] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    history: dict[str, Any] | None = None
    record: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Loaded:
    """A model read from a file or a config, with what its family needs to write it back."""

    model: nn.Module
    family: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def section_family(section: Mapping[str, Any], path: Any) -> str:
    """The family yoloprune's section of the checkpoint ``path`` names; a clear error when it is none yoloprune has
    (the name picks the module that reads the file, so nothing else may pass)."""
    family = section.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"{path}: its yoloprune section names family {family!r:.40}, not one of {', '.join(FAMILIES)}")
    return family


def _adapter(name: str) -> Any:
    return importlib.import_module(f"{__name__}.{name}")


def unwrap(model: Any) -> Any:
    """The network inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (any other object as it is)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def resolve(model: Any, family: str | None = None, prune_head: bool = False) -> Target:
    """The ``Target`` for ``model`` (unwrapped from DataParallel/DDP): its family's adapter when one recognises it, a
    plain module otherwise."""
    model = unwrap(model)
    if family is not None:
        if family == "generic":
            return Target("generic", model)
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose one of {', '.join((*FAMILIES, 'generic'))}")
        return _adapter(family).target(model, prune_head)
    for name in FAMILIES:
        adapter = _adapter(name)
        if adapter.matches(model):
            return adapter.target(model, prune_head)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return Target("generic", model)
