"""The values users type: ``KEY=VALUE`` assignments, lists of fractions, and the range of every float setting."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

CRITERIA = ("auto", "l2", "l1", "bn", "taylor", "recon", "random")  # channel importance (pruning.importance)
AUTO_CRITERIA = ("recon", "l2")  # what "auto" means with calibration images and without
COMPARABLE = ("recon",)  # criteria whose scores compare across layers: ranked globally per MAC by default
AGGREGATES = ("mean", "sum", "max")  # how a group combines its layers' scores
COSTS = ("macs", "latency")  # what a global ranking charges a channel: the MACs or measured ms its removal saves
SWEEP_BY = ("macs", "latency")  # what a sweep's targets are fractions of: MACs or the measured latency
MAX_CLASSES = 100_000
"""The most classes a model, a data yaml or an exported file may declare (shipped configs use 1 to 1000; the largest
public label sets about 20,000): a count read from a file is never a reason to build a billion of anything."""


def resolve_importance(importance: Any, calibrated: bool) -> Any:
    """What an importance means: "auto" is "recon" with calibration images and "l2" without; anything else itself."""
    return (AUTO_CRITERIA[0] if calibrated else AUTO_CRITERIA[1]) if importance == "auto" else importance


def default_cost(importance: Any, latency_target: bool, global_ranking: bool | None = None) -> str:
    """What a ranking charges a channel when not told: the milliseconds it saves for a latency target ranked by
    scores that compare across layers (``COMPARABLE``) and not every layer alike (``global_ranking`` False), else
    its MACs. Per millisecond, scores that do not compare (l2 normalised per layer) would rank layers by their
    milliseconds alone and empty the costliest ones: a converged yolov8s lost all its mAP at 75% MACs that way
    (0.005 mAP50-95; 0.653 with every layer losing the same share)."""
    comparable = isinstance(importance, str) and importance in COMPARABLE
    return "latency" if latency_target and comparable and global_ranking is not False else "macs"


def default_threads() -> int:
    """Threads latency is measured with unless told: every core this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Range:
    """The finite numbers a setting accepts: from ``low`` to ``high``, each end excluded when ``open_*``."""

    low: float = 0.0
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    noun: str = ""

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return "positive" if self.open_low and self.low == 0 else f">= {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


SETTINGS: dict[str, Range] = {  # every float setting of the CLI, the recipes and the Python API
    "ratio": Range(0, 1, open_low=True, open_high=True),
    "target_macs": Range(0, 1, open_low=True, open_high=True, noun="a fraction of the original"),
    "target_params": Range(0, 1, open_low=True, open_high=True, noun="a fraction of the original"),
    "target_latency_ms": Range(0, open_low=True),
    "latency_unpruned_ms": Range(0, open_low=True),
    "max_ratio": Range(0, 1, open_low=True),
    "max_drop": Range(0, 1),
    "kd_weight": Range(0),
    "sparsity": Range(0),
    "lr0": Range(0, open_low=True),
    "conf": Range(0, 1),
    "iou": Range(0, 1),
}


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def number_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the setting ``name`` (``must be ...``), or None."""
    allowed = SETTINGS[name]
    if _is_number(value) and float(value) in allowed:
        return None
    kind = "" if _is_number(value) else "a number "
    return f"is {allowed.noun} and must be {kind}{allowed}" if allowed.noun else f"must be {kind}{allowed}"


def _described(value: Any) -> str:
    """``value`` as an error message shows it: a number as itself, anything else by its type (a string, quoted)."""
    if _is_number(value):
        return str(value)
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"


def check_numbers(**values: Any) -> None:
    """Refuse any given (not None) setting that is not a finite number in its ``SETTINGS`` range, by name."""
    for name, value in values.items():
        problem = None if value is None else number_problem(name, value)
        if problem:
            raise ValueError(f"{name} {problem}, got {_described(value)}")


def parse_assignment(item: str, flag: str = "--set") -> tuple[list[str], Any]:
    """``a.b=value`` -> (``["a", "b"]``, value parsed as yaml: numbers, booleans, null, strings, lists)."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"{flag} {key}: cannot read the value {raw!r} ({exc.__class__.__name__})") from exc
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = float(value)  # yaml 1.1 reads 1e-3 (no dot) as a string
    return [p.strip() for p in parts], value


def parse_fractions(text: str, flag: str) -> list[float]:
    """``"0.9,0.5"`` -> [0.9, 0.5]; every entry a number in (0, 1]."""
    values = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not a number") from None
        if not 0 < value <= 1:
            raise ValueError(f"{flag}: {item} is outside (0, 1]")
        values.append(value)
    if not values:
        raise ValueError(f"{flag} needs at least one fraction, e.g. 0.75,0.5")
    return values


MAX_IMGSZ = 8192  # one 8192x8192 image is 0.8 GB in fp32 and its first feature maps several GB: larger is a typo


def check_imgsz(imgsz: int, stride: int = 32) -> int:
    """A positive multiple of the model's largest stride up to ``MAX_IMGSZ``, or a clear error (before anything is
    allocated at that size)."""
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or not stride <= imgsz <= MAX_IMGSZ or imgsz % stride:
        raise ValueError(f"--imgsz must be a positive multiple of {stride} up to {MAX_IMGSZ}, got {imgsz}")
    return imgsz
