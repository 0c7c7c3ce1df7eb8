"""Model configs are code to the families' parsers, and sizes to their allocators: check one before a parser sees it.

ultralytics' ``parse_model`` evaluates a config's ``activation`` and looks layer names up in its module's globals;
YOLOv5's and YOLOv7's evaluate the activation, every layer name and every string argument. A config read from a
checkpoint (``yoloprune.load``, a model's ``yaml``) or from a file is therefore checked first: layer names must be
model-layer classes, the activation a ``torch.nn`` class called with literals, and every string a parser evaluates
either a literal or one of the few names the shipped configs use. Anything else is refused before a parser runs.

Sizes are bounded too (``MAX_*`` below): a config that asks for 1e8 repeats or a billion channels is refused in one
line instead of building for minutes and failing in the allocator. What the static checks cannot see (a kernel as
wide as the bounds allow, a ``from`` a layer cannot take) is caught while the parser builds (``building``): every
allocation is counted against a budget, and whatever the parser raises becomes one ``ConfigError`` line.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from yoloprune.options import MAX_CLASSES
from yoloprune.unpickle import literal_call


class ConfigError(ValueError):
    """A model config (or the yoloprune section holding one) is malformed, too large to build, or holds something its
    family's parser would evaluate as code."""


ANCHOR_ARG_NAMES = frozenset({"nc", "anchors", "None", "True", "False", "nearest", "bilinear", "bicubic", "area"})
"""The bare names YOLOv5/YOLOv7 configs pass as layer arguments (their parsers ``eval`` them)."""
ULTRALYTICS_ARG_NAMES = frozenset(
    {"nc", "kpt_shape", "None", "True", "False", "nearest", "bilinear", "bicubic", "area"}
)
"""The bare names ultralytics configs pass as layer arguments (``parse_model`` replaces a name of its own locals with
the local, so ``d`` or ``ch`` would hand a layer the whole config or the channel list)."""

MAX_LAYERS = 1024
"""Layers in ``backbone`` + ``head``: the shipped configs have at most 106 (YOLOv7-E6E and kin)."""
MAX_REPEATS = 64
"""A layer's repeats after the depth multiple (``max(round(n * depth), 1)``): shipped configs reach 12 (9 x 1.33)."""
MAX_CHANNELS = 8192
"""A layer's output channels after the width multiple (ultralytics also caps them at the scale's ``max_channels``),
and the bound on any other integer argument: shipped configs reach 1280 (1024 x 1.25) and 2048 (RT-DETR)."""
MAX_MULTIPLE = 4.0
"""``depth_multiple``/``width_multiple`` and a scale's depth and width: shipped configs use 0.25 to 1.5."""
MAX_KEYPOINTS = 512
"""``kpt_shape[0]``: shipped pose configs use 17; ``kpt_shape[1]`` must be 2 or 3."""
MAX_INPUT_CHANNELS = 16
"""``ch``/``channels``, the input image's channels: 3, or 1 for grey images."""
MAX_REG_MAX = 64
"""``reg_max``, the DFL bins per box side: 16 in every shipped config (1 in YOLO26)."""
MAX_ANCHORS = 16
"""Anchors per level (``anchors: 3`` or three pairs per level in every shipped config), and at most this many levels."""
MAX_UPSAMPLE = 8
"""An ``nn.Upsample`` scale factor (2 in every shipped config); its ``size`` must be None."""
MAX_ARGS = 16
"""Arguments of one layer, and numbers in one nested argument (an anchor list) up to ``MAX_ARG_ITEMS``."""
MAX_ARG_ITEMS = 256
MAX_ACTIVATION_ARG = 1e4
"""The magnitude of an activation's numeric arguments (``nn.LeakyReLU(0.1)``): an overflowing literal is refused."""
MAX_TENSOR_ELEMENTS = 2**28
"""The elements of any one tensor a parser creates while building (a weight, a buffer, the stride probe's feature
maps): 1 GiB in fp32. The largest in a shipped model is about 15 million (a 1280-channel 3x3 convolution)."""
MAX_BUILD_ELEMENTS = 2**30
"""All elements a parser allocates while building a model: 4 GiB in fp32, against about 140 million for the largest
shipped model (YOLOv5x6)."""

NN_LAYERS = frozenset(
    {"Upsample", "MaxPool2d", "AvgPool2d", "ZeroPad2d", "Identity", "Dropout", "BatchNorm2d", "ConvTranspose2d"}
)
"""``nn.`` layers a config may name: those every parser either gives the channels it needs (``BatchNorm2d``,
``ConvTranspose2d``) or that keep their input's channels, as the parsers assume for any other layer. ``nn.Conv2d`` and
kin would get the arguments as written and no input channels, so they are refused (YOLOv7's parser, which handles
``nn.Conv2d``, adds it)."""
ELEMENTWISE = frozenset(
    {
        "ReLU", "ReLU6", "SiLU", "LeakyReLU", "Hardswish", "Hardsigmoid", "Sigmoid", "Tanh", "Mish", "GELU", "ELU",
        "CELU", "SELU", "Softplus", "Hardtanh", "Identity", "Tanhshrink", "Softsign", "LogSigmoid", "Hardshrink",
        "Softshrink", "Threshold", "RReLU",
    }
)  # fmt: skip
"""The ``torch.nn`` activations a config's ``activation`` may name: element-wise, so every layer keeps its shape."""


def _literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def _layer_class(name: Any, namespace: Mapping[str, Any], nn_layers: frozenset[str]) -> bool:
    if not isinstance(name, str):
        return False
    parts = name.split(".")
    if parts[:-1] == ["nn"] and parts[-1] in nn_layers:
        cls = getattr(nn, parts[-1], None)
    elif len(parts) == 1 and name.isidentifier():
        cls = namespace.get(name)
    else:
        return False
    return isinstance(cls, type) and issubclass(cls, nn.Module)


def _short(value: Any) -> str:
    """``value`` for a message: its repr cut to 40 characters, so a message never echoes a file at length."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print (a pickle can hold one)
        return "<a number too long to print>"
    return text if len(text) <= 40 else text[:37] + "..."


def _within(value: float, bound: float) -> bool:
    """Whether a number is finite and no larger than ``bound`` in magnitude (integers of any length compared exactly,
    not converted to float, which overflows)."""
    if isinstance(value, int):
        return abs(value) <= bound
    return math.isfinite(value) and abs(value) <= bound


def check_activation(act: Any, where: str, namespace: Mapping[str, Any] | None = None) -> None:
    """An activation spec must read ``nn.Name(literals)`` (or ``torch.nn.Name``) naming an element-wise activation,
    with numbers of modest size, and must build and run on a small tensor keeping its shape (as the parsers will
    build it for every layer)."""
    if act is None or act is False:
        return
    call = literal_call(act, namespace or {}) if isinstance(act, str) else None
    if call is None:
        raise ConfigError(f"{where}: activation {_short(act)} is not a torch.nn class called with literal arguments")
    cls, args, kwargs = call
    if cls.__name__ not in ELEMENTWISE or getattr(nn, cls.__name__, None) is not cls:
        raise ConfigError(f"{where}: activation {cls.__name__} is not an element-wise torch.nn activation")
    for value in (*args, *kwargs.values()):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and not _within(value, MAX_ACTIVATION_ARG):
            raise ConfigError(
                f"{where}: activation {cls.__name__} takes {_short(value)}, beyond +-{MAX_ACTIVATION_ARG:g}"
            )
    try:
        module = cls(*args, **kwargs)
        x = torch.zeros(1, 2, 2, 2)
        same = module(x).shape == x.shape
    except Exception as exc:  # a wrong argument (type, count, range): the class says which in its own words
        raise ConfigError(
            f"{where}: activation {cls.__name__} cannot be built as written ({type(exc).__name__})"
        ) from None
    if not same:
        raise ConfigError(f"{where}: activation {cls.__name__} changes the shape of what it is given")


def _number(cfg: Mapping[str, Any], key: str, where: str, low: float, high: float, default: Any = None) -> Any:
    """``cfg[key]`` (or ``default``), refused unless a number in (low, high] (None passes when ``default`` is None)."""
    value = cfg.get(key, default)
    if value is None and default is None:
        return None
    return _in_range(value, key, where, low, high)


def _in_range(value: Any, what: str, where: str, low: float, high: float) -> float:
    """``value``, refused unless a number in (low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ConfigError(f"{where}: {what} must be a number in ({low:g}, {high:g}], not {_short(value)}")
    return value


def _integer(value: Any, what: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: {what} must be an integer in [{low}, {high}], not {_short(value)}")
    return value


class _Scale:
    """The depth, width and channel cap a parser will apply to every layer, checked."""

    def __init__(self, cfg: Mapping[str, Any], where: str, scales: bool) -> None:
        self.depth = _number(cfg, "depth_multiple", where, 0, MAX_MULTIPLE, 1.0)
        self.width = _number(cfg, "width_multiple", where, 0, MAX_MULTIPLE, 1.0)
        self.max_channels: float = math.inf
        table = cfg.get("scales") if scales else None
        if not table:
            return
        if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
            raise ConfigError(f"{where}: scales must map scale names to [depth, width, max_channels]")
        for name, entry in table.items():
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ConfigError(f"{where}: scales[{name[:20]!r}] must be [depth, width, max_channels]")
            at = f"{where}: scales[{name[:20]!r}]"
            _in_range(entry[0], "depth", at, 0, MAX_MULTIPLE)
            _in_range(entry[1], "width", at, 0, MAX_MULTIPLE)
            _integer(entry[2], "max_channels", at, 1, MAX_CHANNELS)
        scale = cfg.get("scale") or next(iter(table))
        if not isinstance(scale, str) or scale not in table:
            raise ConfigError(f"{where}: scale {_short(scale)} is none of the config's scales")
        self.depth, self.width, self.max_channels = table[scale]


def _check_top(cfg: Mapping[str, Any], where: str) -> None:
    """The keys every family's parser sizes the model by (besides the multiples and scales)."""
    if cfg.get("nc") is not None:
        _integer(cfg["nc"], "nc", where, 1, MAX_CLASSES)
    for key in ("ch", "channels"):
        if cfg.get(key) is not None:
            _integer(cfg[key], key, where, 1, MAX_INPUT_CHANNELS)
    if cfg.get("reg_max") is not None:
        _integer(cfg["reg_max"], "reg_max", where, 1, MAX_REG_MAX)
    kpt = cfg.get("kpt_shape")
    if kpt is not None:
        if not isinstance(kpt, (list, tuple)) or len(kpt) != 2:
            raise ConfigError(f"{where}: kpt_shape must be [keypoints, 2 or 3], not {_short(kpt)}")
        _integer(kpt[0], "kpt_shape[0]", where, 1, MAX_KEYPOINTS)
        _integer(kpt[1], "kpt_shape[1]", where, 2, 3)
    anchors = cfg.get("anchors")
    if anchors is not None and not isinstance(anchors, int):
        if not isinstance(anchors, list) or not 0 < len(anchors) <= MAX_ANCHORS:
            raise ConfigError(f"{where}: anchors must be a count or at most {MAX_ANCHORS} lists of anchor sizes")
        for level in anchors:
            if not isinstance(level, list) or not 0 < len(level) <= 2 * MAX_ANCHORS or len(level) % 2:
                raise ConfigError(f"{where}: each level of anchors must list width, height pairs")
            for size in level:
                _number({"anchor": size}, "anchor", where, 0, MAX_CHANNELS)
    elif anchors is not None:
        _integer(anchors, "anchors", where, 1, MAX_ANCHORS)


def check_layers(
    cfg: Any,
    where: str,
    namespace: Mapping[str, Any],
    arg_names: frozenset[str] | None,
    nn_layers: frozenset[str] = NN_LAYERS,
    scales: bool = True,
) -> None:
    """Check a YOLO-style config: ``backbone``/``head`` lists of ``[from, repeats, module, args]``, each module a
    layer class of ``namespace`` or one of ``nn_layers``, each ``from`` an earlier layer, repeats, channels and sizes
    within the ``MAX_*`` bounds, and each string argument a literal, an activation call, or one of ``arg_names``
    (``None``: ``ULTRALYTICS_ARG_NAMES``). ``scales`` says whether the family reads ultralytics' ``scales`` table."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: a model config must be a mapping, not {type(cfg).__name__}")
    check_activation(cfg.get("activation"), where, namespace)
    _check_top(cfg, where)
    scale = _Scale(cfg, where, scales)
    names = ULTRALYTICS_ARG_NAMES if arg_names is None else arg_names
    index = 0
    for section in ("backbone", "head"):
        layers = cfg.get(section)
        if layers is None:
            continue
        if not isinstance(layers, list):
            raise ConfigError(f"{where}: {section} must be a list of layers")
        for i, layer in enumerate(layers):
            if index >= MAX_LAYERS:
                raise ConfigError(f"{where}: more than {MAX_LAYERS} layers")
            _check_layer(layer, f"{where}: {section} layer {i}", index, namespace, names, nn_layers, scale, cfg)
            index += 1


def _check_from(origin: Any, index: int, where: str) -> None:
    """``from``: -1 (the previous layer, or the input for the first), or earlier layers by index (k < ``index``) or
    counted back (-``index`` <= k < -1), alone or as a list."""
    sources = origin if isinstance(origin, list) else [origin]
    if not sources or len(sources) > MAX_ARGS:
        raise ConfigError(f"{where}: from must be a layer index or a list of up to {MAX_ARGS}")
    for k in sources:
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"{where}: from must hold layer indices (integers), not {_short(k)}")
        if k != -1 and not (0 <= k < index or -index <= k < -1):
            raise ConfigError(f"{where}: from {k} names no earlier layer (this is layer {index})")


def _check_value(value: Any, where: str, depth: int = 0) -> int:
    """A literal argument: None, a boolean, a finite number within ``MAX_CHANNELS``, a short string, or a short list
    of those; returns how many items it held."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        if not _within(value, MAX_CHANNELS):
            raise ConfigError(f"{where}: argument {_short(value)} is beyond +-{MAX_CHANNELS}")
        return 1
    if isinstance(value, str):
        if len(value) > 40:
            raise ConfigError(f"{where}: argument {_short(value)} is too long a string")
        return 1
    if isinstance(value, (list, tuple)) and depth < 3:
        count = sum(_check_value(v, where, depth + 1) for v in value)
        if count > MAX_ARG_ITEMS:
            raise ConfigError(f"{where}: an argument holds more than {MAX_ARG_ITEMS} items")
        return count
    raise ConfigError(f"{where}: argument {_short(value)} is not a number, string, boolean or short list")


def _resolved(arg: Any, names: frozenset[str], namespace: Mapping[str, Any], where: str) -> Any:
    """What a parser makes of a string argument (names resolve to the config's values, which are checked on their
    own; a literal to its value); refused when it is none of the things a parser may take."""
    if not isinstance(arg, str):
        return arg
    if arg in names:
        return None  # a name the parser substitutes (nc, anchors, kpt_shape) or a mode string: checked elsewhere
    if _literal(arg):
        return ast.literal_eval(arg)
    if literal_call(arg, namespace) is not None:
        check_activation(arg, where, namespace)
        return None
    raise ConfigError(f"{where}: argument {_short(arg)} is neither a literal nor a name the parser may take")


def _check_layer(
    layer: Any,
    where: str,
    index: int,
    namespace: Mapping[str, Any],
    names: frozenset[str],
    nn_layers: frozenset[str],
    scale: _Scale,
    cfg: Mapping[str, Any],
) -> None:
    if not isinstance(layer, (list, tuple)) or len(layer) != 4:
        raise ConfigError(f"{where} must be [from, repeats, module, args]")
    origin, repeats, module, args = layer
    _check_from(origin, index, where)
    _integer(repeats, "repeats", where, 1, MAX_REPEATS * 16)
    if repeats > 1 and max(round(repeats * scale.depth), 1) > MAX_REPEATS:
        raise ConfigError(f"{where}: {repeats} repeats x depth {scale.depth:g} is more than {MAX_REPEATS}")
    if not _layer_class(module, namespace, nn_layers):
        raise ConfigError(f"{where} names {_short(module)}, which is not a model layer class")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise ConfigError(f"{where}: args must be a list of at most {MAX_ARGS}")
    values = [_resolved(arg, names, namespace, where) for arg in args]
    for value in values:
        _check_value(value, where)
    first = values[0] if values else None
    if isinstance(first, (int, float)) and not isinstance(first, bool) and isinstance(args[0], (int, float, str)):
        channels = min(first, scale.max_channels) * scale.width
        if channels > MAX_CHANNELS:
            raise ConfigError(f"{where}: {first:g} channels x width {scale.width:g} is more than {MAX_CHANNELS}")
    if module == "nn.Upsample":
        size, factor = [*values, None, None][:2]
        if size is not None or isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise ConfigError(f"{where}: nn.Upsample must be given [None, scale factor, mode]")
        if not 0 < factor <= MAX_UPSAMPLE:
            raise ConfigError(f"{where}: nn.Upsample scale factor {factor:g} is outside (0, {MAX_UPSAMPLE}]")


# ------------------------------------------------------------------------------------------------- building
_FACTORIES = frozenset(
    {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.empty_strided, torch.eye}
)


def _requested(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """Elements a factory call (``torch.empty(3, 4)``, ``torch.zeros((3, 4))``, ``torch.full(size, x)``) asks for."""
    size = kwargs.get("size")
    if size is None:
        if args and isinstance(args[0], (tuple, list, torch.Size)):
            size = args[0]
        else:
            size = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    dims = [d for d in size if isinstance(d, int)]
    return math.prod(max(d, 0) for d in dims)


class _Budget(TorchFunctionMode):
    """Counts what a parser allocates while it builds; refuses any tensor beyond ``MAX_TENSOR_ELEMENTS`` (before
    allocating it when a factory asks for it) and a total beyond ``MAX_BUILD_ELEMENTS``."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where, self.total = where, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _FACTORIES:
            asked = _requested(args, kwargs)
            self.total += asked
            if asked > MAX_TENSOR_ELEMENTS or self.total > MAX_BUILD_ELEMENTS:
                raise ConfigError(f"{self.where}: the model it describes is too large to build")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.numel() > MAX_TENSOR_ELEMENTS:
            raise ConfigError(
                f"{self.where}: the model it describes is too large to build (a tensor of {out.numel():,})"
            )
        return out


@contextlib.contextmanager
def building(where: str, family: str) -> Iterator[None]:
    """Run a family's parser on a checked config: allocations within the budget (``_Budget``), and anything the
    parser raises (an index it cannot resolve, arguments a layer refuses, an allocation that fails) as one
    ``ConfigError`` line naming ``where``."""
    try:
        with _Budget(where):
            yield
    except ConfigError:
        raise
    except Exception as exc:  # the parser's own failure on this config, whatever its type
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 100 else detail[:97] + "..."
        raise ConfigError(
            f"{where}: the {family} parser cannot build this config ({type(exc).__name__}{': ' if detail else ''}"
            f"{detail})"
        ) from None


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
    """An ultralytics config (its layer names resolve in ``ultralytics.nn.tasks``; ``scales`` apply)."""
    check_layers(cfg, where, ultralytics_namespace(), None)


def _builds_a_model(cls: type) -> bool:
    """Whether constructing ``cls`` parses a config of its own (``Model(cfg)``, ``DetectionModel(cfg)``, ...): such
    a class named in a config would build a second model from an unchecked nested config."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return True
    return "cfg" in params or cls.__name__.endswith("Model")


def check_anchor(cfg: Any, where: str, yolo_module: Any, nn_layers: frozenset[str] = NN_LAYERS) -> None:
    """YOLOv5/YOLOv7: layer names resolve in the family's ``models.yolo`` globals, which ``parse_model`` evaluates;
    only its layer classes may be named, never the whole-model classes. The parsers index ``nc``, ``anchors``,
    ``depth_multiple`` and ``width_multiple`` without defaults, so a config must have them."""
    if isinstance(cfg, dict):
        missing = [k for k in ("nc", "anchors", "depth_multiple", "width_multiple") if cfg.get(k) is None]
        if missing:
            raise ConfigError(f"{where}: the config has no {', '.join(missing)}")
    namespace = {
        k: v
        for k, v in vars(yolo_module).items()
        if isinstance(v, type) and issubclass(v, nn.Module) and not _builds_a_model(v)
    }
    check_layers(cfg, where, namespace, ANCHOR_ARG_NAMES, nn_layers, scales=False)


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
