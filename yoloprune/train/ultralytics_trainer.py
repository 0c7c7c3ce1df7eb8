"""Fine-tune a pruned ultralytics network with ultralytics' own trainer, without it rebuilding the network.

Stock ``Model.train()`` rebuilds the network from ``model.yaml`` and copies the weights whose shapes match, which
silently replaces a pruned model by an unpruned one. ``PrunedDetectionTrainer`` trains the network stored in the
checkpoint it is given (``model=pruned.pt``), as it is, keeping every other feature of ultralytics' trainer: EMA,
augmentation, warm-up, resume, AMP on CUDA and multi-GPU DDP (its subprocesses build this class again and load the
same checkpoint). The trainer is given the teacher for distillation on the head outputs (a module or a checkpoint
path), its weight and the sparsity penalty as arguments; only ultralytics' DDP workers, which build this class again
from a generated script, get them through the environment (``ddp_environment`` writes it, ``from_ddp_environment``
reads it back: the only place the environment is used), with an in-memory teacher written to the run folder first.

Every checkpoint the trainer reads (the model, ``last.pt`` on resume and NaN recovery, ``best.pt`` for the final
validation) goes through ``yoloprune.io.load_checkpoint``, never through ultralytics' full unpickling.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import ultralytics.engine.trainer as stock_trainer
from torch import nn
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import unwrap_model

from yoloprune.adapters.ultralytics import guard, task_validator
from yoloprune.data.datasets import DatasetError
from yoloprune.train.kd import kd_loss
from yoloprune.train.label_cache import label_cache_in

RECOVERY_ENV = "YOLOPRUNE_RECOVERY"  # the trainer's settings, for ultralytics' DDP workers only (JSON)
DDP_TEACHER = "teacher.pt"  # an in-memory teacher, written into the run folder for DDP workers


class DistillCriterion:
    """The model's own detection loss plus ``weight`` x head distillation from a frozen teacher."""

    def __init__(self, base: Any, teacher: nn.Module, weight: float):
        self.base, self.teacher, self.weight = base, teacher, weight

    def __call__(self, preds: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, items = self.base(preds, batch)
        if not isinstance(preds, dict):  # validation: keep the keys, add nothing
            return loss, {**items, "kd_loss": torch.zeros((), device=loss.device)}
        with torch.no_grad():
            teacher = self.teacher(batch["img"])
        kd = kd_loss(preds, teacher) * self.weight
        return loss + kd * batch["img"].shape[0], {**items, "kd_loss": kd.detach()}

    def update(self) -> None:  # ultralytics calls this on criteria that schedule themselves
        if hasattr(self.base, "update"):
            self.base.update()


def read_checkpoint(weight: str | Path, device: Any = None, *_: Any, **__: Any) -> tuple[nn.Module, dict[str, Any]]:
    """ultralytics' ``load_checkpoint`` (an fp32 model in eval mode carrying its ``args``, and the checkpoint) read
    through yoloprune's restricted loader."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    from yoloprune.io import load_checkpoint

    ckpt = load_checkpoint(weight)
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{weight} holds no model to train")
    train_args = ckpt.get("train_args") if isinstance(ckpt.get("train_args"), dict) else {}
    net = net.float()
    task = guess_model_task(net.yaml if isinstance(getattr(net, "yaml", None), dict) else net)  # the network's own
    net.args = {**DEFAULT_CFG_DICT, **{k: v for k, v in train_args.items() if k in DEFAULT_CFG_DICT}, "task": task}
    net.pt_path = str(weight)
    if not hasattr(net, "stride"):
        net.stride = torch.tensor([32.0])
    return net.eval().to(device) if device is not None else net.eval(), ckpt


@contextlib.contextmanager
def _restricted_reads() -> Iterator[None]:
    """Within this block the stock trainer's ``load_checkpoint`` is yoloprune's restricted reader. Fails closed: an
    ultralytics whose trainer no longer reads checkpoints through that name is refused rather than trusted."""
    if not callable(getattr(stock_trainer, "load_checkpoint", None)):
        raise RuntimeError(
            "this ultralytics version's trainer reads checkpoints in a way yoloprune cannot restrict; "
            "yoloprune fine-tunes with ultralytics >= 8.4"
        )
    original = stock_trainer.load_checkpoint
    stock_trainer.load_checkpoint = read_checkpoint
    try:
        yield
    finally:
        stock_trainer.load_checkpoint = original


def load_teacher(teacher: nn.Module | str | Path, device: torch.device) -> nn.Module:
    """The frozen fp32 teacher on ``device``: a copy of a module (the caller's is left as it is), or the model of a
    checkpoint read through yoloprune's restricted loader."""
    from yoloprune.io import load_checkpoint

    if isinstance(teacher, nn.Module):
        net = copy.deepcopy(teacher)
    else:
        ckpt = load_checkpoint(teacher)
        net = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
        if not isinstance(net, nn.Module):
            raise ValueError(f"{teacher} holds no model to distil from")
    net = net.float().to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def start_fitness(model: str | Path, args: dict[str, Any], folder: Path) -> float | None:
    """ultralytics' validation fitness (what picks ``best.pt``) of the checkpoint a fine-tune starts from, on the
    run's data, image size and batch (label caches kept in the run ``folder``): a fine-tune keeps its start when no
    epoch beats it. None when the run does not validate (``val=False``)."""
    import copy

    if str(args.get("val", True)).lower() == "false":
        return None
    net, _ = read_checkpoint(model)
    keys = ("data", "imgsz", "batch", "device", "workers", "split")
    validator = task_validator(net)(
        save_dir=Path(folder),  # not ultralytics' runs/detect/... under the working directory
        args={**{k: args[k] for k in keys if k in args}, "plots": False, "verbose": False, "save_json": False},
    )
    with label_cache_in(folder):
        stats = validator(model=copy.deepcopy(net))  # the validator fuses what it is given
    return float(stats.get("fitness", 0.0))


def write_checkpoint(net: nn.Module, path: Path) -> Path:
    """``net`` written as an ultralytics checkpoint the trainer (or stock ``YOLO``) loads."""
    from yoloprune.adapters import Loaded, adapter

    loaded = Loaded(net, "ultralytics", "memory", {"train_args": {}, "half": False})  # training continues from it
    return adapter("ultralytics").save(loaded, path, {}, True)


class PrunedTrainer:
    """What turns one of ultralytics' task trainers into one that trains the given network as it is (see the module
    docstring), adding ``kd_weight`` x distillation from ``teacher`` (a module or a checkpoint path) to the task's
    loss, and with ``sparsity`` > 0 a sparsity penalty: on every batch norm scale (``sparsity_kind="bn"``) or group
    lasso over the coupled channels (``"group"``). Mixed in before the task trainer (``TRAINERS``)."""

    def __init__(
        self,
        cfg: Any = DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict[str, list[Any]] | None = None,
        *,
        teacher: nn.Module | str | Path | None = None,
        kd_weight: float = 1.0,
        sparsity: float = 0.0,
        sparsity_kind: str = "bn",
    ):
        self.teacher, self.kd_weight, self.sparsity, self.sparsity_kind = teacher, kd_weight, sparsity, sparsity_kind
        if RANK != -1 and (given := from_ddp_environment()) is not None:  # a DDP worker, built without arguments
            self.teacher, self.kd_weight, self.sparsity, self.sparsity_kind = given
        super().__init__(cfg, overrides, _callbacks)
        if _attach_teacher not in self.callbacks["on_pretrain_routine_end"]:  # DDP workers may get it from the parent
            self.add_callback("on_pretrain_routine_end", _attach_teacher)
        if print_epoch not in self.callbacks["on_fit_epoch_end"]:
            self.add_callback("on_fit_epoch_end", print_epoch)
        use_every_core(self)  # after select_device, which set cpu_count - 1 threads

    def train(self) -> Any:
        if not self.ddp:
            return super().train()
        with ddp_environment(self):
            return super().train()

    def check_resume(self, overrides: dict[str, Any]) -> None:
        with _restricted_reads():
            super().check_resume(overrides)

    def setup_model(self) -> Any:
        with _restricted_reads():
            return super().setup_model()

    def _handle_nan_recovery(self, epoch: int) -> bool:
        with _restricted_reads():
            return super()._handle_nan_recovery(epoch)

    def final_eval(self) -> None:
        """Validate ``best.pt`` read through yoloprune's loader (stock validation unpickles the file fully); the
        checkpoints are rewritten by ``finetune`` afterwards, so they are not stripped here."""
        if not self.best.exists():
            return
        net, _ = read_checkpoint(self.best)
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False
        self.metrics = self.validator(model=net)
        self.metrics.pop("fitness", None)
        self.epoch += 1  # as the stock trainer: log the best metrics at step epochs + 1
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        """ultralytics' dataset, its label cache kept in the run folder instead of the dataset's label folders."""
        with label_cache_in(self.save_dir):
            return super().build_dataset(img_path, mode, batch)

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        if not isinstance(weights, nn.Module):
            raise ValueError(f"{type(self).__name__} trains an existing network: pass model=<checkpoint.pt>")
        head = weights.model[-1] if isinstance(getattr(weights, "model", None), nn.Sequential) else None
        if head is not None and hasattr(head, "nc") and head.nc != self.data["nc"]:
            raise DatasetError(
                f"class count mismatch: the model predicts {head.nc} classes, the dataset has {self.data['nc']}"
            )
        for p in weights.parameters():
            p.requires_grad_(True)
        return guard(weights)  # every checkpoint this run writes stops stock training of the pruned network

    def optimizer_step(self) -> None:
        """With ``sparsity`` = lambda, add the subgradient of a sparsity penalty before the step: lambda * |gamma| of
        every batch norm scale (network slimming, a later ``--importance bn`` prune), or with ``sparsity_kind="group"``
        lambda * sum_c ||W_c|| over the prunable coupled channels (group lasso)."""
        strength = float(self.sparsity or 0.0)
        if strength:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            net = unwrap_model(self.model)
            if self.sparsity_kind == "group":
                if getattr(self, "_lasso", None) is None:
                    self._lasso = group_lasso(net, int(self.args.imgsz))
                self._lasso.add_gradient(net, strength * scale)
            else:
                for m in net.modules():
                    if (
                        isinstance(m, nn.modules.batchnorm._NormBase)
                        and m.weight is not None
                        and m.weight.grad is not None
                    ):
                        m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=strength * scale)
        super().optimizer_step()


class PrunedDetectionTrainer(PrunedTrainer, DetectionTrainer):
    """ultralytics' ``DetectionTrainer`` on the pruned network as it is (``PrunedTrainer``)."""


class PrunedSegmentationTrainer(PrunedTrainer, SegmentationTrainer):
    """ultralytics' ``SegmentationTrainer`` on the pruned network as it is (``PrunedTrainer``)."""


class PrunedPoseTrainer(PrunedTrainer, PoseTrainer):
    """ultralytics' ``PoseTrainer`` on the pruned network as it is (``PrunedTrainer``)."""


class PrunedOBBTrainer(PrunedTrainer, OBBTrainer):
    """ultralytics' ``OBBTrainer`` on the pruned network as it is (``PrunedTrainer``)."""


TRAINERS: dict[str, type] = {
    "detect": PrunedDetectionTrainer,
    "segment": PrunedSegmentationTrainer,
    "pose": PrunedPoseTrainer,
    "obb": PrunedOBBTrainer,
}
"""The trainer of each task ``finetune`` trains (its validator is the task's own: mask, keypoint or rotated-box
mAP beside boxes)."""


def trainer_for(net: nn.Module) -> type:
    """The pruned trainer of ``net``'s task; a clear error for a task ``finetune`` does not train."""
    from ultralytics.nn.tasks import guess_model_task

    task = guess_model_task(net)
    if task not in TRAINERS:
        raise ValueError(f"fine-tuning {task} models is not supported; prune, evaluate and export them instead")
    return TRAINERS[task]


def group_lasso(net: nn.Module, imgsz: int) -> Any:
    """A ``GroupLasso`` over ``net``'s prunable channels (first layer and head protected, as ``prune`` does)."""
    from yoloprune.adapters import resolve
    from yoloprune.graph import build
    from yoloprune.pruning.run import first_layer
    from yoloprune.pruning.sparsity import GroupLasso

    training = net.training
    try:
        target = resolve(net.eval())
        first = first_layer(target.module)
        x = torch.zeros(1, 3, imgsz, imgsz, device=next(net.parameters()).device)
        ignore = (*target.ignore, *([first] if first else []))
        graph = build(target.module, x, outputs=target.outputs, ignore=ignore, policies=target.policies)
    finally:
        net.train(training)
    if target.module is not net:
        raise ValueError("group lasso needs the trained network itself to be the pruned module")
    return GroupLasso(graph)


def cpu_threads() -> int:
    """The torch threads CPU training uses: every core this process may run on (``taskset`` limits them;
    ``OMP_NUM_THREADS`` cannot, ultralytics sets it to 1 on import)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_every_core(trainer: Any) -> None:
    """On CPU, train on every core: ultralytics' ``select_device`` sets torch to ``cpu_count - 1`` threads (one of
    two cores), keeping one for its dataloader."""
    if getattr(trainer, "device", None) is not None and trainer.device.type == "cpu":
        torch.set_num_threads(cpu_threads())


def print_epoch(trainer: Any) -> None:
    """One line per epoch, as yoloprune's own loop prints (ultralytics' bars and tables show with ``--verbose``):
    the epoch's mean losses and the validation mAP50-95 of the task's boxes (and masks or keypoints)."""
    if trainer.epoch >= trainer.epochs:  # the final validation of best.pt reports as epoch N + 1: not an epoch
        return
    losses = trainer.tloss if isinstance(trainer.tloss, dict) else {}
    total = sum(float(v) for v in losses.values())
    metrics = trainer.metrics or {}
    scores = "  ".join(
        f"val {'' if k.endswith('(B)') else k[-2] + ' '}mAP50-95 {float(v):.4f}"
        for k, v in metrics.items()
        if k.startswith("metrics/mAP50-95(")
    )
    print(f"epoch {trainer.epoch + 1}/{trainer.epochs}: loss {total:.4f}  {scores}".rstrip(), flush=True)


def _attach_teacher(trainer: PrunedTrainer) -> None:
    """After the EMA copy exists (so it never carries the teacher), wrap the model's criterion with distillation."""
    if trainer.teacher is None:
        return
    model = unwrap_model(trainer.model)
    base = model.init_criterion()
    model.criterion = DistillCriterion(base, load_teacher(trainer.teacher, trainer.device), float(trainer.kd_weight))


@contextlib.contextmanager
def ddp_environment(trainer: PrunedDetectionTrainer) -> Iterator[None]:
    """While ultralytics launches its DDP workers: the trainer's settings in ``RECOVERY_ENV`` (an in-memory
    teacher written to ``DDP_TEACHER`` in the run folder, for the workers to load), and the run folder kept (stock
    DDP deletes it first, with the checkpoints the workers read)."""
    teacher = trainer.teacher
    if isinstance(teacher, nn.Module):
        teacher = write_checkpoint(teacher, Path(trainer.save_dir) / DDP_TEACHER)
    settings = {
        "teacher": str(teacher) if teacher is not None else None,
        "kd_weight": float(trainer.kd_weight),
        "sparsity": float(trainer.sparsity or 0.0),
        "sparsity_kind": str(trainer.sparsity_kind),
    }
    previous, resume = os.environ.get(RECOVERY_ENV), trainer.resume
    os.environ[RECOVERY_ENV] = json.dumps(settings)
    trainer.resume = True  # read by ultralytics' DDP launch only: the run folder is not deleted
    try:
        yield
    finally:
        trainer.resume = resume
        if previous is None:
            os.environ.pop(RECOVERY_ENV, None)
        else:
            os.environ[RECOVERY_ENV] = previous


def from_ddp_environment() -> tuple[str | None, float, float, str] | None:
    """In a DDP worker: the teacher path, kd weight, sparsity and its kind ``ddp_environment`` wrote (None when it
    wrote nothing)."""
    text = os.environ.get(RECOVERY_ENV)
    if not text:
        return None
    given = json.loads(text)
    return given["teacher"], float(given["kd_weight"]), float(given["sparsity"]), str(given["sparsity_kind"])
