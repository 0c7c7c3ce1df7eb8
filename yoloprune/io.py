"""Reading and writing checkpoints: an allow-listed loader (full unpickling only when trusted), a reader that
instantiates no upstream class, atomic writes."""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_PACKAGES = ("torch.nn", "ultralytics", "yolov5", "yolov7", "yolox")
"""Packages whose ``nn.Module`` classes a checkpoint may name without ``trust``."""

DATA_GLOBALS = {
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "types.SimpleNamespace",
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
}
"""Plain-data classes and numpy's array/scalar rebuilders, which training scripts leave in checkpoints."""

_TRUST: ContextVar[bool] = ContextVar("yoloprune_trust", default=False)
log = logging.getLogger("yoloprune")


class UntrustedCheckpoint(ValueError):
    """A checkpoint names code outside yoloprune's allow-list and the user has not said it is trusted."""


@contextmanager
def trusting(trust: bool = True) -> Iterator[None]:
    """Within this block, checkpoints load with full unpickling (``--trust``); see ``load_checkpoint``."""
    token = _TRUST.set(trust)
    try:
        yield
    finally:
        _TRUST.reset(token)


def trusted() -> bool:
    """Whether checkpoints load with full unpickling here (inside ``trusting()``)."""
    return _TRUST.get()


def checkpoint_globals(path: str | Path) -> list[str]:
    """Every class or function a checkpoint's pickle names beyond torch's own safe set, read without loading."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (torch >= 1.6 zip format): {exc}") from exc


def _allowed(name: str, remap: Mapping[str, str], packages: tuple[str, ...] = ()) -> Any:
    """The object ``name`` refers to when it is on the allow-list, else None. Only modules of the allowed packages
    are imported."""
    module, _, attr = name.rpartition(".")
    root = module.split(".")[0]
    if root in remap:
        module = remap[root] + module[len(root) :]
    if name in DATA_GLOBALS or (name.startswith("numpy.dtypes.") and name.endswith("DType")):
        wanted: type | None = None
    elif any(module == p or module.startswith(p + ".") for p in (*MODEL_PACKAGES, *packages)):
        wanted = nn.Module
    else:
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        if wanted is None:
            return None
        raise ValueError(
            f"the checkpoint names {name}, which the installed {module.split('.')[0]} has not got (another version, "
            "or a clone's own module: pass --repo CLONE)"
        ) from None
    if wanted is not None and not (inspect.isclass(obj) and issubclass(obj, wanted)):
        return None
    return obj


def load_checkpoint(
    path: str | Path,
    trust: bool | None = None,
    remap: Mapping[str, str] | None = None,
    pickle_module: Any = None,
    packages: tuple[str, ...] = (),
) -> Any:
    """Load a checkpoint; every checkpoint yoloprune reads comes through here.

    Checkpoints of YOLO families are pickles of whole models, and unpickling runs code the file names. By default
    this loads with ``weights_only=True`` and allows only ``nn.Module`` classes of torch.nn and the YOLO packages
    (``MODEL_PACKAGES``) plus plain data (``DATA_GLOBALS``); a file naming anything else raises
    ``UntrustedCheckpoint``. With ``trust=True`` (or inside ``trusting()``, the CLI's ``--trust``) it unpickles
    fully, after a one-line warning. ``remap`` maps a clone's bare top-level modules onto a package
    (``{"models": "yolov5.models"}``); ``packages`` adds module roots to the allow-list (a clone's ``models``);
    ``pickle_module`` is what a trusted load unpickles with.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    trust = _TRUST.get() if trust is None else trust
    try:
        if trust:
            log.warning("yoloprune: loading %s with full unpickling (--trust): it can run any code it names", path)
            extra = {"pickle_module": pickle_module} if pickle_module is not None else {}
            return torch.load(path, map_location="cpu", weights_only=False, **extra)
        allowed = []
        for name in sorted(checkpoint_globals(path)):
            obj = _allowed(name, remap or {}, packages)
            if obj is None:
                raise UntrustedCheckpoint(
                    f"{path} names {name}, which is not on yoloprune's allow-list of model classes; "
                    "if you trust the file, load it with --trust (trust=True)"
                )
            allowed.append((obj, name))
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {str(exc).splitlines()[0]}") from exc
    except ModuleNotFoundError as exc:
        raise ValueError(f"{path} needs the Python package that defines its model ({exc.name}); install it") from exc


class _Opaque:
    """Stands in for any class a checkpoint names that is not a tensor or a plain container."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()


_PLAIN = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (
            (module, name) in _PLAIN
            or module in ("torch._utils", "torch.storage")
            or (module == "torch" and (name.endswith("Storage") or name in ("Size", "device") or "dtype" in name))
        ):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        return _Opaque


class _DataPickle:
    """A ``pickle_module`` for ``torch.load`` that rebuilds tensors and plain data and nothing else."""

    Unpickler = _DataUnpickler
    load = staticmethod(lambda f, **kw: _DataUnpickler(f, **kw).load())
    __name__ = "yoloprune.io._DataPickle"


def load_data(path: str | Path) -> dict[str, Any]:
    """Load only the tensors and plain data of a checkpoint: every other object becomes an opaque stand-in, so no
    class named in the file is instantiated and no upstream package is needed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_DataPickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


def write_atomic(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file through a temporary file in the same folder, renamed over ``path`` only once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through ``write_atomic``."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def check_output(out: str | Path, inputs: list[str | Path], overwrite: bool = False) -> Path:
    """Refuse to overwrite an input, and an existing file unless ``overwrite``."""
    out = Path(out)
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"refusing to overwrite the input {given}; choose another -o")
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise ValueError(f"cannot write {out}: {parent} is not a writable folder")
    return out
