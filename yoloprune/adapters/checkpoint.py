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


def class_aliases(path: str | Path) -> dict[str, str]:
    """The classes a checkpoint names by an upstream alias rather than their own name (YOLOv5 v6 files name
    ``models.yolo.Model``, which later code keeps as an alias of ``DetectionModel``): ``{module.RealName: Alias}``,
    for the classes of modules already imported (the loader imported them to read the file)."""
    import sys

    aliases: dict[str, str] = {}
    for qualified in checkpoint_globals(path) if Path(path).is_file() else ():
        module, _, name = qualified.rpartition(".")
        candidates = [module] + [f"{p}.{module}" for p in ("yolov5", "yolov7") if module.split(".")[0] in BARE]
        for found in (sys.modules.get(m) for m in candidates):
            obj = getattr(found, name, None) if found is not None else None
            if isinstance(obj, type) and obj.__qualname__ != name:
                aliases[f"{obj.__module__}.{obj.__qualname__}"] = name
    return aliases


def _renaming(package: str, bare: bool, aliases: dict[str, str]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.save`` (the pure-Python pickler, whose ``save_global`` can be overridden) that
    writes classes by the ``aliases`` the source file used and, with ``bare``, ``package.models.*``/
    ``package.utils.*`` classes under the bare names a repository clone uses."""
    prefixes = tuple(f"{package}.{b}" for b in BARE) if bare else ()

    class Pickler(pickle._Pickler):
        def save_global(self, obj: Any, name: str | None = None) -> None:
            module = getattr(obj, "__module__", None) or ""
            alias = aliases.get(f"{module}.{getattr(obj, '__qualname__', '')}")
            renamed = any(module == p or module.startswith(p + ".") for p in prefixes)
            if alias is None and not renamed:
                return super().save_global(obj, name)
            module = module[len(package) + 1 :] if renamed else module
            name = alias or name or obj.__qualname__
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


def write_checkpoint(
    obj: Any, path: str | Path, package: str, bare: bool, overwrite: bool = False, aliases: dict[str, str] | None = None
) -> Path:
    """``torch.save`` through an atomic write (replacing ``path`` only with ``overwrite``); with ``bare``, the
    package's classes are named as in a clone, and classes in ``aliases`` by the name the source file used."""
    if not bare and not aliases:
        return write_atomic(path, lambda f: torch.save(obj, f), overwrite)
    module = _renaming(package, bare, aliases or {})
    return write_atomic(path, lambda f: torch.save(obj, f, pickle_module=module), overwrite)


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


def carried_plan(holder: Any, key: str) -> dict[str, Any]:
    """``{"plan": ...}`` for a checkpoint section when the network carries a plan (``holder[key]``: its model.yaml
    or state), so a file written without one still rebuilds with ``yoloprune.load``; else empty."""
    plan = holder.get(key) if isinstance(holder, dict) else None
    return {"plan": plan} if isinstance(plan, dict) else {}
