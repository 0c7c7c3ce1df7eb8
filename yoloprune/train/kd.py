"""Knowledge distillation on detection-head outputs, which pruning never changes (so it works for every family).

Every recovery path (ultralytics' trainer, ``loop.fit``, ``loop.distill``) calls ``kd_loss``, which picks the loss
for the outputs it is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from yoloprune.graph.nest import tensors_in

if TYPE_CHECKING:
    from yoloprune.adapters import Adapter


def _branches(preds: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The raw head outputs of an ultralytics model in train mode, by branch: ``one2many`` and ``one2one`` for
    end-to-end heads (YOLO26, YOLOv10), a single ``""`` branch otherwise."""
    if isinstance(preds, (tuple, list)) and len(preds) == 2 and isinstance(preds[1], dict):
        preds = preds[1]  # eval mode: (decoded, raw)
    branches = {k: preds[k] for k in ("one2many", "one2one") if k in preds} if isinstance(preds, dict) else {}
    branches = branches or {"": preds}
    if not all(isinstance(b, dict) and "scores" in b and "boxes" in b for b in branches.values()):
        raise ValueError("expected ultralytics head outputs with 'boxes' and 'scores'")
    return branches


def head_kd(student: Any, teacher: Any, temperature: float = 1.0) -> torch.Tensor:
    """Distillation between two ultralytics heads' raw outputs, summed over the branches both have (an end-to-end
    head's one-to-many and one-to-one, whose NMS-free outputs are what ``export --end2end`` ships)."""
    s, t = _branches(student), _branches(teacher)
    shared = [k for k in s if k in t]
    if not shared:
        raise ValueError("the student's and the teacher's heads have no branch in common")
    return sum(
        (_branch_kd(s[k], t[k], temperature) for k in shared), torch.zeros((), device=s[shared[0]]["scores"].device)
    )


def _branch_kd(s: dict[str, torch.Tensor], t: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """One branch: BCE of the student's class logits against the teacher's probabilities (only when both predict
    the same classes), and KL divergence between their box distributions (DFL bins; MSE when the head regresses
    boxes directly)."""
    s_cls, t_cls = s["scores"].float(), t["scores"].float().detach()
    if s_cls.shape == t_cls.shape:
        cls = F.binary_cross_entropy_with_logits(s_cls / temperature, (t_cls / temperature).sigmoid())
    else:  # the student was given another class list: the teacher teaches boxes only
        cls = s_cls.new_zeros(())
    s_box, t_box = s["boxes"].float(), t["boxes"].float().detach()
    bins = s_box.shape[1] // 4
    if bins > 1:
        b, _, a = s_box.shape
        log_p = F.log_softmax(s_box.view(b, 4, bins, a) / temperature, 2)
        q = F.softmax(t_box.view(b, 4, bins, a) / temperature, 2)
        box = F.kl_div(log_p, q, reduction="none").sum(2).mean() * temperature**2
    else:
        box = F.mse_loss(s_box, t_box)
    return cls + box


def decoded_kd(
    student: torch.Tensor, teacher: torch.Tensor, layout: str, nc: int, imgsz: int, teacher_nc: int | None = None
) -> torch.Tensor:
    """Distillation on decoded predictions (any family's export-mode output): class/objectness probabilities by
    BCE against the teacher's, boxes (in image units) by L1 weighted with the teacher's confidence. A teacher with
    other classes (``teacher_nc`` != ``nc``) teaches boxes and objectness only."""
    teacher_nc = nc if teacher_nc is None else teacher_nc
    if layout == "xywh-class":
        s, t = student.transpose(1, 2).float(), teacher.transpose(1, 2).float().detach()
        objectness = 0
    elif layout == "xywh-obj-class":
        s, t = student.float(), teacher.float().detach()
        objectness = 1
    else:
        raise ValueError(f"distillation needs dense predictions, not layout {layout!r}")
    s_box, t_box = s[..., :4], t[..., :4]
    s_p, t_p = s[..., 4 : 4 + objectness + nc], t[..., 4 : 4 + objectness + teacher_nc]
    weight = t_p.max(-1, keepdim=True).values
    if teacher_nc != nc:
        s_p, t_p = s_p[..., :objectness], t_p[..., :objectness]
    probs = F.binary_cross_entropy(s_p.clamp(1e-6, 1 - 1e-6), t_p.clamp(0, 1)) if s_p.shape[-1] else 0
    box = ((s_box - t_box).abs() / imgsz * weight).sum() / weight.sum().clamp_min(1e-6)
    return probs + box


def anchor_kd(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Distillation on anchor-based heads' raw maps (B, anchors, H, W, 5 + nc): BCE of objectness and class logits
    (objectness alone when the student predicts other classes) against the teacher's probabilities, MSE of the box
    terms after the sigmoid both decode with."""
    total = torch.zeros(())
    for s, t in zip(student, teacher):
        s, t = s.float(), t.float().detach()
        kept = slice(4, None) if s.shape == t.shape else slice(4, 5)  # another class list: objectness only
        scores = F.binary_cross_entropy_with_logits(s[..., kept], t[..., kept].sigmoid())
        boxes = F.mse_loss(s[..., :4].sigmoid(), t[..., :4].sigmoid())
        total = total + scores + boxes
    return total / max(len(student), 1)


@dataclass(frozen=True)
class Decoded:
    """How to read two networks' decoded predictions: their layout and class count, the image size, and each
    network's output selector (its adapter target's ``outputs``; None keeps the output as it is)."""

    layout: str
    nc: int
    imgsz: int
    student: Callable[[Any], Any] | None = None
    teacher: Callable[[Any], Any] | None = None
    teacher_nc: int | None = None  # when the teacher predicts other classes than the student


def kd_loss(student: Any, teacher: Any, adapter: Adapter | None = None, decoded: Decoded | None = None) -> torch.Tensor:
    """The distillation loss between a student's outputs and its teacher's, chosen by what they are: the raw maps of
    anchor heads, which ``adapter.raw_outputs`` finds (``anchor_kd``); else decoded predictions read as ``decoded``
    says (``decoded_kd``); else, with neither, ultralytics heads' raw train-mode outputs (``head_kd``)."""
    maps = adapter.raw_outputs(student) if adapter is not None else None
    if maps is not None:
        return anchor_kd(maps, adapter.raw_outputs(teacher))
    if decoded is not None:
        s, t = (decoded.student or _same)(student), (decoded.teacher or _same)(teacher)
        return decoded_kd(_first(s), _first(t), decoded.layout, decoded.nc, decoded.imgsz, decoded.teacher_nc)
    return head_kd(student, teacher)


def _same(out: Any) -> Any:
    return out


def _first(out: Any) -> torch.Tensor:
    """The first tensor of a network's output (its decoded predictions)."""
    return tensors_in(out)[0]
