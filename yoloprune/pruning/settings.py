"""Every pruning option in one place: its type, default and valid range (``PruneSettings``).

The Python API (``yoloprune.prune(model, x, **options)``), the command line and recipes all build a
``PruneSettings``; it validates itself on construction, so a bad value is refused the same way everywhere, and
``record()`` is what a checkpoint stores about how it was pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from yoloprune.options import AGGREGATES, COSTS, CRITERIA, check_numbers

AMOUNTS = ("ratio", "target_macs", "target_params", "target_latency_ms")
"""The ways to say how much to prune; at most one is given (``ratio=0.3`` when none is)."""

DEFAULT_RATIO = 0.3
UNITS = ("stage", "group")


def _patterns(ignore: Any) -> tuple[str, ...]:
    """``ignore`` as a tuple of name patterns: one string is one pattern (not one per character)."""
    if isinstance(ignore, str):
        return (ignore,)
    if not isinstance(ignore, (list, tuple, set, frozenset)):
        raise TypeError(f"ignore must be a name pattern or a list of them, got {type(ignore).__name__}")
    for item in ignore:
        if not isinstance(item, str):
            kind = type(item).__name__
            raise TypeError(f"ignore must be a name pattern or a list of them (strings), got {kind} in it")
    return tuple(ignore)


def _number(kind: type = float, optional: bool = False) -> tuple[type, ...]:
    return (int, float, type(None)) if optional and kind is float else (int, float) if kind is float else (kind,)


@dataclass
class PruneSettings:
    """How much to prune, which channels go, and what stays (see ``yoloprune.prune`` for each option)."""

    ratio: float | None = field(default=None, metadata={"types": _number(optional=True)})
    target_macs: float | None = field(default=None, metadata={"types": _number(optional=True)})
    target_params: float | None = field(default=None, metadata={"types": _number(optional=True)})
    target_latency_ms: float | None = field(default=None, metadata={"types": _number(optional=True)})
    latency_imgsz: int | None = field(default=None, metadata={"types": (int, type(None))})
    latency_threads: int | None = field(default=None, metadata={"types": (int, type(None))})
    latency_unpruned_ms: float | None = field(default=None, metadata={"types": _number(optional=True)})
    cost: str | None = field(default=None, metadata={"types": (str, type(None))})
    unit_ratios: dict[str, float] | None = field(default=None, metadata={"types": (dict, type(None))})
    units_by: str = field(default="stage", metadata={"types": (str,)})
    importance: str | Callable[..., Any] = field(default="auto", metadata={"types": (str,)})
    aggregate: str = field(default="mean", metadata={"types": (str,)})
    normalize_layers: bool = field(default=False, metadata={"types": (bool,)})
    seed: int = field(default=0, metadata={"types": (int,)})
    ignore: tuple[str, ...] = field(default=(), metadata={"types": (list, tuple)})
    global_ranking: bool | None = field(default=None, metadata={"types": (bool, type(None))})
    max_ratio: float = field(default=0.8, metadata={"types": _number()})
    round_to: int = field(default=1, metadata={"types": (int,)})
    steps: int = field(default=1, metadata={"types": (int,)})
    protect_first: bool = field(default=True, metadata={"types": (bool,)})
    prune_head: bool = field(default=False, metadata={"types": (bool,)})
    family: str | None = field(default=None, metadata={"types": (str, type(None))})
    verify: bool = field(default=False, metadata={"types": (bool,)})
    tolerance: float = field(default=1e-4, metadata={"types": _number()})

    def __post_init__(self) -> None:
        given = [name for name in AMOUNTS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(AMOUNTS)}, not {' and '.join(given)}")
        if self.unit_ratios and (given or self.steps > 1):
            raise ValueError("unit_ratios replaces ratio and targets, in one step")
        if not given and not self.unit_ratios:
            self.ratio = DEFAULT_RATIO
        check_numbers(
            ratio=self.ratio,
            target_macs=self.target_macs,
            target_params=self.target_params,
            target_latency_ms=self.target_latency_ms,
            latency_unpruned_ms=self.latency_unpruned_ms,
            max_ratio=self.max_ratio,
        )
        if self.latency_unpruned_ms is not None and self.target_latency_ms is None:
            raise ValueError("latency_unpruned_ms is the unpruned timing a target_latency_ms is aimed from; give one")
        for name in ("round_to", "steps", "latency_threads"):
            value = getattr(self, name)
            if value is None and name == "latency_threads":  # every core this process may use
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not callable(self.importance) and self.importance not in CRITERIA:
            raise ValueError(f"unknown importance {self.importance!r}; choose one of {', '.join(CRITERIA)}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {self.aggregate!r}; choose one of {', '.join(AGGREGATES)}")
        if self.cost is not None and self.cost not in COSTS:  # None: resolved by pruning.run (``default_cost``)
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
        if self.cost == "latency" and (self.unit_ratios or self.global_ranking is False):
            what = (
                "unit_ratios fix each unit's ratio" if self.unit_ratios else "global_ranking=False (--uniform) does not"
            )
            raise ValueError(f"cost='latency' ranks channels globally; {what}")
        if self.units_by not in UNITS:
            raise ValueError(f"units_by must be one of {', '.join(UNITS)}, got {self.units_by!r}")
        if not math.isfinite(self.tolerance) or self.tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {self.tolerance}")
        if self.verify and self.steps > 1:
            raise ValueError("verify checks a single-step prune; use steps=1")
        self.ignore = _patterns(self.ignore)

    def record(self) -> dict[str, Any]:
        """The settings a checkpoint stores (plain data: a custom importance is recorded as ``custom``)."""
        keep = (
            "ratio unit_ratios target_macs target_params target_latency_ms importance seed ignore global_ranking "
            "max_ratio round_to aggregate normalize_layers steps protect_first prune_head cost"
        ).split()
        out = {name: getattr(self, name) for name in keep}
        out["importance"] = self.importance if isinstance(self.importance, str) else "custom"
        out["ignore"] = list(self.ignore)
        return out

    @classmethod
    def schema(cls, leave_out: tuple[str, ...] = ()) -> dict[str, tuple[type, ...]]:
        """Each option's accepted types, for configuration files (recipes), less ``leave_out``."""
        return {f.name: f.metadata["types"] for f in fields(cls) if f.name not in leave_out}

    @classmethod
    def defaults(cls, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
        """Each option's default as plain data, less ``leave_out``."""
        out = {f.name: f.default for f in fields(cls) if f.name not in leave_out}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


__all__ = ["AMOUNTS", "DEFAULT_RATIO", "PruneSettings"]
