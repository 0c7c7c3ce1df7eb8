"""Reading and writing checkpoints: trusted pickles, a reader that instantiates no upstream class, atomic writes."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def load_trusted(path: str | Path) -> Any:
    """Load a checkpoint with full unpickling.

    Checkpoints of YOLO families are Python pickles of whole models: loading one runs code named in the file, so only
    load files you trust (your own training runs, official releases). torch >= 2.6 refuses them with its default
    ``weights_only=True``; this function is the one place yoloprune lifts that.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
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


def check_output(out: str | Path, inputs: list[str | Path], force: bool = False) -> Path:
    """Refuse to overwrite an input, and an existing file unless ``force``."""
    out = Path(out)
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"refusing to overwrite the input {given}; choose another -o")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise ValueError(f"{out} is a directory")
    return out
