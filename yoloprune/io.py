"""Reading and writing checkpoints: the one restricted loader (full unpickling only when trusted), a reader that
creates no upstream object, atomic writes."""

from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

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
    import torch

    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (torch >= 1.6 zip format): {exc}") from exc


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValueError(f"{path} is not a readable PyTorch checkpoint: {detail}")


MAX_DEPTH = 100
"""How deeply a checkpoint section may nest (a real one: under 30, modules included; json and repr recurse)."""
MAX_ITEMS = 1_000_000
"""How many values a section may hold, each shared reference counted every time it appears (as a serialiser writes
them): a real model with its plan and report holds under 100,000."""
MAX_STRING = 1 << 20
"""The longest string (or bytes) a section may hold."""
MAX_TEXT = 64 << 20
"""How many characters (and bytes) a section's strings may hold in all, shared ones counted every time."""
FLATTENED = ("train_args",)
"""Sections the family adapters reduce to flat plain values on load: nesting in them is dropped, not refused."""


class OversizedSection(ValueError):
    """A checkpoint section larger or deeper than any real one: a crafted file, refused before anything copies it."""


def check_sections(path: str | Path, ckpt: Any) -> None:
    """Refuse a checkpoint whose sections (every top-level entry; a model's attributes too) exceed ``MAX_DEPTH``,
    ``MAX_ITEMS``, ``MAX_STRING`` or ``MAX_TEXT``. Shared references are counted each time they appear, since a
    serialiser (json, yaml, repr, ONNX metadata) writes them out each time: a few MB of pickle memo references can
    stand for 10^30 values ("billion laughs"). Tensors count as one value (their storage is read, never expanded)."""
    if not isinstance(ckpt, dict):
        ckpt = {"checkpoint": ckpt}
    for key, value in ckpt.items():
        problem = _oversized(value, depth_limit=key not in FLATTENED)
        if problem:
            raise OversizedSection(f"{path}: its {str(key)[:40]!r} section {problem}; refusing a crafted file")


def _oversized(root: Any, depth_limit: bool = True) -> str | None:
    """What bound ``root`` exceeds, or None: an iterative post-order walk that sizes each object once (by id) as the
    sum of its parts, so a value shared a billion times costs one visit. A reference back to an object still being
    walked (a cycle) counts as one value; an ``nn.Module`` counts in full only where it first appears (a model is
    written once however often its layers are referenced)."""
    import enum

    import numpy as np
    import torch
    from torch import nn

    sizes: dict[int, tuple[int, int, int]] = {}  # id -> (values, characters, depth), once walked
    open_ids: set[int] = set()
    modules: set[int] = set()  # ids of the modules walked
    counted: set[int] = set()  # ids of the modules already counted in some parent
    keep: list[Any] = []  # objects whose ids are in ``sizes``, alive for the walk
    stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
    while stack:
        obj, parts = stack[-1]
        if parts is None:
            key = id(obj)
            if key in sizes or key in open_ids:
                stack.pop()
                continue
            if isinstance(obj, (str, bytes, bytearray)):
                if len(obj) > MAX_STRING:
                    return f"holds a string of {len(obj):,} characters (more than {MAX_STRING:,})"
                sizes[key] = (1, len(obj), 0)
                keep.append(obj)
                stack.pop()
                continue
            found = _parts(obj, (torch.Tensor, np.ndarray, torch.dtype, torch.device, enum.Enum, type), nn.Module)
            if found is None:
                stack.pop()
                continue
            open_ids.add(key)
            keep.append(obj)
            stack[-1] = (obj, found)
            stack.extend((child, None) for child in found)
            continue
        stack.pop()
        open_ids.discard(id(obj))
        values, text, depth = 1, 0, 0
        for child in parts:
            v, t, d = sizes.get(id(child), (1, 0, 0))
            if id(child) in modules:
                v, t = (1, 0) if id(child) in counted else (v, t)  # a module counts in full where it first appears
                counted.add(id(child))
            values, text, depth = values + v, text + t, max(depth, d + 1)
        sizes[id(obj)] = (values, text, depth)
        if isinstance(obj, nn.Module):
            modules.add(id(obj))
        if values > MAX_ITEMS:
            return f"holds more than {MAX_ITEMS:,} values once its shared references are expanded"
        if text > MAX_TEXT:
            return f"holds more than {MAX_TEXT:,} characters of strings once its shared references are expanded"
        if depth_limit and depth > MAX_DEPTH:
            return f"nests deeper than {MAX_DEPTH} levels"
    return None


def _parts(obj: Any, leaves: tuple[type, ...], module: type) -> list[Any] | None:
    """The values inside ``obj`` a serialiser would write (None for a leaf)."""
    if obj is None or isinstance(obj, (bool, int, float, complex, *leaves)):
        return None
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, module):
        state = vars(obj)
        return [v for k, v in state.items() if k not in ("_parameters", "_buffers")]
    state = getattr(obj, "__dict__", None)
    return list(state.values()) if isinstance(state, dict) else None


def load_checkpoint(
    path: str | Path,
    trust: bool | None = None,
    remap: Mapping[str, str] | None = None,
    pickle_module: Any = None,
    packages: tuple[str, ...] = (),
) -> Any:
    """Load a checkpoint; every checkpoint yoloprune reads comes through here.

    Checkpoints of YOLO families are pickles of whole models, and unpickling runs what the file names. By default
    this reads them with ``yoloprune.unpickle``: tensors, plain data, and the model-layer classes of torch.nn and
    the YOLO packages' model modules, each created empty and filled with its attributes (no constructor, no
    function the file chooses, no import the allow-list does not hold). A file naming anything else raises
    ``UntrustedCheckpoint``. With ``trust=True`` (or inside ``trusting()``, the CLI's ``--trust``) it unpickles
    fully, after a one-line warning. ``remap`` maps a clone's bare top-level modules onto a package
    (``{"models": "yolov5.models"}``); ``packages`` adds module roots whose model modules may be named (a clone's
    ``models``, given with ``--repo``); ``pickle_module`` is what a trusted load unpickles with.
    """
    from yoloprune.unpickle import ForbiddenGlobal, Policy, torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    trust = _TRUST.get() if trust is None else trust
    try:
        if trust:
            log.warning("yoloprune: loading %s with full unpickling (--trust): it can run any code it names", path)
            import torch

            extra = {"pickle_module": pickle_module} if pickle_module is not None else {}
            ckpt = torch.load(path, map_location="cpu", weights_only=False, **extra)
        else:
            ckpt = torch_load(path, Policy(remap, extra_roots=packages))
    except ForbiddenGlobal as exc:
        hint = "; if you trust the file, load it with --trust (trust=True)" if exc.trust_helps else ""
        raise UntrustedCheckpoint(f"{path} names {exc}{hint}") from None
    except ModuleNotFoundError as exc:
        raise ValueError(f"{path} needs the Python package that defines its model ({exc.name}); install it") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc
    except (AttributeError, TypeError, IndexError, KeyError, ValueError, OverflowError) as exc:  # a malformed pickle
        raise _unreadable(path, exc) from exc
    check_sections(path, ckpt)
    return ckpt


def load_data(path: str | Path) -> dict[str, Any]:
    """Load only the tensors and plain data of a checkpoint: every other object becomes an inert
    ``yoloprune.unpickle.Opaque``, so no class named in the file is created or imported and no upstream package is
    needed."""
    from yoloprune.unpickle import ForbiddenGlobal, torch_load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        data = torch_load(path, opaque=True)
    except ForbiddenGlobal as exc:
        raise UntrustedCheckpoint(f"{path} names {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc
    except (AttributeError, TypeError, IndexError, KeyError, ValueError, OverflowError) as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    check_sections(path, data)
    return data


def write_atomic(path: str | Path, write: Callable[[io.BufferedWriter], None], overwrite: bool = False) -> Path:
    """Write a file through a temporary file in the same folder, moved to ``path`` only once complete. An existing
    ``path`` is replaced only with ``overwrite``; without it the move is exclusive, so a file that appeared at
    ``path`` meanwhile (another command's) is kept and this one fails."""
    path = check_links(path) if not overwrite else Path(path)
    if not overwrite and path.exists():
        raise ValueError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _publish_new(tmp: str, path: Path) -> None:
    """Move the finished ``tmp`` to ``path`` unless ``path`` exists, in one exclusive step (a hard link, which
    fails on an existing name, then the temporary name removed)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ValueError(f"{path} exists; pass --overwrite to replace it") from None
    except OSError:  # no hard links on this file system: reserve the name exclusively, then fill it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise ValueError(f"{path} exists; pass --overwrite to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def save_atomic(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
    """``torch.save`` through ``write_atomic``."""
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f), overwrite)


def check_output(out: str | Path, inputs: list[str | Path], overwrite: bool = False) -> Path:
    """Refuse to overwrite an input, and an existing file unless ``overwrite``."""
    out = Path(out)
    check_links(out)
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"refusing to overwrite the input {given}; choose another -o")
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give a file name")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and (not parent.is_dir() or not _can_create_in(parent)):
        raise ValueError(f"cannot write {out}: {parent} is not a writable folder")
    return out


def check_links(out: str | Path) -> Path:
    """Refuse an output (file or folder) that is, or lies under, a symlink to nothing: ``exists()`` is False for one,
    so it would pass as new and fail only when written, after all the work."""
    out = Path(out)
    dangling = next((p for p in (out, *out.parents) if p.is_symlink() and not p.exists()), None)
    if dangling == out:
        raise ValueError(f"{out} is a symlink to nothing (dangling); remove it or choose another -o")
    if dangling is not None:
        raise ValueError(f"cannot write {out}: {dangling} is a symlink to nothing (dangling)")
    return out


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``, found by creating (and removing) one the way ``write_atomic``
    does: permission bits do not tell for root, read-only or special file systems, ACLs or network mounts."""
    try:
        with tempfile.NamedTemporaryFile(prefix=".yoloprune-probe.", dir=folder):
            return True
    except OSError:
        return False


LOCK_NAME = ".yoloprune.lock"


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` for one command: another yoloprune command writing into it meanwhile fails at once.

    The lock is an advisory ``flock`` on ``folder/.yoloprune.lock``, which the system releases however the process
    ends (a file left by a killed command blocks nothing); the file is removed on exit, and so are the folders this
    created when they are left empty (a command that failed on its input leaves nothing behind)."""
    folder = check_links(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write into {folder}: {exc.strerror}") from None
    path = folder / LOCK_NAME
    release = _hold(path)
    if release is None:
        raise ValueError(f"{folder} is in use by another yoloprune command ({path}); wait for it or choose another -o")
    try:
        yield folder
    finally:
        release()
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break


def _hold(path: Path) -> Callable[[], None] | None:
    """Lock ``path`` exclusively; the function that removes it and releases the lock, or None while another
    process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the file's existence is the lock
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return None
        return lambda: path.unlink(missing_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:  # a file system without locks: go on unlocked
            pass
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return functools.partial(_unlock, path, fd)
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file as it finished: lock the one there now


def _unlock(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)  # while still locked, so nobody takes a lock on a file about to go
    os.close(fd)
