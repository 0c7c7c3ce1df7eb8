"""Load a model named on the command line, write a pruned one back, and make example inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .adapters import Loaded, _adapter, section_family
from .images import check_imgsz
from .io import load_data

CONFIG_SUFFIXES = (".yaml", ".yml")


def load_model(spec: str, family: str | None = None) -> Loaded:
    """A model from a config name/path or a checkpoint file, with its family: ``family`` when given, else what the
    file contains (the classes a checkpoint names, the modules a local config lists, a YOLOX zoo name such as
    ``yolox-s``). Config names that are not files (``yolov8n.yaml``, ``yolov5s.yaml``) mean ultralytics' configs
    unless ``family`` says otherwise."""
    from .adapters import FAMILIES
    from .adapters._upstream import guess_family

    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} cannot be loaded; choose one of {', '.join(FAMILIES)}")
    family = family or guess_family(spec) or "ultralytics"
    if family != "ultralytics":
        return _adapter(family).load(spec)
    path = Path(spec)
    if path.suffix not in CONFIG_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"no such model: {spec}")
    if path.suffix not in (*CONFIG_SUFFIXES, ".pt", ".pth"):
        raise ValueError(f"cannot load {spec}: expected a model config (.yaml) or a checkpoint (.pt)")
    return _adapter("ultralytics").load(spec)


def save_model(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``loaded.model`` in its family's own checkpoint format, with yoloprune's ``section``; an existing
    ``path`` is replaced only with ``overwrite``."""
    return _adapter(loaded.family).save(loaded, path, section, overwrite)


def load(path: str | Path) -> torch.nn.Module:
    """Rebuild a pruned model from a checkpoint yoloprune wrote: the original config, the pruning plan replayed onto
    it, and the saved weights. Only tensors and plain data are read from the file; no pickled class is instantiated."""
    data = load_data(path)
    section = data.get("yoloprune")
    if not isinstance(section, dict) or "plan" not in section:
        raise ValueError(f"{path} was not written by yoloprune (no pruning plan in it)")
    return _adapter(section_family(section, path)).rebuild(section)


def example_input(imgsz: int, batch: int = 1) -> torch.Tensor:
    """A zero image batch at ``imgsz`` (the graph only needs shapes)."""
    return torch.zeros(batch, 3, check_imgsz(imgsz), check_imgsz(imgsz))
