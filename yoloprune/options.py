"""Parsing the values users type: ``KEY=VALUE`` assignments and lists of fractions."""

from __future__ import annotations

import re
from typing import Any

import yaml

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
