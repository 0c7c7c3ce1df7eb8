"""Training loops for the families ultralytics' trainer does not cover, on one process or across GPUs (torchrun).

``fit``: the family's own detection loss on labelled data (YOLOv5/YOLOv7 ``ComputeLoss``, YOLOX's head), plus
optional distillation. ``distill``: recovery on unlabelled images alone; the student learns to reproduce the
teacher's decoded predictions (see ``kd.decoded_kd``) with its norm statistics kept (eval mode; only weights learn).
Under ``torchrun`` each rank trains on its share of the images with ``DistributedDataParallel``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from yoloprune.images import Preprocess, check_imgsz, letterbox, list_images, read_image, to_tensor
from yoloprune.train.kd import Decoded, kd_loss


class ImageFolder(Dataset):
    """Letterboxed images of a folder, randomly flipped left-right."""

    def __init__(self, folder: str | Path, imgsz: int, spec: Preprocess, flip: bool = True):
        self.files, self.imgsz, self.spec, self.flip = list_images(folder), imgsz, spec, flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = letterbox(read_image(self.files[index]), self.imgsz, self.spec.fill)[0]
        if self.flip and torch.rand(()) < 0.5:
            image = image[:, ::-1]
        return to_tensor(image, self.spec)[0]


@dataclass
class DistillResult:
    steps: int
    epochs: int
    seconds: float
    last_loss: float
    path: Path | None


def _loader(
    data: Dataset, batch: int, workers: int, seed: int, collate: Callable | None = None
) -> tuple[DataLoader, DistributedSampler | None]:
    """A shuffling loader over ``data``, sharded across ranks (with its sampler, whose epoch must be set) under
    torch.distributed."""
    rank, world = _world()
    sampler = DistributedSampler(data, world, rank, shuffle=True, seed=seed) if world > 1 else None
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=len(data) >= batch * world,
    )
    return loader, sampler


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distill(
    student: nn.Module,
    teacher: nn.Module,
    images: str | Path,
    *,
    epochs: int = 1,
    imgsz: int = 640,
    batch: int = 8,
    lr: float = 1e-4,
    device: str = "cpu",
    max_steps: int | None = None,
    workers: int = 0,
    seed: int = 0,
    family: str | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> DistillResult:
    """Train ``student`` (in place) to match ``teacher``'s decoded predictions on the images in ``images``; rank 0
    calls ``on_epoch_end(epoch)`` after every epoch."""
    from yoloprune.adapters import adapter as family_adapter
    from yoloprune.adapters import resolve

    check_imgsz(imgsz)
    start = time.perf_counter()
    torch.manual_seed(seed)
    world = _world()[1]
    s_target, t_target = resolve(student, family, prune_head=True), resolve(teacher, family, prune_head=True)
    adapter = family_adapter(s_target.family)
    if adapter.classes(s_target.module) != adapter.classes(t_target.module):
        raise ValueError(
            "distillation on images teaches the teacher's classes, and this model predicts other ones: fine-tune it "
            "on labelled data (a data yaml) instead"
        )
    decoded = Decoded(*adapter.nms_layout(s_target.module), imgsz, s_target.outputs, t_target.outputs)
    net, ref = s_target.module.to(device), t_target.module.to(device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    fixed = adapter.FIXED_PARAMETERS
    for name, p in net.named_parameters():
        p.requires_grad_(not any(part in name for part in fixed))
    net.eval()  # norm statistics stay as they are; weights learn
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    data = ImageFolder(images, imgsz, adapter.PREPROCESS)
    loader, sampler = _loader(data, batch, workers, seed)
    total = max(1, epochs * len(loader)) if max_steps is None else max_steps
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    step, loss_value = 0, float("nan")
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x in loader:
            x = x.to(device)
            with torch.no_grad():
                target = ref(x)
            loss = kd_loss(model(x), target, decoded=decoded)  # decoded predictions, for every family
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            step, loss_value = step + 1, float(loss.detach())
            if step >= total:
                break
        if on_epoch_end is not None and _world()[0] == 0:
            on_epoch_end(epoch + 1)
        if step >= total:
            break
    for p in net.parameters():
        p.requires_grad_(False)
    return DistillResult(step, epoch + 1, time.perf_counter() - start, loss_value, None)


def fit(
    student: nn.Module,
    data: str | Path,
    *,
    epochs: int = 10,
    teacher: nn.Module | None = None,
    kd_weight: float = 1.0,
    imgsz: int = 640,
    batch: int = 16,
    lr: float = 0.01,
    device: str = "cpu",
    workers: int = 0,
    seed: int = 0,
    family: str | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    resume_state: dict[str, Any] | None = None,
) -> DistillResult:
    """Train ``student`` (in place) with its family's own loss on ``data``'s train split (left-right flips; SGD with
    a warm-up and a cosine schedule), adding ``kd_weight`` x distillation from ``teacher`` when given.

    After every epoch rank 0 calls ``on_epoch_end(epoch, state)`` with the model, optimizer and schedule state and
    the epoch's mean ``loss``;
    passing that ``state`` back as ``resume_state`` continues training from the epoch after it."""
    from yoloprune.adapters import adapter as family_adapter
    from yoloprune.adapters import resolve
    from yoloprune.data.batches import LabelledImages, collate

    check_imgsz(imgsz)
    start = time.perf_counter()
    torch.manual_seed(seed)
    rank, world = _world()
    target = resolve(student, family, prune_head=True)
    adapter = family_adapter(target.family)
    net = target.module.to(device)
    loss_fn = adapter.train_loss(net, imgsz)
    data_set = LabelledImages(data, "train", imgsz, adapter.PREPROCESS, flip=True)
    loader, sampler = _loader(data_set, batch, workers, seed, collate)
    ref = None
    if teacher is not None:
        t_target = resolve(teacher, family, prune_head=True)
        ref = t_target.module.to(device).eval()
        decoded = Decoded(
            *adapter.nms_layout(net), imgsz, target.outputs, t_target.outputs, adapter.classes(t_target.module)
        )
    fixed = adapter.FIXED_PARAMETERS
    params = [p for name, p in net.named_parameters() if not any(part in name for part in fixed)]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    total = max(1, epochs * len(loader))
    warmup = min(total // 10, 100)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.937, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * s / total))
    )
    step, loss_value, first = 0, float("nan"), 0
    if resume_state is not None:
        net.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["schedule"])
        first, step = int(resume_state["epoch"]), int(resume_state["step"])
    for epoch in range(first, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_loss, batches = 0.0, 0
        for item in loader:
            item = {k: v.to(device) for k, v in item.items()}
            net.train()
            loss = loss_fn(item)
            if ref is not None:
                with torch.no_grad():
                    reference = ref(item["img"])
                net.eval()
                kd = kd_loss(net(item["img"]), reference, adapter, decoded)  # anchor heads: their raw maps
                loss = loss + kd_weight * kd * item["img"].shape[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:  # the family's loss calls the bare network, so average gradients across ranks by hand
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            schedule.step()
            step, loss_value = step + 1, float(loss.detach())
            epoch_loss, batches = epoch_loss + loss_value, batches + 1
        if on_epoch_end is not None and rank == 0:
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            mean = epoch_loss / max(batches, 1)
            on_epoch_end(epoch + 1, {**state, "epoch": epoch + 1, "step": step, "loss": mean})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return DistillResult(step, epochs, time.perf_counter() - start, loss_value, None)


def main() -> int:
    """``torchrun --nproc_per_node N -m yoloprune.train.loop STUDENT TEACHER IMAGES OUT [epochs imgsz batch]``:
    distil across processes (gloo on CPU, nccl on GPUs); rank 0 writes OUT in the student's family format."""
    import sys

    from yoloprune.adapters import load_model, save_model
    from yoloprune.io import check_output

    student_path, teacher_path, images, out, *rest = sys.argv[1:]
    check_output(out, [student_path, teacher_path])
    epochs, imgsz, batch = (int(v) for v in ([*rest, "1", "640", "8"])[:3])
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    student, teacher = load_model(student_path), load_model(teacher_path)
    distill(student.model, teacher.model, images, epochs=epochs, imgsz=imgsz, batch=batch, device=device)
    if rank == 0:
        save_model(student, out, {"distill": {"teacher": teacher_path, "epochs": epochs}})
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
