"""Sensitivity analysis: how much mAP each part of the network loses when pruned alone, and per-part ratios that
reach a MACs target with the least predicted loss (performance-aware pruning, in the spirit of PAGCP).

Each unit (a stage such as ``model.4``, or a single group) is pruned alone at a few ratios on a copy of the model and
evaluated on a validation subset. ``allocate`` then spends MACs like a multiple-choice knapsack: it keeps taking the
step (one unit to its next ratio) that saves MACs at the smallest predicted mAP cost, until the target is met.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yoloprune.io import write_atomic
from yoloprune.options import check_numbers

MAX_RATIOS_BYTES = 16 << 20  # a ratios.json this module writes: well under 1 MB
MAX_UNITS = 100_000  # units (stages or groups) a ratios.json may name

OUTPUTS = ("sensitivity.csv", "sensitivity.json", "sensitivity.png", "ratios.json")
"""What an analysis writes into its folder."""


@dataclass
class Row:
    unit: str
    ratio: float
    macs_saved: float  # fraction of the unpruned MACs this alone removes
    map50_95: float
    drop: float  # unpruned mAP50-95 minus this


def analyse(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
    by: str = "stage",
    imgsz: int = 640,
    batch: int = 16,
    max_images: int | None = None,
    importance: str = "auto",
    round_to: int = 1,
    overwrite: bool = False,
) -> list[Row]:
    """Prune every unit alone at every ratio and evaluate; writes ``sensitivity.csv`` and a plot into ``out``
    (replacing earlier ones only with ``overwrite``)."""
    from yoloprune.adapters import load_model, resolve
    from yoloprune.data.datasets import load_detection_set
    from yoloprune.evaluate.coco import evaluate
    from yoloprune.graph import build
    from yoloprune.graph.surgery import remove_channels
    from yoloprune.images import example_input
    from yoloprune.pruning.importance import channel_scores
    from yoloprune.pruning.run import first_layer
    from yoloprune.pruning.select import finish, unit_counts, units
    from yoloprune.workflows.sweep import progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(str(model))
    target = resolve(loaded.model, family=loaded.family)
    x = example_input(imgsz)
    ignore = (*target.ignore, *([first_layer(target.module)] if first_layer(target.module) else []))
    graph = build(target.module, x, outputs=target.outputs, ignore=ignore, policies=target.policies)
    scores = channel_scores(target.module, graph, importance)
    base_macs = graph.trace.macs
    dataset = load_detection_set(data)
    base = evaluate(target.module, dataset, imgsz=imgsz, batch=batch, max_images=max_images, family=loaded.family)
    rows = []
    for unit in progress(sorted(units(graph, by)), "sensitivity"):
        for ratio in ratios:
            selection = finish(graph, scores, unit_counts(graph, {unit: ratio}, by), round_to)
            if not selection.removed.any():
                continue
            net = copy.deepcopy(target.module)
            remove_channels(net, graph, selection.removed, target.policies)
            result = evaluate(net, dataset, imgsz=imgsz, batch=batch, max_images=max_images, family=loaded.family)
            rows.append(
                Row(unit, ratio, 1 - selection.macs / base_macs, result.map50_95, base.map50_95 - result.map50_95)
            )
    _write(out, rows, base.map50_95, by, overwrite)
    return rows


def allocate(rows: list[Row], target_macs: float) -> tuple[dict[str, float], float, float]:
    """Per-unit ratios whose summed MACs savings reach ``1 - target_macs`` at the least summed predicted drop.

    Returns the ratios, the predicted MACs fraction and the predicted mAP drop (savings and drops are taken as
    additive across units, which is what a sensitivity table can offer)."""
    options: dict[str, list[Row]] = {}
    for row in rows:
        options.setdefault(row.unit, []).append(row)
    for unit in options:
        options[unit].sort(key=lambda r: r.ratio)
    chosen: dict[str, int] = {unit: -1 for unit in options}
    saved, drop, need = 0.0, 0.0, 1 - target_macs
    while saved < need:
        best = None
        for unit, opts in options.items():
            i = chosen[unit] + 1
            if i >= len(opts):
                continue
            prev = opts[i - 1] if i > 0 else None
            gain = opts[i].macs_saved - (prev.macs_saved if prev else 0.0)
            cost = max(opts[i].drop, 0.0) - max(prev.drop if prev else 0.0, 0.0)
            if gain <= 0:
                continue
            rate = cost / gain
            if best is None or rate < best[0]:
                best = (rate, unit, gain, cost)
        if best is None:
            break
        _, unit, gain, cost = best
        chosen[unit] += 1
        saved, drop = saved + gain, drop + cost
    ratios = {unit: options[unit][i].ratio for unit, i in chosen.items() if i >= 0}
    return ratios, 1 - saved, drop


def write_ratios(
    out: str | Path, rows: list[Row], target_macs: float, by: str, overwrite: bool = False
) -> dict[str, Any]:
    """Allocate for ``target_macs`` and write ``ratios.json`` (what ``yoloprune prune --ratios-from`` reads)."""
    check_numbers(target_macs=target_macs)
    ratios, macs, drop = allocate(rows, target_macs)
    data = {
        "target_macs": target_macs,
        "by": by,
        "ratios": ratios,
        "predicted_macs": round(macs, 4),
        "predicted_drop": round(drop, 4),
    }
    write_atomic(Path(out) / "ratios.json", lambda f: f.write(json.dumps(data, indent=1).encode()), overwrite)
    return data


def read_ratios(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "ratios.json"
    if not path.is_file():
        raise FileNotFoundError(f"no ratios.json in {folder}; run `yoloprune sensitivity` first")
    bad = f"{path} is not a ratios.json that `yoloprune sensitivity` writes"
    try:
        if path.stat().st_size > MAX_RATIOS_BYTES:
            raise ValueError(f"larger than {MAX_RATIOS_BYTES:,} bytes")
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and json's errors are ValueErrors
        problem = str(exc).splitlines()[0][:200] if isinstance(exc, ValueError) and str(exc) else type(exc).__name__
        raise ValueError(f"{bad} ({problem}); run `yoloprune sensitivity` again") from None
    from yoloprune.pruning.settings import UNITS

    if not isinstance(data, dict) or not isinstance(data.get("ratios"), dict) or data.get("by") not in UNITS:
        raise ValueError(
            f"{bad} (it needs 'ratios', a mapping of units to ratios, and 'by', one of {', '.join(UNITS)})"
        )
    ratios = data["ratios"]
    if len(ratios) > MAX_UNITS or not all(isinstance(k, str) and 0 < len(k) <= 200 for k in ratios):
        raise ValueError(f"{bad} (its ratios are not keyed by at most {MAX_UNITS:,} unit names)")
    for value in ratios.values():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{bad} (a ratio that is not a number from 0 to below 1)")
    return data


def _write(out: Path, rows: list[Row], base: float, by: str, overwrite: bool) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0]).keys()) if rows else ["unit"])
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    write_atomic(out / "sensitivity.csv", lambda f: f.write(buffer.getvalue().encode()), overwrite)
    write_atomic(
        out / "sensitivity.json",
        lambda f: f.write(
            json.dumps({"baseline_map50_95": base, "by": by, "rows": [asdict(r) for r in rows]}, indent=1).encode()
        ),
        overwrite,
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for unit in sorted({r.unit for r in rows}):
        pts = sorted((r.ratio, r.drop) for r in rows if r.unit == unit)
        ax.plot(*np.array(pts).T, "o-", label=unit)
    ax.set_xlabel("fraction of the unit's channels removed")
    ax.set_ylabel("mAP50-95 drop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    write_atomic(out / "sensitivity.png", lambda f: fig.savefig(f, format="png", dpi=110), overwrite)
    plt.close(fig)


def rows_from(folder: str | Path) -> list[Row]:
    data = json.loads((Path(folder) / "sensitivity.json").read_text())
    return [Row(**r) for r in data["rows"]]


__all__ = ["Row", "allocate", "analyse", "read_ratios", "rows_from", "write_ratios"]
