"""``yoloprune.finetune``: recover a pruned model's accuracy, with optional distillation from the unpruned one.

``finetune`` is the one entry point: it picks the loop for the model's family and the data (ultralytics' trainer,
``loop.fit`` or the label-free ``loop.distill``)."""

from __future__ import annotations

import copy
import difflib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yoloprune.data.datasets import TRAINER_DATA, DatasetError, load_detection_set, write_trainer_config
from yoloprune.graph.plan import FORMAT
from yoloprune.images import check_imgsz
from yoloprune.io import load_checkpoint, save_atomic, write_atomic
from yoloprune.options import check_numbers
from yoloprune.train.run_folder import (
    IN_MEMORY,
    RUN_DEFAULTS,
    SETTINGS_FILE,
    START_FILE,
    TRAINING_DEFAULTS,
    check_checkpoint_agrees,
    check_no_links,
    read_record,
    resumed_settings,
)


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


def _ultralytics_module(model: Any) -> Any:
    """A path as it is (refused when it is no file), a module as the ultralytics network it holds."""
    if isinstance(model, (str, Path)):
        if not Path(model).is_file():
            raise FileNotFoundError(f"no such model: {model}")
        return Path(model)
    from yoloprune.adapters import resolve

    target = resolve(model)
    if target.family != "ultralytics":
        raise ValueError(f"fine-tuning with labels supports ultralytics models; this is {target.family}")
    return target.module


def check_inputs(out: Path, inputs: dict[str, Any]) -> None:
    """Refuse an input file (``{flag: path}``) that a fine-tune into ``out`` writes or, started over, replaces:
    anything in ``out/weights`` (the trainer's checkpoints), the start, the teacher and the checked data yaml it
    writes beside them."""
    weights = (out / "weights").resolve()
    written = {(out / name).resolve() for name in (START_FILE, "teacher.pt", TRAINER_DATA)}
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
        if key == "distill_model":  # ultralytics' feature distillation unpickles that file with its own loader
            raise ValueError(
                "--train-set distill_model: ultralytics would read that checkpoint unrestricted; pass the teacher "
                "with --teacher (read through yoloprune's loader)"
            )
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


def _check_data(data: str | Path) -> list[str]:
    """Fail before training on a dataset that cannot be trained on (both splits are read and validated); returns
    its class names."""
    if Path(data).suffix not in (".yaml", ".yml"):
        raise DatasetError(f"fine-tuning needs an ultralytics data yaml with YOLO labels, got {data}")
    names = load_detection_set(data, "train").names
    load_detection_set(data, "val")
    return [names[i] for i in sorted(names)]


def with_classes(net: nn.Module, family: str, names: list[str]) -> nn.Module:
    """``net`` as it is when it predicts ``len(names)`` classes; else a copy whose head predicts the data's classes
    (``Adapter.set_classes``: fresh class outputs, the pruned body and box outputs kept), said on stdout."""
    from yoloprune.adapters import adapter

    family_adapter = adapter(family)
    had = family_adapter.classes(net)
    if had == len(names):
        return net
    net = copy.deepcopy(net)
    family_adapter.set_classes(net, len(names), names)
    print(
        f"the model predicts {had} classes, the dataset has {len(names)}: the head gets new class outputs for "
        "the dataset's classes (body and box outputs kept; a teacher distils boxes, not classes)",
        flush=True,
    )
    return net


def finetune(
    model: Any,
    data: str | Path,
    *,
    epochs: int | None = None,
    teacher: Any = None,
    kd_weight: float | None = None,
    sparsity: float | None = None,
    sparsity_kind: str | None = None,
    imgsz: int | None = None,
    batch: int | None = None,
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
    """Recover a pruned model's accuracy (checkpoint path or module; the input is never modified): the loop is
    picked from the model's family and the data.

    - ultralytics models on a data yaml: ultralytics' own trainer, on the network as it is (EMA, augmentation,
      warm-up, AMP on CUDA, ``device="0,1"`` for DDP); ``overrides`` pass any of its other settings and
      ``callbacks`` map its events (``on_fit_epoch_end``...) to functions of the trainer. ``sparsity`` > 0 adds
      BN-L1 regularisation (network slimming, ``sparsity_kind="bn"``) for a later ``importance="bn"`` prune, or
      group lasso over the coupled channels (``sparsity_kind="group"``).
    - YOLOv5/YOLOv7/YOLOX on a data yaml: yoloprune's loop with the family's own loss (``loop.fit``).
    - any family on a folder of images, which has no labels: distillation alone from ``teacher`` (``loop.distill``,
      the student learning the teacher's decoded predictions; ``lr0`` defaults to 1e-4 there).

    With ``teacher`` (the unpruned model, path or module) on labelled data, ``kd_weight`` x distillation on the
    head outputs is added to the detection loss. Results go to ``out``: ``weights/best.pt`` and ``last.pt`` (fp32,
    with the pruning plan; the family's own format outside ultralytics; distillation on images writes ``best.pt``
    only). ``epochs``, ``imgsz``, ``batch``, ``kd_weight``, ``sparsity`` and ``sparsity_kind`` default to
    ``run_folder.RUN_DEFAULTS`` and ``TRAINING_DEFAULTS``. With ``resume`` an interrupted labelled run continues from
    ``out/weights/last.pt`` with the settings it was started with (giving another is refused); a finished or
    interrupted run in ``out`` is only started over with ``overwrite``. A run folder holding links is refused.
    """
    start = time.perf_counter()
    out = Path(out)
    check_no_links(out)
    saved = read_record(out) if resume else {}
    given = {
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "lr0": lr0,
        "teacher": teacher,
        "kd_weight": kd_weight,
        "sparsity": sparsity,
        "sparsity_kind": sparsity_kind,
        **overrides,
    }
    if resume:
        chosen = resumed_settings(out, saved, given)
    else:
        chosen = {k: ({**RUN_DEFAULTS, **TRAINING_DEFAULTS}.get(k) if v is None else v) for k, v in given.items()}
    epochs, imgsz, batch, lr0 = chosen["epochs"], chosen["imgsz"], chosen["batch"], chosen["lr0"]
    kd_weight, sparsity, sparsity_kind = chosen["kd_weight"], chosen["sparsity"], chosen["sparsity_kind"]
    if epochs < 1 or batch < 1:
        raise ValueError("epochs and batch must be >= 1")
    check_imgsz(imgsz)
    check_numbers(kd_weight=kd_weight, sparsity=sparsity, lr0=lr0)
    if sparsity_kind not in ("bn", "group"):
        raise ValueError(f"unknown sparsity kind {sparsity_kind!r}; choose bn or group")
    if str(overrides.get("cache")).lower() == "disk":
        raise ValueError("--train-set cache=disk writes .npy files beside the dataset's images; use cache=ram")
    check_overrides(overrides)
    check_inputs(out, {"--data": data} if resume else {"MODEL": model, "--teacher": teacher, "--data": data})
    images = Path(data).is_dir()
    names: list[str] = []
    if images:
        _check_distillation(data, teacher, resume)
    else:
        names = _check_data(data)
    if not resume and not overwrite and any((out / "weights" / name).exists() for name in ("last.pt", "best.pt")):
        raise ValueError(f"{out} holds a training run; pass --resume to continue it or --overwrite to start over")
    loop = {"epochs": epochs, "imgsz": imgsz, "batch": batch, "device": device, "lr0": lr0, "workers": workers}
    if images:
        return _distill(model, Path(data), out, teacher=teacher, start=start, seed=seed, **loop)
    family = saved.get("family", "ultralytics") if resume else _family(model)
    if family != "ultralytics":
        return _finetune_family(
            model,
            data,
            out,
            teacher=teacher,
            kd_weight=kd_weight,
            seed=seed,
            start=start,
            resume=resume,
            names=names,
            **loop,
        )
    threads = torch.get_num_threads()  # ultralytics' validators set cpu_count - 1 and leave it so
    try:
        return _finetune_ultralytics(
            model,
            data,
            out,
            teacher=teacher,
            kd_weight=kd_weight,
            sparsity=sparsity,
            sparsity_kind=sparsity_kind,
            saved=saved,
            resume=resume,
            names=names,
            plots=plots,
            seed=seed,
            callbacks=callbacks,
            start=start,
            loop=loop,
            overrides=overrides,
        )
    finally:
        torch.set_num_threads(threads)


def _finetune_ultralytics(
    model: Any,
    data: str | Path,
    out: Path,
    *,
    teacher: Any,
    kd_weight: float,
    sparsity: float,
    sparsity_kind: str,
    saved: dict[str, Any],
    resume: bool,
    names: list[str],
    plots: bool,
    seed: int,
    callbacks: dict[str, Any] | None,
    start: float,
    loop: dict[str, Any],
    overrides: dict[str, Any],
) -> FinetuneResult:
    """ultralytics models: the pruned trainer of the model's task (``trainer_for``: detection, segmentation, pose,
    OBB) given the teacher and the sparsity penalty directly. A model
    that predicts other classes than the data's is given the data's first (``with_classes``). The start is validated
    first, and ``best.pt`` is the start itself when no epoch beats it."""
    from yoloprune.train.ultralytics_trainer import (
        read_checkpoint,
        start_fitness,
        trainer_for,
    )

    epochs = loop["epochs"]
    last = out / "weights" / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"nothing to resume: {last} does not exist")
    # every file is read (and refused, when it must be) here, before anything is written or handed to the trainer
    files = (last,) if resume else (model, teacher)
    read = [read_checkpoint(p) if isinstance(p, (str, Path)) else None for p in files]
    if resume:
        net, ckpt = read[0]
        check_checkpoint_agrees(last, saved, ckpt.get("train_args"))
        recorded = saved.get("teacher")
        teacher = _resumed_teacher(recorded, teacher)
        teacher = _ultralytics_module(teacher) if isinstance(teacher, nn.Module) else teacher
        # the run continues with the checkpoint's own settings, except where it writes and what it reads: those
        # come from this call, so a run folder from elsewhere cannot send outputs or loads outside it
        args = {
            "resume": str(last),
            "model": str(last),
            "data": str(write_trainer_config(data, out)),
            "save_dir": str(out.resolve()),
            "device": loop["device"],
            "workers": loop["workers"],
            "plots": plots,
            "distill_model": None,
            "cache": False,  # cache=disk would write beside the dataset's images
        }
    else:
        student = _ultralytics_module(model)
        net = read[0][0] if read[0] is not None else student
        if (transferred := with_classes(net, "ultralytics", names)) is not net:
            student = transferred
        teacher = _ultralytics_module(teacher) if teacher is not None else None
        recorded = _recorded(teacher)
        out.mkdir(parents=True, exist_ok=True)
        args = {
            "model": str(_start_file(student, out)),
            "data": str(write_trainer_config(data, out)),
            "epochs": epochs,
            "imgsz": loop["imgsz"],
            "batch": loop["batch"],
            "device": loop["device"],
            "workers": loop["workers"],
            "project": str(out.parent.resolve()),
            "name": out.name,
            "exist_ok": True,
            "plots": plots,
            "seed": seed,
            **overrides,
        }
        if loop["lr0"] is not None:
            args["lr0"] = loop["lr0"]
        settings = {
            "teacher": recorded,
            "kd_weight": kd_weight,
            "sparsity": sparsity,
            "sparsity_kind": sparsity_kind,
            "args": args,
            "start_fitness": start_fitness(args["model"], args, out),
        }
        save_atomic_json(out / SETTINGS_FILE, settings)
        saved = settings
    trainer = trainer_for(net)(
        overrides=args, teacher=teacher, kd_weight=kd_weight, sparsity=sparsity, sparsity_kind=sparsity_kind
    )
    for event, fn in (callbacks or {}).items():
        trainer.add_callback(event, fn)
    trainer.train()
    weights = Path(trainer.save_dir) / "weights"
    best, last = weights / "best.pt", weights / "last.pt"
    start_score = saved.get("start_fitness")
    trained = getattr(trainer, "best_fitness", None)
    if isinstance(start_score, (int, float)) and (trained is None or start_score >= float(trained)):
        start_file = out / START_FILE  # only ever the run's own copy, whatever a record says
        if start_file.is_file():  # no epoch beat the model it was given: that is the best
            data_of_start = start_file.read_bytes()
            write_atomic(best, lambda f: f.write(data_of_start), overwrite=True)
            print(f"no epoch beat the starting model (fitness {start_score:.4f}): best.pt is the start", flush=True)
    params = 0
    for path in (best, last):
        if path.is_file():
            params = _to_fp32(path, {"teacher": recorded, "kd_weight": kd_weight, "epochs": epochs})
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


def _start_file(student: Any, out: Path) -> Path:
    """The run's own copy of the model it starts from (a checkpoint's bytes, or a module written as one): what the
    trainer loads, and what keep-best hands back when no epoch beats it."""
    from yoloprune.train.ultralytics_trainer import write_checkpoint

    if isinstance(student, Path):
        data = student.read_bytes()
        return write_atomic(out / START_FILE, lambda f: f.write(data), overwrite=True)
    return write_checkpoint(student, out / START_FILE)


def _recorded(teacher: Any) -> str | None:
    """What the settings and checkpoints record of a teacher: its path, or ``IN_MEMORY`` for a module."""
    return None if teacher is None else IN_MEMORY if isinstance(teacher, nn.Module) else str(teacher)


def _resumed_teacher(recorded: str | None, given: Any) -> Any:
    """The teacher a resumed run distils from: the checkpoint it recorded, or the module it was given, again."""
    if recorded != IN_MEMORY:
        return recorded
    if not isinstance(given, nn.Module):
        raise ValueError("this run distilled from a teacher given as a module: pass it again (teacher=) to resume")
    return given


def _loop_device(device: str) -> str:
    """The torch device yoloprune's loop trains on, from ultralytics' spelling (``0`` is ``cuda:0``)."""
    text = str(device).strip()
    if "," in text:
        raise ValueError(
            f"device {device!r}: yoloprune's loop trains on one device per process; give one (e.g. 0), or run "
            "the loop under torchrun for several GPUs"
        )
    return f"cuda:{text}" if text.isdigit() else text


def _own_copy(model: Any) -> Any:
    """The loaded model of a path, or a copy of a module's (the caller's module is never trained)."""
    from yoloprune.adapters import Loaded, load_model, resolve

    if isinstance(model, (str, Path)):
        return load_model(str(model))
    target = resolve(model)
    return Loaded(copy.deepcopy(target.module), target.family, "memory", {})


def _check_distillation(images: str | Path, teacher: Any, resume: bool) -> None:
    """Refuse a label-free distillation that cannot run: no teacher, no images, or a resume."""
    from yoloprune.images import list_images

    if teacher is None:
        raise ValueError(
            f"{images} is a folder of images without labels: recovering on it distils from a teacher; pass one "
            "(--teacher), or a data yaml with labels"
        )
    if resume:
        raise ValueError("a distillation on images cannot resume; start it over (--overwrite)")
    list_images(images)


def _distill(
    model: Any, images: Path, out: Path, *, teacher: Any, start: float, seed: int, **settings: Any
) -> FinetuneResult:
    """Any family, unlabelled images: ``loop.distill`` (the student learns the teacher's decoded predictions). The
    start and every epoch are scored by fidelity to the teacher (``evaluate.fidelity``) on up to ``SCORED`` of the
    images, and ``out/weights/best.pt`` (the family's format; also the result's ``last``) is the best of them, the
    start included: with no labels to validate on, this is what keeps a distillation that goes wrong (on a
    calibrated COCO YOLOv5n, lr 1e-3 took mAP50-95 from 0.078 to 0.000) from handing back a worse model."""
    from yoloprune.adapters import adapter, load_model, save_model
    from yoloprune.evaluate.fidelity import CONFIDENT, detections, fidelity_map
    from yoloprune.images import list_images
    from yoloprune.pruning.calibrate import image_batches
    from yoloprune.train.loop import distill

    loaded = _own_copy(model)
    reference = load_model(str(teacher), loaded.family).model if isinstance(teacher, (str, Path)) else teacher
    out.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in settings.items() if k not in ("device", "workers")}
    record = {"family": loaded.family, "images": str(images), "teacher": _recorded(teacher), "settings": kept}
    save_atomic_json(out / SETTINGS_FILE, record)
    spec = adapter(loaded.family).PREPROCESS
    scoring = image_batches(list_images(images)[-SCORED:], settings["imgsz"], spec)
    truth = detections(reference, scoring, CONFIDENT, loaded.family)
    best, board = out / "weights" / "best.pt", {}

    def keep_best(epoch: int) -> None:
        score = fidelity_map(truth, detections(loaded.model, scoring, 0.001, loaded.family))
        board[epoch] = score
        shown = f"epoch {epoch}/{settings['epochs']}" if epoch else "start"
        print(f"{shown}: fidelity to the teacher {score:.4f}", flush=True)
        if epoch == 0 or score > max(v for k, v in board.items() if k != epoch):  # ties keep the earlier
            section = {"distill": {"teacher": _recorded(teacher), "epochs": settings["epochs"], "epoch": epoch}}
            save_model(loaded, best, {**section, "fidelity": score}, overwrite=True)

    keep_best(0)
    result = distill(
        loaded.model,
        reference,
        images,
        epochs=settings["epochs"],
        imgsz=settings["imgsz"],
        batch=settings["batch"],
        lr=settings["lr0"] or 1e-4,
        device=_loop_device(settings["device"]),
        workers=settings["workers"],
        seed=seed,
        family=loaded.family,
        on_epoch_end=keep_best,
    )
    return _loop_result(best, best, result, start, loaded.model)


SCORED = 32
"""The images of a distillation folder (its last ones) on which the start and every epoch are scored."""


def _family(model: Any) -> str:
    from yoloprune.adapters import resolve

    if isinstance(model, (str, Path)):
        from yoloprune.adapters.detect import guess_family

        return guess_family(str(model)) or "ultralytics"
    return resolve(model).family


def _finetune_family(
    model: Any,
    data: str | Path,
    out: Path,
    *,
    teacher: Any,
    start: float,
    resume: bool = False,
    names: list[str] | None = None,
    **settings: Any,
) -> FinetuneResult:
    """YOLOv5/YOLOv7/YOLOX: yoloprune's training loop with the family's own loss (``loop.fit``), on the data's
    classes (``with_classes``). Every epoch writes
    ``out/weights/last.pt`` in the family's format and ``last.state.pt`` (fp32 weights, optimizer, schedule), so
    ``resume`` continues from there. The start and every epoch are validated (COCO mAP50-95 on the val split) and
    ``out/weights/best.pt`` is the best of them, the start included: a fine-tune never hands back a worse model."""
    from yoloprune.adapters import load_model, save_model
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.train.loop import fit

    weights = out / "weights"
    last, state_path = weights / "last.pt", weights / "last.state.pt"
    state = None
    if resume:
        if not last.is_file() or not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        saved = read_record(out)
        model, settings = last, {**settings, **saved.get("settings", {})}
        teacher = _resumed_teacher(saved.get("teacher"), teacher)
        state = load_checkpoint(state_path)
    loaded = _own_copy(model)
    if names:
        loaded.model = with_classes(loaded.model, loaded.family, names)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in settings.items() if k not in ("device", "workers")}
        record = {"family": loaded.family, "teacher": _recorded(teacher), "settings": kept}
        save_atomic_json(out / SETTINGS_FILE, record)
    reference = load_model(str(teacher), loaded.family).model if isinstance(teacher, (str, Path)) else teacher
    section = {"finetune": {"epochs": settings["epochs"], "teacher": _recorded(teacher)}}
    best, scores = weights / "best.pt", weights / "scores.json"
    board = json.loads(scores.read_text()) if resume and scores.is_file() else {}

    def validate(epoch: int, loss: float | None = None) -> None:
        score = evaluate(
            loaded.model, data, imgsz=settings["imgsz"], batch=settings["batch"], family=loaded.family
        ).map50_95
        shown = f"epoch {epoch}/{settings['epochs']}" if epoch else "start"
        print(f"{shown}: {'' if loss is None else f'loss {loss:.4f}  '}val mAP50-95 {score:.4f}", flush=True)
        board[str(epoch)] = score
        if score >= max(board.values()):
            save_model(loaded, best, {**section, "epoch": epoch, "map50_95": score}, overwrite=True)
        save_atomic_json(scores, board)

    def checkpoint(epoch: int, train_state: dict[str, Any]) -> None:
        save_model(loaded, last, {**section, "epoch": epoch}, overwrite=True)
        save_atomic(train_state, state_path, overwrite=True)
        validate(epoch, train_state.get("loss"))

    if not resume:
        weights.mkdir(parents=True, exist_ok=True)
        validate(0)

    lr0 = settings.pop("lr0") or 0.01
    device = _loop_device(settings.pop("device"))
    result = fit(
        loaded.model,
        data,
        teacher=reference,
        lr=lr0,
        device=device,
        family=loaded.family,
        on_epoch_end=checkpoint,
        resume_state=state,
        **settings,
    )
    return _loop_result(best, last, result, start, loaded.model)


def _loop_result(best: Path, last: Path, result: Any, start: float, net: nn.Module) -> FinetuneResult:
    """What one of yoloprune's own loops (``fit``, ``distill``) did, as ``finetune`` reports it."""
    return FinetuneResult(
        best,
        last,
        result.epochs,
        time.perf_counter() - start,
        result.seconds / max(result.epochs, 1),
        sum(p.numel() for p in net.parameters()),
        {"train/loss": result.last_loss, "train/steps": result.steps},
    )


def save_atomic_json(path: Path, data: dict[str, Any]) -> None:
    from yoloprune.io import write_atomic

    write_atomic(path, lambda f: f.write(json.dumps(data, indent=1, default=str).encode()), overwrite=True)


def _to_fp32(path: Path, settings: dict[str, Any]) -> int:
    """Rewrite a trainer checkpoint with its model in fp32 (the trainer saves fp16) and the pruning plan."""
    from yoloprune.adapters.ultralytics import unguarded

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
            "format": FORMAT,
            "family": "ultralytics",
            "finetune": settings,
            "plan": plan,
            "config": {k: v for k, v in unguarded(net.yaml or {}).items() if k != "yoloprune"},
            "names": dict(getattr(net, "names", {}) or {}),
            "state_dict": net.state_dict(),
            "imgsz": int(ckpt.get("train_args", {}).get("imgsz", 640)),
        }
        if plan
        else {"format": FORMAT, "family": "ultralytics", "finetune": settings}
    )
    save_atomic(ckpt, path, overwrite=True)
    return sum(p.numel() for p in net.parameters())


__all__ = ["FinetuneResult", "finetune"]
