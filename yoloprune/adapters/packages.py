"""The families' upstream packages: importing one with a clear "install the extra" message, taking YOLOv5/YOLOv7
classes from a user's clone (``--repo``), and keeping upstream code quiet while it builds or fuses."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

_REPO: list[Path] = []  # the clone ``use_repo`` put on sys.path, if any


def use_repo(path: str | Path) -> Path:
    """Take YOLOv5/YOLOv7 classes from a clone of the upstream repository (the folder holding ``models/yolo.py``)
    instead of the PyPI package: the clone goes first on ``sys.path`` and its bare ``models.*``/``utils.*`` names are
    what checkpoints load and save with (the CLI's ``--repo``)."""
    root = Path(path).expanduser().resolve()
    if not (root / "models" / "yolo.py").is_file():
        raise FileNotFoundError(f"--repo {path}: no models/yolo.py there; point at a YOLOv5 or YOLOv7 clone")
    imported = sys.modules.get("models")
    if imported is not None and Path(getattr(imported, "__file__", "") or "").resolve().parent.parent != root:
        raise ValueError(f"--repo {path}: another `models` package is already imported in this process")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    _REPO[:] = [root]
    return root


def source(package: str) -> str:
    """The module prefix a family's classes come from: ``package.`` or, after ``use_repo``, nothing (the clone)."""
    return "" if _REPO else f"{package}."


class MissingPackage(ImportError, ValueError):
    """An optional upstream package is not installed (a ValueError too, so the CLI prints it as a user error)."""


def require(module: str, family: str, install: str) -> types.ModuleType:
    """Import ``module`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        if (exc.name or "").split(".")[0] == root:
            raise MissingPackage(f"{family} models need the {root} package: {install}") from exc
        raise MissingPackage(
            f"{family} models need {root}, which is installed but failed to import ({exc}): {install}"
        ) from exc


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence the model summaries, ``print`` calls and warnings upstream code emits while building or fusing."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
