"""Model configs are code to the families' parsers: check every string in one before a parser sees it.

ultralytics' ``parse_model`` evaluates a config's ``activation`` and looks layer names up in its module's globals;
YOLOv5's and YOLOv7's evaluate the activation, every layer name and every string argument. A config read from a
checkpoint (``yoloprune.load``, a model's ``yaml``) or from a file is therefore checked first: layer names must be
model-layer classes, the activation a ``torch.nn`` class called with literals, and every string a parser evaluates
either a literal or one of the few names the shipped configs use. Anything else is refused before a parser runs.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from yoloprune.unpickle import literal_call


class ConfigError(ValueError):
    """A model config holds something its family's parser would evaluate as code."""


ANCHOR_ARG_NAMES = frozenset({"nc", "anchors", "None", "True", "False", "nearest", "bilinear", "bicubic", "area"})
"""The bare names YOLOv5/YOLOv7 configs pass as layer arguments (their parsers ``eval`` them)."""


def _literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _layer_class(name: Any, namespace: Mapping[str, Any]) -> bool:
    if not isinstance(name, str):
        return False
    parts = name.split(".")
    if parts[:-1] in (["nn"], ["torch", "nn"]) and parts[-1].isidentifier():
        cls = getattr(nn, parts[-1], None)
    elif len(parts) == 1 and name.isidentifier():
        cls = namespace.get(name)
    else:
        return False
    return isinstance(cls, type) and issubclass(cls, nn.Module)


def check_activation(act: Any, where: str, namespace: Mapping[str, Any] | None = None) -> None:
    """An activation spec must read ``nn.Name(literals)`` (or ``torch.nn.Name``, or a namespace layer class)."""
    if act is None or act is False:
        return
    if not isinstance(act, str) or literal_call(act, namespace or {}) is None:
        raise ConfigError(f"{where}: activation {act!r} is not a torch.nn class called with literal arguments")


def check_layers(cfg: Any, where: str, namespace: Mapping[str, Any], arg_names: frozenset[str] | None) -> None:
    """Check a YOLO-style config: ``backbone``/``head`` lists of ``[from, repeats, module, args]``, each module a
    layer class of ``namespace`` or torch.nn, and each string argument a literal, an activation call, or (when the
    parser evaluates arguments) one of ``arg_names``; ``arg_names=None`` means the parser only looks names up."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a model config must be a mapping, not {type(cfg).__name__}")
    check_activation(cfg.get("activation"), where, namespace)
    for key in ("nc", "depth_multiple", "width_multiple"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    for section in ("backbone", "head"):
        layers = cfg.get(section)
        if layers is None:
            continue
        if not isinstance(layers, list):
            raise ConfigError(f"{where}: {section} must be a list of layers")
        for i, layer in enumerate(layers):
            _check_layer(layer, f"{where}: {section} layer {i}", namespace, arg_names)


def _check_layer(layer: Any, where: str, namespace: Mapping[str, Any], arg_names: frozenset[str] | None) -> None:
    if not isinstance(layer, (list, tuple)) or len(layer) != 4:
        raise ConfigError(f"{where} must be [from, repeats, module, args]")
    origin, repeats, module, args = layer
    if not isinstance(origin, (int, list)) or not isinstance(repeats, int) or isinstance(repeats, bool):
        raise ConfigError(f"{where}: from and repeats must be integers")
    if not _layer_class(module, namespace):
        raise ConfigError(f"{where} names {module!r}, which is not a model layer class")
    if not isinstance(args, list):
        raise ConfigError(f"{where}: args must be a list")
    for arg in args:
        if not isinstance(arg, str) or _literal(arg):
            continue
        if arg_names is None and arg.isidentifier():
            continue
        if arg_names is not None and arg in arg_names:
            continue
        if literal_call(arg, namespace) is not None:
            continue
        raise ConfigError(f"{where}: argument {arg!r} is neither a literal nor a name the parser may take")


UNLOADED_LAYERS = frozenset({"TorchVision"})
"""Layers whose constructors fetch or read weights from elsewhere: never built from a config yoloprune checks."""


def ultralytics_namespace() -> dict[str, Any]:
    """The layer classes of ``ultralytics.nn.modules`` that ``parse_model`` resolves names against (its module's
    globals also hold whole models and loaders, which a config may not name)."""
    from ultralytics.nn import tasks

    return {
        k: v
        for k, v in vars(tasks).items()
        if isinstance(v, type)
        and issubclass(v, nn.Module)
        and v.__module__.startswith("ultralytics.nn.modules.")
        and k not in UNLOADED_LAYERS
    }


def check_ultralytics(cfg: Any, where: str) -> None:
    check_layers(cfg, where, ultralytics_namespace(), None)


def _builds_a_model(cls: type) -> bool:
    """Whether constructing ``cls`` parses a config of its own (``Model(cfg)``, ``DetectionModel(cfg)``, ...): such
    a class named in a config would build a second model from an unchecked nested config."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return True
    return "cfg" in params or cls.__name__.endswith("Model")


def check_anchor(cfg: Any, where: str, yolo_module: Any) -> None:
    """YOLOv5/YOLOv7: layer names resolve in the family's ``models.yolo`` globals, which ``parse_model`` evaluates;
    only its layer classes may be named, never the whole-model classes."""
    namespace = {
        k: v
        for k, v in vars(yolo_module).items()
        if isinstance(v, type) and issubclass(v, nn.Module) and not _builds_a_model(v)
    }
    check_layers(cfg, where, namespace, ANCHOR_ARG_NAMES)


YOLOX_ACTIVATIONS = ("silu", "relu", "lrelu")


def check_yolox(cfg: Any, where: str) -> None:
    """A YOLOX config: numbers and one of YOLOX's activation names."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a YOLOX config must be a mapping")
    for key in ("depth", "width"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 4:
            raise ConfigError(f"{where}: {key} must be a number in (0, 4], not {value!r}")
    classes = cfg.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or not 0 < classes <= 100_000:
        raise ConfigError(f"{where}: num_classes must be a positive integer, not {classes!r}")
    if cfg.get("act", "silu") not in YOLOX_ACTIVATIONS:
        raise ConfigError(f"{where}: act must be one of {', '.join(YOLOX_ACTIVATIONS)}, not {cfg.get('act')!r}")
    if not isinstance(cfg.get("depthwise", False), bool):
        raise ConfigError(f"{where}: depthwise must be true or false")
