"""Reading and writing the whole-model pickles of the repository-style projects (YOLOv5, YOLOv7).

YOLOv5 and YOLOv7 checkpoints pickle their classes under whatever module path the training code used: ``models.yolo``
and ``models.common`` for a clone of the upstream repository, ``yolov5.models.*`` or ``yolov7.models.*`` for the PyPI
packages. Both packages append their own folder to ``sys.path`` so that the bare ``models`` name resolves, but only one
of them can win, so a process that imported both reads the other family's checkpoints with the wrong classes. The
adapters never rely on that: ``read_checkpoint`` maps bare ``models.*``/``utils.*`` names onto the chosen package, and
``write_checkpoint`` writes them back under the names the source file used, so a clone still loads what it wrote.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.adapters.packages import _REPO
from yoloprune.io import checkpoint_globals, trusted, write_atomic

BARE = ("models", "utils")  # the top-level names a repository clone pickles its classes under


def _remapping(package: str, remapped: list[str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` that reads bare ``models.*``/``utils.*`` classes from ``package``."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] in BARE:
                remapped.append(module)
                module = f"{package}.{module}"
            try:
                return super().find_class(module, name)
            except AttributeError as exc:
                raise ValueError(f"the checkpoint names {module}.{name}, which this {package} has not got") from exc

    mod = types.ModuleType(f"yoloprune_remap_{package}")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod


def read_checkpoint(path: str | Path, package: str) -> tuple[Any, bool]:
    """Load a whole-model checkpoint through ``yoloprune.io.load_checkpoint`` with a clone's bare ``models.*`` /
    ``utils.*`` classes mapped onto ``package`` (or, after ``use_repo``, taken from the clone); also says whether
    the file used bare names."""
    from yoloprune.io import load_checkpoint

    if _REPO:
        return load_checkpoint(path, packages=BARE), True
    remapped: list[str] = []
    if trusted():
        data = load_checkpoint(path, pickle_module=_remapping(package, remapped))
    else:
        remapped = [n for n in checkpoint_globals(path) if n.split(".")[0] in BARE] if Path(path).is_file() else []
        data = load_checkpoint(path, remap={bare: f"{package}.{bare}" for bare in BARE})
    return data, bool(remapped)


def _renaming(package: str) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` that writes ``package.models.*``/``package.utils.*`` classes under the
    bare names a repository clone uses (the pure-Python pickler, whose ``save_global`` can be overridden)."""
    prefixes = tuple(f"{package}.{bare}" for bare in BARE)

    class Pickler(pickle._Pickler):
        def save_global(self, obj: Any, name: str | None = None) -> None:
            module = getattr(obj, "__module__", None) or ""
            if not any(module == p or module.startswith(p + ".") for p in prefixes):
                return super().save_global(obj, name)
            module = module[len(package) + 1 :]
            name = name or obj.__qualname__
            if self.proto >= 4:
                self.save(module)
                self.save(name)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
            self.memoize(obj)

    mod = types.ModuleType(f"yoloprune_rename_{package}")
    mod.Pickler = Pickler
    return mod


def write_checkpoint(obj: Any, path: str | Path, package: str, bare: bool, overwrite: bool = False) -> Path:
    """``torch.save`` through an atomic write (replacing ``path`` only with ``overwrite``); with ``bare``, the
    package's classes are named as in a clone."""
    if not bare:
        return write_atomic(path, lambda f: torch.save(obj, f), overwrite)
    return write_atomic(path, lambda f: torch.save(obj, f, pickle_module=_renaming(package)), overwrite)


def set_requires_grad(net: nn.Module, flag: bool) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(flag)
    return net


def names_dict(names: Any) -> dict[int, str]:
    """Class names as ``{index: name}`` (YOLOv5 and YOLOv7 keep a list)."""
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    return {}
