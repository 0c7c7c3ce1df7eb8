"""What the YOLOv5, YOLOv7 and YOLOX adapters share: importing an optional package with a clear message, telling the
families apart by class names, and reading and writing the whole-model pickles of the repository-style projects.

YOLOv5 and YOLOv7 checkpoints pickle their classes under whatever module path the training code used: ``models.yolo``
and ``models.common`` for a clone of the upstream repository, ``yolov5.models.*`` or ``yolov7.models.*`` for the PyPI
packages. Both packages append their own folder to ``sys.path`` so that the bare ``models`` name resolves, but only one
of them can win, so a process that imported both reads the other family's checkpoints with the wrong classes. The
adapters never rely on that: ``read_checkpoint`` maps bare ``models.*``/``utils.*`` names onto the chosen package, and
``write_checkpoint`` writes them back under the names the source file used, so a clone still loads what it wrote.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import checkpoint_globals, trusted, write_atomic

BARE = ("models", "utils")  # the top-level names a repository clone pickles its classes under

# Class names that exist in YOLOv7's model modules and not in YOLOv5's (both define Conv, Concat, Detect, Model...).
YOLOV7_ONLY = frozenset(
    "BottleneckCSPA BottleneckCSPB BottleneckCSPC Chuncat ConvBN DownC Foldcut Ghost GhostCSPA GhostCSPB GhostCSPC "
    "GhostSPPCSPC GhostStem IAuxDetect IBin IDetect IKeypoint ImplicitA ImplicitM MP Mlp_v2 OREPA_3x3_RepConv ReOrg "
    "RepBottleneck RepBottleneckCSPA RepBottleneckCSPB RepBottleneckCSPC RepConv RepConv_OREPA RepRes RepResCSPA "
    "RepResCSPB RepResCSPC RepResX RepResXCSPA RepResXCSPB RepResXCSPC Res ResCSPA ResCSPB ResCSPC ResX ResXCSPA "
    "ResXCSPB ResXCSPC RobustConv RobustConv2 SP SPPCSPC ST2CSPA ST2CSPB ST2CSPC STCSPA STCSPB STCSPC Shortcut Stem "
    "SwinTransformer2Block SwinTransformerBlock SwinTransformerLayer SwinTransformerLayer_v2 WindowAttention_v2 "
    "autoShape".split()
)
YOLOV7_PREFIXES = ("yolov7.", "yolov7_package.")
YOLOV5_PREFIXES = ("yolov5.",)
YOLOX_PREFIXES = ("yolox.",)
# The YOLOX network classes: Megvii's name, then pixeltable-yolox's (same attributes, so the same state_dict keys).
YOLOX_MODELS = ("YOLOX", "YoloxModule")
YOLOX_KEYS = ("backbone.backbone.stem.conv.conv.weight", "head.cls_preds.0.weight")


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


# ------------------------------------------------------------------------------------------- recognising families
def class_names(model: nn.Module) -> list[tuple[str, str]]:
    """(module, name) of the class of every submodule."""
    return [(type(m).__module__, type(m).__name__) for m in model.modules()]


def family_of(classes: Iterable[tuple[str, str]]) -> str | None:
    """The repository-style family that (module, name) class references point to, or None."""
    classes = list(classes)
    modules = {m for m, _ in classes}
    if any(m.startswith(YOLOV7_PREFIXES) for m in modules):
        return "yolov7"
    if any(m.startswith(YOLOV5_PREFIXES) for m in modules):
        return "yolov5"
    bare = {n for m, n in classes if m.split(".")[0] == "models"}
    if bare:
        return "yolov7" if bare & YOLOV7_ONLY else "yolov5"
    if any(m.startswith(YOLOX_PREFIXES) for m in modules):
        return "yolox"
    return None


def peek(path: str | Path) -> tuple[Any, list[tuple[str, str]]]:
    """The plain data of a checkpoint (tensors left out) and the classes it names, read with
    ``yoloprune.unpickle`` in names-only mode (nothing imported or created); (None, []) if it is unreadable."""
    from ..unpickle import names_in

    try:
        data, names = names_in(path)
    except Exception:  # not a zip checkpoint, or not a checkpoint at all: the family's own loader explains
        return None, []
    return data, [tuple(n.rsplit(".", 1)) for n in names if "." in n]  # type: ignore[misc]


def guess_family(spec: str) -> str | None:
    """The family a model file belongs to, from what it contains; None when it does not say (ultralytics' loader
    then decides, and explains when it cannot read the file)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        return _config_family(path) if path.is_file() else None
    if not path.is_file():
        from .yolox import named

        return "yolox" if named(spec) else None
    data, classes = peek(path)
    section = data.get("yoloprune") if isinstance(data, dict) else None
    if isinstance(section, dict) and "family" in section:
        from . import section_family

        return section_family(section, path)
    if any(m.startswith("ultralytics.") for m, _ in classes):
        return "ultralytics"
    found = family_of(classes)
    if found is not None or not isinstance(data, dict):
        return found
    states = [data, *(data[k] for k in ("model", "ema", "state_dict") if isinstance(data.get(k), dict))]
    return "yolox" if any(all(k in s for k in YOLOX_KEYS) for s in states) else None


def _config_family(path: Path) -> str | None:
    """YOLOv5 and YOLOv7 configs list anchors; ultralytics configs never do."""
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or "anchors" not in cfg or not isinstance(cfg.get("head"), list):
        return None
    layers = [*(cfg.get("backbone") or []), *cfg["head"]]
    used = {str(layer[2]) for layer in layers if isinstance(layer, list) and len(layer) > 2}
    return "yolov7" if used & YOLOV7_ONLY else "yolov5"


# ------------------------------------------------------------------------------------- reading and writing pickles
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
    from ..io import load_checkpoint

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


def anchor_checkpoint(
    net: nn.Module,
    meta: dict[str, Any],
    path: str | Path,
    section: dict[str, Any],
    family: str,
    package: str,
    extra: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a YOLOv5/YOLOv7 network (a copy with its grids reset) the way their ``strip_optimizer`` does: fp16
    unless the source was fp32, frozen parameters, classes named as in the source file; plus yoloprune's section
    (plan and settings, the original config, a state_dict sharing the model's storage). ``extra`` holds the family's
    own keys."""
    from datetime import datetime

    net = set_requires_grad(net.half() if meta.get("half", True) else net.float(), False)
    config = {k: v for k, v in (getattr(net, "yaml", None) or {}).items() if k != "yoloprune"}
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": net,
        "ema": None,
        "updates": None,
        "optimizer": None,
        **extra,
        "date": datetime.now().isoformat(),
        "yoloprune": {
            **section,
            "family": family,
            "config": config,
            "names": names_dict(getattr(net, "names", None)),
            "state_dict": net.state_dict(),
        },
    }
    return write_checkpoint(ckpt, path, package, bool(meta.get("bare")) and not _REPO, overwrite)


def read_anchor_checkpoint(
    spec: str, package: str, label: str, matches: Callable[[nn.Module], bool]
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A YOLOv5/YOLOv7 checkpoint's network (the EMA, else the model) in fp32 and trainable, the ``meta`` that
    ``anchor_checkpoint`` writes it back with (precision, class naming, earlier pruning), and the raw checkpoint."""
    ckpt, bare = read_checkpoint(spec, package)
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module) or not matches(net):
        kind = type(net).__name__ if net is not None else type(ckpt).__name__
        raise ValueError(f"{spec} is not a {label} detection checkpoint (its model is a {kind}); pass --family")
    half = any(p.dtype == torch.float16 for p in net.parameters())
    for m in net.modules():  # checkpoints written by torch < 1.11
        if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    meta: dict[str, Any] = {"half": half, "bare": bare}
    section = ckpt.get("yoloprune")
    if isinstance(section, dict):
        meta["pruning"] = {k: section[k] for k in ("version", "settings", "report") if k in section}
    return set_requires_grad(net.float(), True), meta, ckpt


def anchor_rebuild(section: dict[str, Any], from_config: Callable, target: Callable, reset: Callable) -> nn.Module:
    """A pruned YOLOv5/YOLOv7 network from yoloprune's checkpoint section: the original config, the plan replayed
    onto it, the saved state_dict loaded strictly (fp16 weights come back as fp32). No pickled module is used."""
    from ..plan import rebuild as replay_section

    net, _ = replay_section(section, from_config, target)
    if section.get("names"):
        net.names = [section["names"][i] for i in sorted(section["names"])]
    reset(net)
    return net.eval()


def anchor_nms_layout(net: nn.Module, head: nn.Module | None) -> tuple[str, int]:
    """Export-mode predictions of YOLOv5/YOLOv7 heads are (B, N, 5 + nc [+ masks]): xywh, objectness, classes."""
    if head is None or not hasattr(head, "nc"):
        raise ValueError(f"{type(net).__name__} has no detection head to add NMS to")
    return "xywh-obj-class", int(head.nc)


def anchor_metadata(net: nn.Module, head: nn.Module | None, imgsz: int) -> dict[str, Any]:
    """Export metadata of a YOLOv5/YOLOv7 network in the keys ultralytics-style runtimes read."""
    stride = getattr(net, "stride", None)
    return {
        "description": "pruned with yoloprune",
        "stride": int(max(stride.tolist())) if isinstance(stride, torch.Tensor) else 32,
        "task": "segment" if type(head).__name__ == "Segment" else "detect",
        "batch": 1,
        "imgsz": [imgsz, imgsz],
        "names": names_dict(getattr(net, "names", None)),
    }


ANCHOR_HYP = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "fl_gamma": 0.0,
    "anchor_t": 4.0,
    "label_smoothing": 0.0,
}  # YOLOv5/YOLOv7 scratch-low gains


def anchor_loss(net: nn.Module, loss_class: type, imgsz: int) -> Any:
    """A YOLOv5/YOLOv7 ``ComputeLoss`` for ``net`` with the scratch-low gains scaled the way their train.py scales
    them (by the number of levels, classes and the image size); returns ``loss(batch) -> tensor``."""
    head = net.model[-1]
    hyp = dict(ANCHOR_HYP)
    hyp["box"] *= 3 / head.nl
    hyp["cls"] *= head.nc / 80 * 3 / head.nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / head.nl
    net.hyp, net.gr = hyp, 1.0
    compute = loss_class(net)

    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        targets = torch.cat([batch["batch_idx"][:, None], batch["cls"], batch["bboxes"]], 1).to(batch["img"].device)
        total, _ = compute(net(batch["img"]), targets)
        return total.sum()

    return loss


def raw_maps(out: Any) -> list[torch.Tensor]:
    """The raw per-level maps a YOLOv5/YOLOv7 head returns beside its decoded predictions in eval mode (decoding
    writes in place, so distillation must read these)."""
    if isinstance(out, list):
        return out
    for item in out if isinstance(out, tuple) else ():
        if isinstance(item, list):
            return item
    raise ValueError("the head returned no raw maps")
