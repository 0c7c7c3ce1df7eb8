"""Family adapters: everything yoloprune knows about YOLOv5, YOLOv7, ultralytics and YOLOX, behind one interface.

Each family is a module (``yoloprune.adapters.<family>``) that implements ``Adapter`` in full; ``adapter(family)`` is
the registry. Callers never probe an adapter with ``hasattr`` and never import a family module or a private helper:
they go through ``adapter``, ``resolve``, ``load_model``, ``save_model`` and ``load``. Adapters import their upstream
package lazily (``packages.require`` names the extra to install); the graph never imports an adapter.

To add a family: write ``adapters/<family>.py`` implementing every member of ``Adapter``, add its name to
``FAMILIES``, and teach ``detect.guess_family`` to recognise its files.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from yoloprune.graph.registry import Policy
from yoloprune.images import Preprocess

FAMILIES = ("ultralytics", "yolov5", "yolov7", "yolox")
CONFIG_SUFFIXES = (".yaml", ".yml")


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


class Adapter(Protocol):
    """What a family provides. Every family module implements all of it (``tests/test_layout.py`` checks)."""

    FAMILY: str
    PREPROCESS: Preprocess  # how images become inputs (channel order, scale, letterbox fill)
    FIXED_PARAMETERS: tuple[str, ...]  # name fragments of parameters that are never trained

    def matches(self, model: Any) -> bool:
        """Whether ``model`` is this family's network (or a wrapper of it)."""

    def target(self, model: Any, prune_head: bool = False) -> Target:
        """What the graph needs: the network, the outputs that stay intact, module policies, protected modules."""

    def from_config(self, spec: Any) -> nn.Module:
        """A network with random weights from a config name, path or dict (checked before any parser sees it)."""

    def load(self, spec: str) -> Loaded:
        """A network from a config or a checkpoint (read through ``yoloprune.io``), with what ``save`` needs."""

    def save(self, loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
        """Write the family's own checkpoint format, with yoloprune's ``section`` (plan, config, state_dict)."""

    def rebuild(self, section: dict[str, Any]) -> nn.Module:
        """The pruned network from yoloprune's section: config, plan replayed, weights; no pickled object used."""

    def export_module(self, net: nn.Module, dynamic: bool = False, end2end: bool = False) -> nn.Module:
        """A copy of ``net`` in the family's export mode (fused, heads returning predictions only); with ``end2end``
        the NMS-free one-to-one head's (B, K, 6) detections, refused where the model has none."""

    def export_metadata(self, net: nn.Module, imgsz: int) -> dict[str, Any]:
        """ONNX metadata in the keys the family's runtimes read."""

    def nms_layout(self, net: nn.Module) -> tuple[str, int]:
        """How export-mode predictions are laid out (``xywh-class``, ``xywh-obj-class``, ``end2end``) and nc."""

    def classes(self, net: nn.Module) -> int:
        """How many classes the head predicts."""

    def set_classes(self, net: nn.Module, nc: int, names: Sequence[str] | None = None) -> None:
        """Give the head ``nc`` fresh class outputs (named ``names``), started as the family's trainer starts them,
        keeping every other output row (boxes, objectness, masks) and the body; the count is recorded in the plan.
        Only the names change when the head already has ``nc``."""

    def train_loss(self, net: nn.Module, imgsz: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """The family's detection loss for yoloprune's own training loop (refused where the family trains with
        its own trainer)."""

    def raw_outputs(self, out: Any) -> list[torch.Tensor] | None:
        """The raw head maps to distil from, when the decoded predictions are written in place; else None."""


class _Generic:
    """The adapter of a network no family recognises: prunable and exportable, no detection layout."""

    FAMILY = "generic"
    PREPROCESS = Preprocess()
    FIXED_PARAMETERS: tuple[str, ...] = ()

    @staticmethod
    def matches(model: Any) -> bool:
        return isinstance(model, nn.Module)

    @staticmethod
    def target(model: Any, prune_head: bool = False) -> Target:
        return Target("generic", model)

    @staticmethod
    def _no_family(what: str) -> ValueError:
        return ValueError(f"{what} needs a detection family; this model's family is not recognised")

    @classmethod
    def from_config(cls, spec: Any) -> nn.Module:
        raise cls._no_family("building from a config")

    @classmethod
    def load(cls, spec: str) -> Loaded:
        raise cls._no_family("loading")

    @classmethod
    def save(cls, loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
        raise cls._no_family("saving a checkpoint")

    @classmethod
    def rebuild(cls, section: dict[str, Any]) -> nn.Module:
        raise cls._no_family("rebuilding")

    @classmethod
    def export_module(cls, net: nn.Module, dynamic: bool = False, end2end: bool = False) -> nn.Module:
        import copy

        if end2end:
            raise cls._no_family("an NMS-free head")
        return copy.deepcopy(net).float().eval()

    @staticmethod
    def export_metadata(net: nn.Module, imgsz: int) -> dict[str, Any]:
        return {}

    @classmethod
    def nms_layout(cls, net: nn.Module) -> tuple[str, int]:
        raise cls._no_family("an output layout (NMS, evaluation)")

    @classmethod
    def classes(cls, net: nn.Module) -> int:
        raise cls._no_family("a class count")

    @classmethod
    def set_classes(cls, net: nn.Module, nc: int, names: Sequence[str] | None = None) -> None:
        raise cls._no_family("a new class list")

    @classmethod
    def train_loss(cls, net: nn.Module, imgsz: int) -> Any:
        raise cls._no_family("training with labels")

    @staticmethod
    def raw_outputs(out: Any) -> list[torch.Tensor] | None:
        return None


GENERIC: Adapter = cast(Adapter, _Generic)


def adapter(family: str) -> Adapter:
    """The adapter of ``family`` (one of ``FAMILIES``, or ``generic``); imports that family module only."""
    if family == "generic":
        return GENERIC
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join((*FAMILIES, 'generic'))}")
    return cast(Adapter, importlib.import_module(f"{__name__}.{family}"))


def section_family(section: Mapping[str, Any], path: Any) -> str:
    """The family yoloprune's section of the checkpoint ``path`` names; a clear error when it is none yoloprune has
    (the name picks the module that reads the file, so nothing else may pass)."""
    family = section.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"{path}: its yoloprune section names family {family!r:.40}, not one of {', '.join(FAMILIES)}")
    return family


def unwrap(model: Any) -> Any:
    """The network inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (any other object as it is)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def family_of_model(model: Any) -> str:
    """The family whose adapter recognises ``model`` (unwrapped), else ``generic``."""
    model = unwrap(model)
    for name in FAMILIES:
        if adapter(name).matches(model):
            return name
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return "generic"


def resolve(model: Any, family: str | None = None, prune_head: bool = False) -> Target:
    """The ``Target`` for ``model`` (unwrapped from DataParallel/DDP): its family's adapter when one recognises it
    (or ``family``'s), a plain module otherwise."""
    model = unwrap(model)
    return adapter(family or family_of_model(model)).target(model, prune_head)


# ----------------------------------------------------------------------------------------- models by name and file
def load_model(spec: str, family: str | None = None) -> Loaded:
    """A model from a config name/path or a checkpoint file, with its family: ``family`` when given, else what the
    file contains (the classes a checkpoint names, the modules a local config lists, a YOLOX zoo name such as
    ``yolox-s``). Config names that are not files (``yolov8n.yaml``, ``yolov5s.yaml``) mean ultralytics' configs
    unless ``family`` says otherwise."""
    from yoloprune.adapters.detect import guess_family

    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} cannot be loaded; choose one of {', '.join(FAMILIES)}")
    family = family or guess_family(spec) or "ultralytics"
    if family == "ultralytics":
        path = Path(spec)
        if path.suffix not in CONFIG_SUFFIXES and not path.exists():
            raise FileNotFoundError(f"no such model: {spec}")
        if path.suffix not in (*CONFIG_SUFFIXES, ".pt", ".pth"):
            raise ValueError(f"cannot load {spec}: expected a model config (.yaml) or a checkpoint (.pt)")
    return adapter(family).load(spec)


def trained_imgsz(path: str | Path) -> int | None:
    """The image size a checkpoint says it was trained (or pruned) at: yoloprune's section, ultralytics'
    ``train_args`` or YOLOv5/YOLOv7's ``opt``; None when it says none, or the file cannot be read as plain data (its
    loader then says why)."""
    from yoloprune.io import load_data
    from yoloprune.options import check_imgsz

    try:
        data = load_data(path)
    except (ValueError, OSError, RuntimeError):
        return None
    candidates = []
    for key, entry in (("yoloprune", "imgsz"), ("train_args", "imgsz"), ("opt", "imgsz"), ("opt", "img_size")):
        holder = data.get(key)
        if isinstance(holder, dict):
            candidates.append(holder.get(entry))
    for value in candidates:
        value = value[0] if isinstance(value, list) and value else value
        try:
            return check_imgsz(value)
        except ValueError:
            continue
    return None


def save_model(loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``loaded.model`` in its family's own checkpoint format, with yoloprune's ``section``; an existing
    ``path`` is replaced only with ``overwrite``."""
    return adapter(loaded.family).save(loaded, path, section, overwrite)


def load(path: str | Path) -> nn.Module:
    """Rebuild a pruned model from a checkpoint yoloprune wrote: the original config (checked), the pruning plan
    replayed onto it, and the saved weights. Only tensors and plain data are read from the file; no pickled object
    is created."""
    from yoloprune.adapters.config_check import ConfigError
    from yoloprune.images import check_imgsz
    from yoloprune.io import load_data

    data = load_data(path)
    section = data.get("yoloprune") if isinstance(data, dict) else None
    if not isinstance(section, dict) or "plan" not in section:
        raise ValueError(f"{path} was not written by yoloprune (no pruning plan in it)")
    family = section_family(section, path)
    check_section(section, path)
    check_imgsz(section.get("imgsz", 640))  # a crafted size must be refused before anything is allocated at it
    family_adapter = adapter(family)
    try:
        net = family_adapter.rebuild(section)
    except ConfigError as exc:  # the stored config: named by the file it came from
        raise ConfigError(f"{path}: its stored config: {exc}") from None
    except RuntimeError as exc:  # load_state_dict: the saved weights do not fit the rebuilt network
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: its saved weights do not fit the model its section describes ({first})") from None
    names = section.get("names")
    if names and len(names) != family_adapter.classes(net):
        raise ConfigError(
            f"{path}: its yoloprune section names {len(names)} classes, "
            f"but the head it describes predicts {family_adapter.classes(net)}"
        )
    return net


def check_section(section: Mapping[str, Any], path: Any) -> None:
    """The parts of yoloprune's section ``load`` rebuilds from, checked for shape before any is used: a config
    mapping, a plan whose ``removed`` maps module names to channel indices, a state_dict mapping, class names
    ``{0: name, 1: name, ...}``. Each refusal is one ``ConfigError`` line naming ``path``."""
    from yoloprune.adapters.config_check import ConfigError

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{path}: its yoloprune section {what}")

    if not isinstance(section.get("config"), dict):
        raise refuse("has no model config" if "config" not in section else "has a config that is not a mapping")
    plan = section.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("removed"), dict):
        raise refuse("has a plan that is not a pruning plan (a mapping with 'removed')")
    for module, removed in plan["removed"].items():
        if not isinstance(module, str) or not isinstance(removed, list):
            raise refuse("has a plan whose 'removed' does not map module names to lists of channels")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in removed):
            raise refuse(f"has a plan that removes channels of {module[:60]!r} by other than their indices")
    if "sizes" in plan and not isinstance(plan["sizes"], dict):
        raise refuse("has a plan whose 'sizes' is not a mapping")
    if not isinstance(section.get("state_dict"), dict):
        raise refuse("has no state_dict (a mapping of weights)")
    names = section.get("names")
    if names is None or names == {}:
        return
    if not isinstance(names, dict) or sorted(names, key=str) != sorted(range(len(names)), key=str):
        raise refuse("has class names that are not {0: name, 1: name, ...}")
    if not all(isinstance(v, str) for v in names.values()):
        raise refuse("has class names that are not strings")


__all__ = [
    "FAMILIES",
    "GENERIC",
    "Adapter",
    "Loaded",
    "Target",
    "adapter",
    "check_section",
    "family_of_model",
    "load",
    "load_model",
    "resolve",
    "save_model",
    "section_family",
    "unwrap",
]
