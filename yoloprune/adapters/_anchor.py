"""The one implementation behind the YOLOv5 and YOLOv7 adapters: ``AnchorFamily``, parameterised by what the two
anchor-based families differ in (package, heads and network classes, config lookup, policies, head export flags,
checkpoint keys). Each family module builds one instance and binds the ``Adapter`` members from it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from yoloprune.adapters import CONFIG_SUFFIXES, Loaded, Target
from yoloprune.adapters.checkpoint import (
    carried_plan,
    class_aliases,
    names_dict,
    read_checkpoint,
    set_requires_grad,
    write_checkpoint,
)
from yoloprune.adapters.config_check import NN_LAYERS, ConfigError, building, check_anchor
from yoloprune.adapters.detect import class_names, family_of
from yoloprune.adapters.packages import _REPO, quiet, require, source
from yoloprune.graph.registry import Policy
from yoloprune.images import Preprocess

PLAN_KEY = "yoloprune"  # in model.yaml: the composed plan, ignored by YOLOv5's and YOLOv7's own parsers
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


def head_of(net: nn.Module) -> nn.Module | None:
    """The last layer of a YOLOv5/YOLOv7 network's ``model`` Sequential (its head), if it has one."""
    layers = getattr(net, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers):
        return layers[-1]
    return None


@dataclass(frozen=True)
class AnchorFamily:
    """An anchor-based YOLO family (YOLOv5, YOLOv7): the whole ``Adapter``, from what sets the family apart.

    Message templates: ``no_head`` takes ``{net}`` (the network's class), ``unsupported`` takes ``{where}`` (the
    config's name) and ``{head}`` (its head's class); ``missing_config`` follows ``no such model config: <spec>``."""

    PREPROCESS: ClassVar[Preprocess] = Preprocess(rgb=True, scale=1 / 255, fill=114)  # letterboxed RGB in [0, 1]
    FIXED_PARAMETERS: ClassVar[tuple[str, ...]] = ()

    family: str  # the family's name, as ``FAMILIES`` spells it
    label: str  # the family in messages
    package: str  # the upstream package's import name
    install: str  # how to install it
    heads: tuple[str, ...]  # class names of the detection heads
    networks: tuple[str, ...]  # class names of the networks
    wrappers: tuple[str, ...]  # class names of wrappers holding the network as ``.model``
    loggers: tuple[str, ...]  # upstream loggers silenced while building and fusing
    model_class: str  # the class in ``models.yolo`` a config builds
    reset_grids: Callable[[nn.Module], None]  # drops the grids the head caches
    export_head: Callable[[nn.Module, bool], None]  # puts a (fused copy's) head in export mode, given ``dynamic``
    no_head: str  # ``target``'s error for a network without a head
    unsupported: str  # ``from_config``'s error for a config whose head is none of ``heads``
    missing_config: str  # the rest of the error for a config that is not found
    checkpoint_keys: Callable[[dict[str, Any]], dict[str, Any]]  # the family's own checkpoint keys, from ``meta``
    config_folders: tuple[str, ...] = ()  # folders beside ``models/yolo.py`` that hold the configs the package ships
    model_classes: Mapping[str, str] = field(default_factory=dict)  # per head class, where not ``model_class``
    nms_heads: bool = False  # whether heads with ``include_nms`` (YOLOv7's) are this family's
    sticky_activation: bool = False  # parse_model sets ``Conv.default_act`` for good when a config names one
    policies: Mapping[Any, Policy] = field(default_factory=dict)
    on_load: Callable[[nn.Module, dict[str, Any], dict[str, Any]], nn.Module] | None = None  # fixes a read network
    nn_layers: frozenset[str] = NN_LAYERS  # the ``nn.`` layers the family's parser gives channels or that keep them

    def yolo(self) -> Any:
        """The upstream ``models.yolo`` (the package's, or the clone's after ``use_repo``)."""
        return require(f"{source(self.package)}models.yolo", self.label, self.install)

    def network(self, model: Any) -> Any:
        """The network inside the family's wrappers (``AutoShape`` and the like hold it as ``.model``)."""
        while type(model).__name__ in self.wrappers and isinstance(getattr(model, "model", None), nn.Module):
            model = model.model
        return model

    def matches(self, model: Any) -> bool:
        """The family's networks, whether their classes come from the package (``yolov5.models.*``) or a clone
        (``models.yolo``/``models.common``), matched by class name and module, never by identity."""
        net = self.network(model)
        if not isinstance(net, nn.Module) or type(net).__name__ not in self.networks:
            return False
        head = head_of(net)
        if head is None or type(head).__name__ not in self.heads:
            return False
        if hasattr(type(head), "include_nms"):  # YOLOv7's heads
            return self.nms_heads
        return family_of(class_names(net)) == self.family

    @staticmethod
    def detections(out: Any) -> Any:
        """The eval-mode outputs that must stay intact: the decoded predictions (and mask protos), not the raw maps."""
        if isinstance(out, tuple):
            kept = tuple(o for o in out if not isinstance(o, list))
            return kept[0] if len(kept) == 1 else kept
        return out

    def target(self, model: Any, prune_head: bool = False) -> Target:
        """Prune the backbone and neck; with ``prune_head`` the head's inner layers too (Segment's Proto)."""
        net = self.network(model)
        head = head_of(net)
        if head is None or type(head).__name__ not in self.heads:
            raise ValueError(self.no_head.format(net=type(net).__name__))
        self.reset_grids(net)
        ignore: tuple[str, ...] = () if prune_head else (f"model.{len(net.model) - 1}",)
        history = (getattr(net, "yaml", None) or {}).get(PLAN_KEY)

        def record(plan: dict[str, Any]) -> None:
            net.yaml = {**(getattr(net, "yaml", None) or {}), PLAN_KEY: plan}

        return Target(self.family, net, self.detections, self.policies, ignore, history=history, record=record)

    # -------------------------------------------------------------------------------------- loading and saving
    def config_path(self, spec: str) -> Path:
        """A path, or a config name the package ships (YOLOv5's ``yolov5s.yaml``, ``yolov5n6.yaml``,
        ``yolov5n-seg.yaml``)."""
        path = Path(spec)
        if path.is_file():
            return path
        if self.config_folders:
            root = Path(self.yolo().__file__).parent
            for folder in self.config_folders:
                if (root / folder / path.name).is_file():
                    return root / folder / path.name
        raise FileNotFoundError(f"no such model config: {spec}{self.missing_config}")

    def from_config(self, spec: str | dict) -> nn.Module:
        """A network with random weights from a config name or path, or a config dict (as a model's ``.yaml``)."""
        import yaml

        yolo = self.yolo()
        if isinstance(spec, dict):
            cfg, name = copy.deepcopy(spec), None
        else:
            path = self.config_path(spec)
            cfg, name = yaml.safe_load(path.read_text()), path.name
        where = name or "this config"
        if isinstance(cfg, dict):
            cfg.pop(PLAN_KEY, None)
        head = self.check_config(cfg, where)
        if self.sticky_activation and not cfg.get("activation"):
            yolo.Conv.default_act = nn.SiLU()
        with quiet(*self.loggers), building(where, self.label):
            net = getattr(yolo, self.model_classes.get(head, self.model_class))(cfg)
        if name:
            net.yaml_file = name
        return net

    def check_config(self, cfg: Any, where: str) -> str:
        """Check a config (``check_anchor``) whose last head layer is one of the family's heads; returns that head."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: a model config must be a mapping")
        layers = cfg.get("head")
        last = layers[-1] if isinstance(layers, list) and layers else None
        head = str(last[2])[:40] if isinstance(last, (list, tuple)) and len(last) == 4 else ""
        if head not in self.heads:
            raise ConfigError(self.unsupported.format(where=where, head=head))
        check_anchor(cfg, where, self.yolo(), self.nn_layers)
        return head

    def load(self, spec: str) -> Loaded:
        """A network from a config (random weights) or a checkpoint (the EMA, else the model, in fp32 and
        trainable), with the checkpoint's class naming, precision and earlier pruning kept for ``save``."""
        if Path(spec).suffix in CONFIG_SUFFIXES:
            return Loaded(self.from_config(spec), self.family, spec, {"half": True, "bare": False})
        self.yolo()
        ckpt, bare = read_checkpoint(spec, self.package)
        net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
        if not isinstance(net, nn.Module) or not self.matches(net):
            kind = type(net).__name__ if net is not None else type(ckpt).__name__
            raise ValueError(
                f"{spec} is not a {self.label} detection checkpoint (its model is a {kind}); pass --family"
            )
        cfg = getattr(self.network(net), "yaml", None)
        if cfg is not None:  # what ``save`` writes for ``yoloprune.load``: refused now, not after pruning
            stored = {k: v for k, v in cfg.items() if k != PLAN_KEY} if isinstance(cfg, dict) else cfg
            self.check_config(stored, f"{spec}: its model.yaml")
        half = any(p.dtype == torch.float16 for p in net.parameters())
        for m in net.modules():  # checkpoints written by torch < 1.11
            if isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
                m.recompute_scale_factor = None
        meta: dict[str, Any] = {"half": half, "bare": bare, "aliases": class_aliases(spec)}
        section = ckpt.get("yoloprune")
        if isinstance(section, dict):
            meta["pruning"] = {k: section[k] for k in ("version", "settings", "report") if k in section}
        net = set_requires_grad(net.float(), True)
        if self.on_load is not None:
            net = self.on_load(net, meta, ckpt)
        return Loaded(net, self.family, str(spec), meta)

    def save(self, loaded: Loaded, path: str | Path, section: dict[str, Any], overwrite: bool = False) -> Path:
        """Write a copy with its grids reset the way train.py's ``strip_optimizer`` does: fp16 unless the source was
        fp32, frozen parameters (which ``attempt_load``'s fuse outside ``no_grad`` needs), classes named as in the
        source file, the family's own keys; plus yoloprune's section (plan and settings, the original config, a
        state_dict sharing the model's storage)."""
        from datetime import datetime

        net = copy.deepcopy(self.network(loaded.model)).eval()
        self.reset_grids(net)
        meta = loaded.meta
        net = set_requires_grad(net.half() if meta.get("half", True) else net.float(), False)
        config = {k: v for k, v in (getattr(net, "yaml", None) or {}).items() if k != PLAN_KEY}
        ckpt = {
            "epoch": -1,
            "best_fitness": None,
            "model": net,
            "ema": None,
            "updates": None,
            "optimizer": None,
            **self.checkpoint_keys(meta),
            "date": datetime.now().isoformat(),
            "yoloprune": {
                **carried_plan(getattr(net, "yaml", None), PLAN_KEY),
                **section,
                "family": self.family,
                "config": config,
                "names": names_dict(getattr(net, "names", None)),
                "state_dict": net.state_dict(),
            },
        }
        bare = bool(meta.get("bare")) and not _REPO
        return write_checkpoint(ckpt, path, self.package, bare, overwrite, meta.get("aliases"))

    def rebuild(self, section: dict[str, Any]) -> nn.Module:
        """The pruned network from yoloprune's checkpoint section: the original config, the plan replayed onto it,
        the saved state_dict loaded strictly (fp16 weights come back as fp32). No pickled module is used."""
        from yoloprune.adapters.heads import replayer
        from yoloprune.graph.plan import rebuild as replay_section

        net, _ = replay_section(section, self.from_config, self.target, replayer(section["plan"], self.set_classes))
        if section.get("names"):
            net.names = [section["names"][i] for i in sorted(section["names"])]
        self.reset_grids(net)
        return net.eval()

    # -------------------------------------------------------------------------------------------------- export
    def export_module(self, net: nn.Module, dynamic: bool = False, end2end: bool = False) -> nn.Module:
        """A copy in the family's own export mode (its export.py): Conv+BN fused, the head returning only its decoded
        predictions (see the family's ``export_head``). No NMS-free head: ``end2end`` is refused."""
        if end2end:
            raise ValueError(f"{self.label} models have no NMS-free head; export without --end2end (--nms embeds NMS)")
        model = copy.deepcopy(self.network(net)).float().eval()
        with torch.no_grad(), quiet(*self.loggers):
            model = model.fuse() if hasattr(model, "fuse") else model
        head = head_of(model)
        self.reset_grids(model)
        self.export_head(head, dynamic)
        return model

    def export_metadata(self, net: nn.Module, imgsz: int) -> dict[str, Any]:
        """Metadata in the keys ultralytics-style runtimes read (stride, task, names, imgsz)."""
        net = self.network(net)
        head = head_of(net)
        stride = getattr(net, "stride", None)
        return {
            "description": "pruned with yoloprune",
            "stride": int(max(stride.tolist())) if isinstance(stride, torch.Tensor) else 32,
            "task": "segment" if type(head).__name__ == "Segment" else "detect",
            "batch": 1,
            "imgsz": [imgsz, imgsz],
            "names": names_dict(getattr(net, "names", None)),
        }

    def nms_layout(self, net: nn.Module) -> tuple[str, int]:
        """Export-mode predictions are (B, N, 5 + nc [+ masks]): xywh, objectness, classes."""
        net = self.network(net)
        head = head_of(net)
        if head is None or not hasattr(head, "nc"):
            raise ValueError(f"{type(net).__name__} has no detection head to add NMS to")
        return "xywh-obj-class", int(head.nc)

    def classes(self, net: nn.Module) -> int:
        """How many classes the head predicts."""
        return self.nms_layout(net)[1]

    def set_classes(self, net: nn.Module, nc: int, names: Sequence[str] | None = None) -> None:
        """Give the head ``nc`` fresh class scores per anchor (named ``names``), as the family's train.py starts
        them (its ``_initialize_biases`` class prior); box, objectness and mask-coefficient rows are kept, and so
        are YOLOv7's implicit layers on them. The count is recorded in the plan (``yoloprune.load`` replays it)."""
        import math

        from yoloprune.adapters.heads import anchor_rows, check_classes, record_classes, remap_rows, remap_vector

        nc, net = check_classes(nc), self.network(net)
        head = head_of(net)
        if head is None or not hasattr(head, "nc"):
            raise ValueError(f"{type(net).__name__} has no head with classes")
        if names is not None:
            net.names = list(names)
        if int(head.nc) == nc:
            return
        rows = anchor_rows(int(head.na), int(head.no), int(head.nc), nc)
        prior = math.log(0.6 / (nc - 0.99))
        for name in ("m", "m2"):
            layers = getattr(head, name, None) or ()
            for i, layer in enumerate(layers):
                layers[i] = remap_rows(layer, rows, prior)
        for implicit in getattr(head, "im", None) or ():
            implicit.implicit = remap_vector(implicit.implicit, rows, 1.0)
            implicit.channel = len(rows)
        head.no = int(head.no) - int(head.nc) + nc
        head.nc = nc
        if hasattr(net, "nc"):
            net.nc = nc
        self.reset_grids(net)
        record_classes(self.target(net, prune_head=True), nc)

    def train_loss(self, net: nn.Module, imgsz: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """The family's own ``ComputeLoss`` on batches of letterboxed images with normalised labels, with the
        scratch-low gains scaled the way its train.py scales them (by the number of levels, classes and the image
        size); returns ``loss(batch) -> tensor``."""
        loss_class = require(f"{source(self.package)}utils.loss", self.label, self.install).ComputeLoss
        net = self.network(net)
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

    @staticmethod
    def raw_outputs(out: Any) -> list[torch.Tensor]:
        """The raw per-level maps the head returns beside its decoded predictions in eval mode, what distillation
        compares (decoding writes in place; see ``yoloprune.train.kd.anchor_kd``)."""
        if isinstance(out, list):
            return out
        for item in out if isinstance(out, tuple) else ():
            if isinstance(item, list):
                return item
        raise ValueError("the head returned no raw maps")
