"""A fine-tune's run folder: the settings record it keeps, checked whenever it is read back, and the rule that keeps
a run inside its folder (no links, through which a trainer would write elsewhere).

A run folder may come from anywhere (``--resume -o DIR``): its record is data of a fixed shape, refused in one line
naming the file when it is not, and a resume continues the run as recorded: a setting given again must agree.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SETTINGS_FILE = "yoloprune_finetune.json"
START_FILE = "start.pt"  # the model a run started from, copied into its folder (keep-best hands it back)
IN_MEMORY = "(in memory)"  # what a record says of a teacher given as a module

RUN_DEFAULTS: dict[str, Any] = {"epochs": 10, "imgsz": 640, "batch": 16}
"""What a fine-tune runs with when not told (a resumed run keeps what it was started with)."""

TRAINING_DEFAULTS: dict[str, Any] = {"kd_weight": 1.0, "sparsity": 0.0, "sparsity_kind": "bn"}
"""The distillation and sparsity settings when not told; the record keeps them at its top level."""

FAMILY_SETTINGS = ("epochs", "imgsz", "batch", "lr0", "kd_weight", "seed")
"""What a YOLOv5/YOLOv7/YOLOX run records of its loop's settings (and all a resume may take from it)."""


class RunFolderError(ValueError):
    """A run folder that cannot be resumed or written as it is (a damaged record, links inside it)."""


def check_no_links(out: Path) -> None:
    """Refuse a run folder that holds a symbolic link anywhere: the trainer writes ``last.pt``, ``args.yaml``,
    ``results.csv`` and label caches by name, and would write through a link to a file outside the folder."""
    if not out.exists():
        return
    for root, folders, files in os.walk(out, followlinks=False):
        for name in (*folders, *files):
            if Path(root, name).is_symlink():
                raise RunFolderError(
                    f"{Path(root, name)} is a symbolic link: a run folder must hold no links (a trainer would write "
                    "through it outside the folder); remove it or choose another -o"
                )


def read_record(out: Path) -> dict[str, Any]:
    """The settings a fine-tune recorded in ``out``, checked (empty when it recorded none)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise RunFolderError(f"{path} is not a readable settings record (JSON); start over with --overwrite") from None
    problem = _record_problem(record)
    if problem:
        raise RunFolderError(f"{path}: {problem}; start over with --overwrite")
    return record


def _record_problem(record: Any) -> str | None:
    """What is wrong with a record's shape, or None."""
    if not isinstance(record, dict):
        return "not a settings record (a JSON object)"
    if not isinstance(record.get("family", ""), str):
        return "'family' is not a name"
    if record.get("teacher") is not None and not isinstance(record["teacher"], str):
        return "'teacher' is not a path"
    for key in ("kd_weight", "sparsity"):
        if key in record and not _number(record[key], 0.0, 1e6):
            return f"'{key}' is not a number in [0, 1e6]"
    if record.get("sparsity_kind", "bn") not in ("bn", "group"):
        return "'sparsity_kind' is neither bn nor group"
    if record.get("start_fitness") is not None and not _number(record["start_fitness"], -1e9, 1e9):
        return "'start_fitness' is not a finite number"
    for section in ("args", "settings"):
        if section in record and not isinstance(record[section], dict):
            return f"'{section}' is not a mapping"
    settings = record.get("args") or record.get("settings") or {}
    if "settings" in record and set(record["settings"]) - set(FAMILY_SETTINGS):
        return f"'settings' holds keys other than {', '.join(FAMILY_SETTINGS)}"
    for key in ("epochs", "imgsz", "batch", "seed"):
        if key in settings and not (_whole(settings[key]) and 0 <= settings[key] <= 1_000_000):
            return f"'{key}' is not a whole number"
    if settings.get("lr0") is not None and not _number(settings["lr0"], 0.0, 10.0):
        return "'lr0' is not a learning rate"
    if settings.get("kd_weight") is not None and not _number(settings["kd_weight"], 0.0, 1e6):
        return "'kd_weight' is not a number in [0, 1e6]"
    return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, low: float, high: float) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and low <= value <= high


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """Every setting a record holds, the loop's and the top-level distillation and sparsity ones, by name."""
    settings = dict(record.get("args") or record.get("settings") or {})
    settings.update({k: record[k] for k in ("teacher", *TRAINING_DEFAULTS) if k in record})
    return settings


def resumed_settings(out: Path, record: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run in ``out`` continues with: the recorded ones, ``given`` (None: not given) checked
    against them. A setting given that differs is refused (a resume continues the run as it was set up; start over
    to change it). A folder with no record (not a yoloprune run) is resumed as its checkpoint says, ``given`` with
    the defaults."""
    defaults = {**RUN_DEFAULTS, **TRAINING_DEFAULTS}
    if not record:
        return {k: (defaults.get(k) if v is None else v) for k, v in given.items()}
    recorded = recorded_settings(record)
    for key, value in given.items():
        if value is None:
            continue
        was = recorded.get(key, defaults.get(key))
        if key == "teacher" and not isinstance(value, (str, Path)) and was == IN_MEMORY:
            continue  # the module a run distilled from, given again
        if (str(value) if key == "teacher" else value) != was:
            shown = f"its {key}={recorded[key]}" if key in recorded else f"no {key} setting"
            raise RunFolderError(
                f"--resume continues the run in {out} as it was started ({shown}); {key}={value} would change it: "
                "start over with --overwrite instead"
            )
    return {k: recorded.get(k, defaults.get(k)) if given[k] is None else given[k] for k in given}


def check_checkpoint_agrees(last: Path, record: dict[str, Any], train_args: Any) -> None:
    """``last.pt``'s own training settings (what ultralytics' resume uses) must be the run's recorded ones."""
    recorded = record.get("args") or {}
    if not record or not isinstance(train_args, dict):
        return
    for key in RUN_DEFAULTS:
        if key in recorded and train_args.get(key) != recorded[key]:
            raise RunFolderError(
                f"{last}: its {key} ({str(train_args.get(key))[:20]}) is not the run's recorded {recorded[key]}; "
                "the folder was altered: start over with --overwrite"
            )
