"""Fine-tune a pruned ultralytics network with ultralytics' own trainer, without it rebuilding the network.

Stock ``Model.train()`` rebuilds the network from ``model.yaml`` and copies the weights whose shapes match, which
silently replaces a pruned model by an unpruned one. ``PrunedDetectionTrainer`` trains the network stored in the
checkpoint it is given (``model=pruned.pt``), as it is, keeping every other feature of ultralytics' trainer: EMA,
augmentation, warm-up, resume, AMP on CUDA and multi-GPU DDP (its subprocesses build this class again and load the
same checkpoint). A teacher for distillation on the head outputs comes through ``YOLOPRUNE_TEACHER`` /
``YOLOPRUNE_KD_WEIGHT``, so DDP subprocesses see it too.

Every checkpoint the trainer reads (the model, ``last.pt`` on resume and NaN recovery, ``best.pt`` for the final
validation) goes through ``yoloprune.io.load_checkpoint``, never through ultralytics' full unpickling.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import ultralytics.engine.trainer as stock_trainer
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from yoloprune.data.datasets import DatasetError
from yoloprune.train.kd import head_kd
from yoloprune.train.label_cache import label_cache_in

TEACHER_ENV, WEIGHT_ENV, SPARSITY_ENV = "YOLOPRUNE_TEACHER", "YOLOPRUNE_KD_WEIGHT", "YOLOPRUNE_SPARSITY"
SPARSITY_KIND_ENV = "YOLOPRUNE_SPARSITY_KIND"  # "bn" (network slimming) or "group" (group lasso)


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
        kd = head_kd(preds, teacher) * self.weight
        return loss + kd * batch["img"].shape[0], {**items, "kd_loss": kd.detach()}

    def update(self) -> None:  # ultralytics calls this on criteria that schedule themselves
        if hasattr(self.base, "update"):
            self.base.update()


def read_checkpoint(weight: str | Path, device: Any = None, *_: Any, **__: Any) -> tuple[nn.Module, dict[str, Any]]:
    """ultralytics' ``load_checkpoint`` (an fp32 model in eval mode carrying its ``args``, and the checkpoint) read
    through yoloprune's restricted loader."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    from yoloprune.io import load_checkpoint

    ckpt = load_checkpoint(weight)
    net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{weight} holds no model to train")
    train_args = ckpt.get("train_args") if isinstance(ckpt.get("train_args"), dict) else {}
    net = net.float()
    net.args = {**DEFAULT_CFG_DICT, **{k: v for k, v in train_args.items() if k in DEFAULT_CFG_DICT}}
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


def load_teacher(path: str, device: torch.device) -> nn.Module:
    from yoloprune.io import load_checkpoint

    ckpt = load_checkpoint(path)
    net = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{path} holds no model to distil from")
    net = net.float().to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class PrunedDetectionTrainer(DetectionTrainer):
    """ultralytics' ``DetectionTrainer`` that trains the given network as it is (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_callback("on_pretrain_routine_end", _attach_teacher)

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
            raise ValueError("PrunedDetectionTrainer trains an existing network: pass model=<checkpoint.pt>")
        head = weights.model[-1] if isinstance(getattr(weights, "model", None), nn.Sequential) else None
        if head is not None and hasattr(head, "nc") and head.nc != self.data["nc"]:
            raise DatasetError(
                f"class count mismatch: the model predicts {head.nc} classes, the dataset has {self.data['nc']}"
            )
        for p in weights.parameters():
            p.requires_grad_(True)
        return weights

    def optimizer_step(self) -> None:
        """With ``YOLOPRUNE_SPARSITY`` = lambda, add the subgradient of a sparsity penalty before the step: lambda *
        |gamma| of every batch norm scale (network slimming, a later ``--importance bn`` prune), or with
        ``YOLOPRUNE_SPARSITY_KIND=group`` lambda * sum_c ||W_c|| over the prunable coupled channels (group lasso)."""
        strength = float(os.environ.get(SPARSITY_ENV) or 0.0)
        if strength:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            net = unwrap_model(self.model)
            if os.environ.get(SPARSITY_KIND_ENV) == "group":
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


def _attach_teacher(trainer: PrunedDetectionTrainer) -> None:
    """After the EMA copy exists (so it never carries the teacher), wrap the model's criterion with distillation."""
    path = os.environ.get(TEACHER_ENV)
    if not path:
        return
    model = unwrap_model(trainer.model)
    base = model.init_criterion()
    teacher = load_teacher(path, trainer.device)
    model.criterion = DistillCriterion(base, teacher, float(os.environ.get(WEIGHT_ENV, "1.0")))
