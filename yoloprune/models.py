"""Load a model named on the command line, and the example input to trace it with."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CONFIG_SUFFIXES = (".yaml", ".yml")


def load(spec: str, family: str | None = None) -> tuple[nn.Module, str]:
    """A model and its family from a config name/path. Checkpoints and other families come with their adapters."""
    if family not in (None, "ultralytics"):
        raise ValueError(f"family {family!r} cannot be loaded yet")
    if Path(spec).suffix in CONFIG_SUFFIXES:
        from .adapters import ultralytics

        return ultralytics.load(spec), "ultralytics"
    if not Path(spec).exists():
        raise FileNotFoundError(f"no such model: {spec}")
    raise ValueError(f"cannot load {spec}: expected an ultralytics config (.yaml)")


def example_input(imgsz: int, batch: int = 1) -> torch.Tensor:
    """A zero image batch at ``imgsz`` (the graph only needs shapes)."""
    if imgsz < 32 or imgsz % 32:
        raise ValueError(f"--imgsz must be a positive multiple of 32, got {imgsz}")
    return torch.zeros(batch, 3, imgsz, imgsz)
