"""``yoloprune.finetune``: recover a pruned model's accuracy, with optional distillation from the unpruned one."""

from __future__ import annotations

import difflib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from yoloprune.data.datasets import DatasetError, load_detection_set
from yoloprune.images import check_imgsz
from yoloprune.io import load_checkpoint, save_atomic
from yoloprune.options import check_numbers

SETTINGS_FILE = "yoloprune_finetune.json"


@dataclass
class FinetuneResult:
    """Where the fine-tuned weights went and what training reported."""

    best: Path
    last: Path
    epochs: int
    seconds: float
    seconds_per_epoch: float
    params: int
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best"], out["last"] = str(self.best), str(self.last)
        return out


def _as_checkpoint(model: Any, path: Path) -> Path:
    """A checkpoint file for ``model``: a path is used as is, a module is written (ultralytics format)."""
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"no such model: {model}")
        return Path(model)
    from yoloprune.adapters import Loaded, adapter, resolve

    target = resolve(model)
    if target.family != "ultralytics":
        raise ValueError(f"fine-tuning with labels supports ultralytics models; this is {target.family}")
    adapter("ultralytics").save(Loaded(target.module, "ultralytics", "memory", {"train_args": {}}), path, {}, True)
    return path


def check_inputs(out: Path, inputs: dict[str, Any]) -> None:
    """Refuse an input file (``{flag: path}``) that a fine-tune into ``out`` writes or, started over, replaces:
    anything in ``out/weights`` (the trainer's checkpoints), ``out/start.pt`` and ``out/teacher.pt``."""
    weights = (out / "weights").resolve()
    written = {(out / name).resolve() for name in ("start.pt", "teacher.pt")}
    for flag, given in inputs.items():
        path = Path(given).resolve() if isinstance(given, (str, Path)) else None
        if path is not None and (path in written or path.is_relative_to(weights)):
            raise ValueError(
                f"refusing to overwrite the input {given} ({flag}): fine-tuning into {out} writes it; choose another -o"
            )


OWN_SETTINGS = ("model", "data", "project", "name", "exist_ok", "resume", "task", "mode")  # what finetune sets


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse, before anything is written, a trainer setting ultralytics has not got or yoloprune sets itself, and
    a value of the wrong type or range, by name (``--train-set``)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg

    for key in overrides:
        if key in OWN_SETTINGS:
            raise ValueError(f"--train-set {key}: yoloprune sets it itself (use MODEL, --data, -o or --resume)")
        if key not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"--train-set {key}: ultralytics' trainer has no such setting{hint}")
    try:
        check_cfg(dict(overrides))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--train-set {exc}") from None


def _check_data(data: str | Path) -> None:
    """Fail before training on a dataset that cannot be trained on (both splits are read and validated)."""
    if Path(data).suffix not in (".yaml", ".yml"):
        raise DatasetError(f"fine-tuning needs an ultralytics data yaml with YOLO labels, got {data}")
    for split in ("train", "val"):
        load_detection_set(data, split)


def finetune(
    model: Any,
    data: str | Path,
    *,
    epochs: int = 10,
    teacher: Any = None,
    kd_weight: float = 1.0,
    sparsity: float = 0.0,
    sparsity_kind: str = "bn",
    imgsz: int = 640,
    batch: int = 16,
    device: str = "cpu",
    lr0: float | None = None,
    out: str | Path = "runs/finetune",
    workers: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    plots: bool = False,
    seed: int = 0,
    callbacks: dict[str, Any] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a pruned ultralytics model (checkpoint path or module) on a data yaml, as it is.

    With ``teacher`` (the unpruned model, path or module), ``kd_weight`` x distillation on the head's class logits
    and box distributions is added to the detection loss. Training runs ultralytics' own trainer (EMA,
    augmentation, warm-up, AMP on CUDA, ``device="0,1"`` for DDP); ``overrides`` pass any of its other settings.
    Results go to ``out`` (``weights/best.pt`` and ``last.pt``, rewritten in fp32 with the pruning plan); with
    ``resume`` an interrupted run continues from ``out/weights/last.pt``; a finished or interrupted run in ``out`` is
    only started over with ``overwrite``. The input model is never modified.
    ``sparsity`` > 0 adds BN-L1 regularisation (network slimming, ``sparsity_kind="bn"``) for a later
    ``importance="bn"`` prune, or group lasso over the coupled channels (``sparsity_kind="group"``).
    ``callbacks`` maps ultralytics callback events (``on_fit_epoch_end``...) to functions of the trainer.
    """
    from yoloprune.train.ultralytics_trainer import (
        SPARSITY_ENV,
        SPARSITY_KIND_ENV,
        TEACHER_ENV,
        WEIGHT_ENV,
        PrunedDetectionTrainer,
        read_checkpoint,
    )

    start = time.perf_counter()
    out = Path(out)
    if epochs < 1 or batch < 1:
        raise ValueError("epochs and batch must be >= 1")
    check_imgsz(imgsz)
    check_numbers(kd_weight=kd_weight, sparsity=sparsity, lr0=lr0)
    if sparsity_kind not in ("bn", "group"):
        raise ValueError(f"unknown sparsity kind {sparsity_kind!r}; choose bn or group")
    if str(overrides.get("cache")).lower() == "disk":
        raise ValueError("--train-set cache=disk writes .npy files beside the dataset's images; use cache=ram")
    check_overrides(overrides)
    if not resume:
        check_inputs(out, {"MODEL": model, "--teacher": teacher})
    _check_data(data)
    if not resume and not overwrite and any((out / "weights" / name).exists() for name in ("last.pt", "best.pt")):
        raise ValueError(f"{out} holds a training run; pass --resume to continue it or --overwrite to start over")
    saved = _saved(out) if resume else {}
    family = saved.get("family", "ultralytics") if resume else _family(model)
    if family != "ultralytics":
        return _finetune_family(
            model,
            data,
            out,
            epochs=epochs,
            teacher=teacher,
            kd_weight=kd_weight,
            imgsz=imgsz,
            batch=batch,
            device=device,
            lr0=lr0,
            workers=workers,
            seed=seed,
            start=start,
            resume=resume,
        )
    last = out / "weights" / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    for path in (last,) if resume else (model, teacher):
        if isinstance(path, (str, Path)):
            read_checkpoint(path)  # refused here, before anything is written or handed to the trainer
    if resume:
        teacher_path = saved.get("teacher")
        sparsity = float(saved.get("sparsity") or 0.0)
        sparsity_kind = str(saved.get("sparsity_kind") or "bn")
        # the run continues with the checkpoint's own settings, except where it writes and what it reads: those
        # come from this call, so a run folder from elsewhere cannot send outputs or loads outside it
        args = {
            "resume": str(last),
            "model": str(last),
            "data": str(data),
            "save_dir": str(out.resolve()),
            "device": device,
            "workers": workers,
            "plots": plots,
            "distill_model": None,
            "cache": False,  # cache=disk would write beside the dataset's images
        }
    else:
        out.mkdir(parents=True, exist_ok=True)
        start_ckpt = _as_checkpoint(model, out / "start.pt")
        teacher_path = str(_as_checkpoint(teacher, out / "teacher.pt")) if teacher is not None else None
        args = {
            "model": str(start_ckpt),
            "data": str(data),
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": batch,
            "device": device,
            "workers": workers,
            "project": str(out.parent.resolve()),
            "name": out.name,
            "exist_ok": True,
            "plots": plots,
            "seed": seed,
            **overrides,
        }
        if lr0 is not None:
            args["lr0"] = lr0
        settings = {
            "teacher": teacher_path,
            "kd_weight": kd_weight,
            "sparsity": sparsity,
            "sparsity_kind": sparsity_kind,
            "args": args,
        }
        save_atomic_json(out / SETTINGS_FILE, settings)
    previous = {k: os.environ.get(k) for k in (TEACHER_ENV, WEIGHT_ENV, SPARSITY_ENV, SPARSITY_KIND_ENV)}
    try:
        os.environ[SPARSITY_ENV], os.environ[SPARSITY_KIND_ENV] = str(sparsity), sparsity_kind
        if teacher_path:
            os.environ[TEACHER_ENV], os.environ[WEIGHT_ENV] = teacher_path, str(kd_weight)
        else:
            os.environ.pop(TEACHER_ENV, None)
        trainer = PrunedDetectionTrainer(overrides=args)
        for event, fn in (callbacks or {}).items():
            trainer.add_callback(event, fn)
        trainer.train()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    weights = Path(trainer.save_dir) / "weights"
    best, last = weights / "best.pt", weights / "last.pt"
    params = 0
    for path in (best, last):
        if path.is_file():
            params = _to_fp32(path, {"teacher": teacher_path, "kd_weight": kd_weight, "epochs": epochs})
    seconds = time.perf_counter() - start
    epochs_done = int(getattr(trainer, "epoch", epochs - 1)) + 1
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    try:  # the last epoch's row of results.csv holds the training losses (kd_loss among them)
        table = trainer.read_results_csv()
        metrics.update({k.strip(): float(v[-1]) for k, v in table.items() if v and k.strip().startswith("train/")})
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return FinetuneResult(
        best if best.is_file() else last,
        last,
        epochs_done,
        seconds,
        getattr(trainer, "epoch_time", seconds / max(epochs_done, 1)) or 0.0,
        params,
        metrics,
    )


def _family(model: Any) -> str:
    from yoloprune.adapters import resolve

    if isinstance(model, (str, Path)):
        from yoloprune.adapters.detect import guess_family

        return guess_family(str(model)) or "ultralytics"
    return resolve(model).family


def _finetune_family(
    model: Any, data: str | Path, out: Path, *, teacher: Any, start: float, resume: bool = False, **settings: Any
) -> FinetuneResult:
    """YOLOv5/YOLOv7/YOLOX: yoloprune's training loop with the family's own loss (``loop.fit``). Every epoch writes
    ``out/weights/last.pt`` in the family's format and ``last.state.pt`` (fp32 weights, optimizer, schedule), so
    ``resume`` continues from there; the result is ``out/weights/best.pt`` (the last epoch's weights)."""
    from yoloprune.adapters import Loaded, load_model, resolve, save_model
    from yoloprune.train.loop import fit

    weights = out / "weights"
    last, state_path = weights / "last.pt", weights / "last.state.pt"
    state = None
    if resume:
        if not last.is_file() or not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        saved = _saved(out)
        model, settings = last, {**settings, **saved["settings"]}
        teacher = teacher if teacher is not None else saved.get("teacher")
        state = load_checkpoint(state_path)
    loaded = load_model(str(model)) if isinstance(model, (str, Path)) else None
    if loaded is None:
        target = resolve(model)
        loaded = Loaded(target.module, target.family, "memory", {})
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in settings.items() if k not in ("device", "workers")}
        teacher_path = str(teacher) if isinstance(teacher, (str, Path)) else None
        save_atomic_json(out / SETTINGS_FILE, {"family": loaded.family, "teacher": teacher_path, "settings": kept})
    reference = load_model(str(teacher), loaded.family).model if isinstance(teacher, (str, Path)) else teacher
    section = {"finetune": {"epochs": settings["epochs"], "teacher": str(teacher) if teacher else None}}

    def checkpoint(epoch: int, train_state: dict[str, Any]) -> None:
        save_model(loaded, last, {**section, "epoch": epoch}, overwrite=True)
        save_atomic(train_state, state_path, overwrite=True)

    lr0 = settings.pop("lr0") or 0.01
    result = fit(
        loaded.model,
        data,
        teacher=reference,
        lr=lr0,
        family=loaded.family,
        on_epoch_end=checkpoint,
        resume_state=state,
        **settings,
    )
    best = save_model(loaded, weights / "best.pt", section, overwrite=True)
    return FinetuneResult(
        best,
        last,
        result.epochs,
        time.perf_counter() - start,
        result.seconds / max(result.epochs, 1),
        sum(p.numel() for p in loaded.model.parameters()),
        {"train/loss": result.last_loss, "train/steps": result.steps},
    )


def _saved(out: Path) -> dict[str, Any]:
    """The settings a fine-tune recorded in ``out`` (empty when it recorded none)."""
    path = out / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_atomic_json(path: Path, data: dict[str, Any]) -> None:
    from yoloprune.io import write_atomic

    write_atomic(path, lambda f: f.write(json.dumps(data, indent=1, default=str).encode()), overwrite=True)


def _to_fp32(path: Path, settings: dict[str, Any]) -> int:
    """Rewrite a trainer checkpoint with its model in fp32 (the trainer saves fp16) and the pruning plan."""
    ckpt = load_checkpoint(path)
    net = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(net, nn.Module):
        return 0
    net = net.float()
    for p in net.parameters():
        p.requires_grad_(False)
    ckpt["model"], ckpt["ema"] = net, None
    plan = (getattr(net, "yaml", None) or {}).get("yoloprune")
    ckpt["yoloprune"] = (
        {
            "format": 1,
            "family": "ultralytics",
            "finetune": settings,
            "plan": plan,
            "config": {k: v for k, v in (net.yaml or {}).items() if k != "yoloprune"},
            "names": dict(getattr(net, "names", {}) or {}),
            "state_dict": net.state_dict(),
            "imgsz": int(ckpt.get("train_args", {}).get("imgsz", 640)),
        }
        if plan
        else {"format": 1, "family": "ultralytics", "finetune": settings}
    )
    save_atomic(ckpt, path, overwrite=True)
    return sum(p.numel() for p in net.parameters())


__all__ = ["FinetuneResult", "finetune"]
