"""mAP versus latency: prune one model to several targets, fine-tune, evaluate, export and time each point.

Targets are fractions of the unpruned model's MACs, or (``by="latency"``) of its measured latency: each such point
is pruned to that share of the unpruned point's onnxruntime time (a latency target, aimed from that one timing), so
the points land evenly along the latency axis.

Every point starts from the original model (never cumulatively) and is written to ``DIR/points/`` as soon as it is
done, so a sweep that was stopped recomputes only the missing points; ``DIR/sweep.json`` records what the points
depend on (model, data, settings), and a folder made with anything else is refused rather than reused.
``results.csv``, ``results.json``, a Pareto plot and ``report.md`` are rewritten from the points at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from yoloprune.io import write_atomic
from yoloprune.options import SWEEP_BY, check_numbers

KEY_FILE = "sweep.json"  # what the points in a sweep folder were computed with
MAX_POINT_BYTES = 1 << 20  # a record this sweep writes is under 1 KB
FIELDS = ["target", "macs", "params", "map50_95", "map50", "latency_p50_ms", "checkpoint", "onnx", "seconds"]


@dataclass
class Point:
    """One model of the sweep; ``target`` (a MACs or latency fraction) 1.0 is the unpruned model."""

    target: float
    macs: int
    params: int
    map50_95: float
    map50: float
    latency_p50_ms: float
    checkpoint: str
    onnx: str
    seconds: float


def read_point(path: Path) -> Point:
    """A point record this sweep wrote; anything else (a damaged, hand-edited or forged file) is refused by name, in
    one line that never repeats what the file holds: numbers that are not finite (a latency that is not positive).
    Its ONNX file is the sweep folder's own (``path``'s folder's parent), named by the target, never a path the
    record names (which would be loaded and timed), and never a link."""
    gone = f"; delete {path} to compute the point again"
    try:
        if path.stat().st_size > MAX_POINT_BYTES:
            raise ValueError(f"larger than {MAX_POINT_BYTES:,} bytes")
        fields = json.loads(path.read_text())
        point = Point(**fields)
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        problem = str(exc).splitlines()[0] if isinstance(exc, (ValueError, TypeError)) and str(exc) else ""
        if not problem or "unexpected keyword" in problem:  # that names a key the file chose
            problem = "a field that is not a sweep point's" if problem else type(exc).__name__
        raise ValueError(f"{path} is not a sweep point ({problem[:200]}){gone}") from None
    numbers = (point.target, point.macs, point.params, point.map50_95, point.map50, point.latency_p50_ms, point.seconds)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise ValueError(f"{path} is not a sweep point (a field that should be a number is not){gone}")
    if not all(abs(v) < 1e18 if isinstance(v, int) else math.isfinite(v) for v in numbers):
        raise ValueError(f"{path} is not a sweep point (a number that is not finite){gone}")
    if point.latency_p50_ms <= 0 or not 0 < point.target <= 1 or min(point.macs, point.params, point.seconds) < 0:
        raise ValueError(
            f"{path} is not a sweep point (a latency that is not positive, or a target, count or time "
            f"out of range){gone}"
        )
    if not isinstance(point.onnx, str) or not isinstance(point.checkpoint, str):
        raise ValueError(f"{path} is not a sweep point (its file names are not strings){gone}")
    # the ONNX file a point is timed from is this folder's, named by its target, whatever the record says: a copied
    # or moved sweep still finds its files, and a forged record cannot send a file from elsewhere to be loaded
    onnx = path.parent.parent / "models" / onnx_name(point.target)
    if onnx.is_symlink():
        raise ValueError(f"{onnx} is a symbolic link; a sweep times only its own files{gone}")
    return replace(point, onnx=str(onnx))


def onnx_name(target: float) -> str:
    """The file a sweep point's model is exported to, in the sweep's ``models`` folder."""
    return "unpruned.onnx" if target == 1.0 else f"pruned-{target:.3f}.onnx"


def progress(items: Iterable[Any], desc: str) -> Iterator[Any]:
    """tqdm when it is installed, a line per item otherwise."""
    try:
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, file=sys.stderr)
    except ImportError:
        items = list(items)
        for i, item in enumerate(items, 1):
            print(f"{desc}: {i}/{len(items)}", file=sys.stderr, flush=True)
            yield item


def _digest(path: Path) -> str:
    """The start of a file's SHA-256, enough to tell files apart."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def sweep_key(model: str | Path, data: str | Path, **settings: Any) -> dict[str, Any]:
    """Everything a point depends on but its target: the model's content (or config name), the dataset (its path and
    the content of its yaml or JSON file) and the settings, as JSON values."""
    data_file = Path(data) if Path(data).is_file() else None
    key = {
        "model": _digest(Path(model)) if Path(model).is_file() else str(model),
        "data": str(Path(data).resolve()),
        "data_file": _digest(data_file) if data_file else None,
        **settings,
    }
    return json.loads(json.dumps(key, default=str))


def claim(out: Path, key: dict[str, Any], record: bool = True) -> None:
    """Refuse a folder holding points computed with anything but ``key``; with ``record``, write ``key`` to
    ``out/sweep.json`` when the folder holds no points yet."""
    path = out / KEY_FILE
    if not any((out / "points").glob("*.json")):
        if record:
            write_atomic(path, lambda f: f.write(json.dumps(key, indent=1).encode()), overwrite=True)
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{out} holds sweep points without a readable {KEY_FILE}; use another -o") from None
    names = [*key, *(k for k in old if k not in key)]  # a setting only the folder has differs too
    differs = [f"{k} {old.get(k)!r} there, {key.get(k)!r} here" for k in names if old.get(k) != key.get(k)]
    if differs:
        raise ValueError(f"{out} holds a sweep made with other settings ({'; '.join(differs)}); use another -o")


def sweep(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    targets: Iterable[float] = (0.9, 0.75, 0.6, 0.5, 0.4, 0.3),
    *,
    finetune_epochs: int = 0,
    kd_weight: float = 1.0,
    importance: str = "auto",
    global_ranking: bool | None = None,
    cost: str | None = None,
    by: str = "macs",
    round_to: int = 8,
    imgsz: int = 640,
    batch: int = 16,
    threads: int | None = None,
    runs: int = 30,
    device: str = "cpu",
    finetune_args: dict[str, Any] | None = None,
    calib: str | Path | None = None,
    calib_images: int = 64,
) -> list[Point]:
    """Run (or finish) a sweep of ``model`` (a checkpoint) over ``targets``, fractions of its MACs (``by="macs"``)
    or of its measured latency (``by="latency"``); returns every point, the unpruned one (target 1.0) first. With
    ``calib`` (a folder of unlabelled images) every pruned point is calibrated on them before it is fine-tuned or
    measured. ``cost="latency"`` ranks channels per millisecond of this machine's latency table (the default by
    latency with ``calib``: ``options.default_cost``); ``threads`` (default: every core this process may use) times
    it and every point."""
    from yoloprune.adapters import load_model, save_model
    from yoloprune.options import default_cost, default_threads, resolve_importance
    from yoloprune.pruning.settings import PruneSettings
    from yoloprune.train.recover import check_overrides
    from yoloprune.workflows.pipeline import default_teacher, measure, prune_to_file, recover

    out = Path(out)
    check_overrides(finetune_args or {})
    if by not in SWEEP_BY:
        raise ValueError(f"sweep targets are fractions of one of {', '.join(SWEEP_BY)}, not {by!r}")
    targets = sorted({float(t) for t in targets}, reverse=True)
    if any(not 0 < t < 1 for t in targets):
        raise ValueError(f"sweep targets are {by} fractions in (0, 1)")
    check_numbers(kd_weight=kd_weight)
    threads = default_threads() if threads is None else threads
    criterion = resolve_importance(importance, calib is not None)
    ranked_by = cost or default_cost(criterion, by == "latency", global_ranking)
    settings = PruneSettings(
        importance=importance,
        global_ranking=global_ranking,
        round_to=round_to,
        cost=ranked_by,
        latency_imgsz=imgsz,
        latency_threads=threads,
    )
    tuning = {"epochs": finetune_epochs, "kd_weight": kd_weight, "batch": batch, "args": finetune_args or {}}
    key = sweep_key(
        model,
        data,
        imgsz=imgsz,
        importance=importance,
        global_ranking=global_ranking,
        round_to=round_to,
        threads=threads,
        **({"cost": ranked_by} if ranked_by != "macs" else {}),  # folders swept before costs existed stay resumable
        **({"by": by} if by != "macs" else {}),
        finetune=tuning if finetune_epochs > 0 else None,
        calib={"images": str(Path(calib).resolve()), "count": calib_images} if calib is not None else None,
    )
    claim(out, key, record=False)  # a folder of other settings is refused first
    source = load_model(str(model))  # then the model is read (and refused, when it must be) before anything is written
    transfer = _new_classes(source, data)
    if transfer and finetune_epochs < 1:
        raise ValueError(
            f"{transfer}: a sweep on other classes fine-tunes every point, the unpruned one included; pass "
            "--finetune-epochs N"
        )
    points_dir, models_dir = out / "points", out / "models"
    points_dir.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(exist_ok=True)
    claim(out, key)
    teacher = default_teacher(model)
    unpruned_ms = 0.0  # the unpruned point's latency: what latency targets are fractions of
    for target in progress([1.0, *targets], "sweep"):
        record = points_dir / f"{target:.3f}.json"
        if record.is_file():
            if target == 1.0:
                unpruned_ms = read_point(record).latency_p50_ms
            continue
        start = time.perf_counter()
        if target == 1.0:
            checkpoint = Path(model)
            if checkpoint.suffix != ".pt":
                checkpoint = models_dir / "unpruned.pt"
                save_model(copy.deepcopy(source), checkpoint, {}, overwrite=True)
        else:
            checkpoint = models_dir / f"pruned-{target:.3f}.pt"
            if by == "latency":  # on other classes the unpruned point's head differs: time the source to aim
                aim = None if transfer else unpruned_ms
                goal = {"target_latency_ms": target * unpruned_ms, "latency_unpruned_ms": aim}
            else:
                goal = {"target_macs": target}
            at_target = replace(settings, ratio=None, family=source.family, **goal)
            prune_to_file(
                copy.deepcopy(source),
                imgsz,
                at_target,
                checkpoint,
                overwrite=True,
                calib=calib,
                calib_images=calib_images,
            )
        # every pruned point is fine-tuned; the unpruned reference too when it must learn the data's classes
        if finetune_epochs > 0 and (target < 1.0 or transfer):
            checkpoint = recover(
                checkpoint,
                data,
                teacher=teacher,
                epochs=finetune_epochs,
                kd_weight=kd_weight,
                imgsz=imgsz,
                batch=batch,
                device=device,
                out=out / "finetune" / f"{target:.3f}",
                overwrite=True,
                **(finetune_args or {}),
            )
        onnx = models_dir / onnx_name(target)
        m = measure(checkpoint, data, imgsz, batch=batch, onnx=onnx, threads=threads, runs=runs)
        seconds = time.perf_counter() - start
        point = Point(target, m.macs, m.params, m.map50_95, m.map50, m.latency_ms, str(checkpoint), str(onnx), seconds)
        if target == 1.0:
            unpruned_ms = m.latency_ms
        write_atomic(record, lambda f, p=point: f.write(json.dumps(asdict(p), indent=1).encode()))
    points = [read_point(p) for p in sorted(points_dir.glob("*.json"))]
    points.sort(key=lambda p: -p.target)
    how = f"p50 of {runs} runs as each point finished"
    if len(points) > 1 and all(Path(p.onnx).is_file() for p in points):
        points = _side_by_side(points, imgsz, threads, runs)
        how = f"every point timed side by side at the end (median of 4 interleaved rounds of {max(1, runs // 4)} runs)"
    timing = f"Latency: onnxruntime on this machine's CPU, {threads} thread(s), {imgsz}x{imgsz}, {how}."
    aimed = "the unpruned model's measured latency" if by == "latency" else "its MACs"
    ranked = " Channels ranked per millisecond of the latency table." if ranked_by == "latency" else ""
    write_results(points, out, f"{timing} Targets: fractions of {aimed}.{ranked}", by)
    return points


def _side_by_side(points: list[Point], imgsz: int, threads: int, runs: int) -> list[Point]:
    """The points with their latency timed again, all in turn (``bench.side_by_side``), for the results: a machine
    whose speed drifts between points (this one's by 10-50% between minutes with 2 threads) would otherwise draw
    the curve from different machines. The records keep the timings they were made with (latency targets stay
    aimed from the unpruned point's)."""
    from yoloprune.export.bench import side_by_side

    timed = side_by_side([p.onnx for p in points], imgsz, threads, runs=max(1, runs // 4))
    return [replace(p, latency_p50_ms=ms) for p, ms in zip(points, timed)]


def _new_classes(source: Any, data: str | Path) -> str:
    """What differs when the model predicts another number of classes than ``data`` has (empty when it does not)."""
    from yoloprune.adapters import adapter
    from yoloprune.data.datasets import load_detection_set

    had, wanted = adapter(source.family).classes(source.model), load_detection_set(data, "val").nc
    return f"the model predicts {had} classes, {data} has {wanted}" if had != wanted else ""


def write_results(points: list[Point], out: Path, timing: str = "", by: str = "macs") -> None:
    """results.csv, results.json, pareto.png and report.md from the points (``timing`` says how latency was taken,
    ``by`` what the targets are fractions of)."""
    rows = [asdict(p) for p in points]
    write_atomic(out / "results.json", lambda f: f.write(json.dumps(rows, indent=1).encode()), overwrite=True)

    def write_csv(f: Any) -> None:
        text = [",".join(FIELDS)] + [",".join(str(r[k]) for k in FIELDS) for r in rows]
        f.write(("\n".join(text) + "\n").encode())

    write_atomic(out / "results.csv", write_csv, overwrite=True)
    plot(points, out / "pareto.png")
    base = next((p for p in points if p.target == 1.0), None)
    lines = [
        "# mAP versus latency",
        "",
        *([timing, ""] if timing else []),
        f"| {'latency' if by == 'latency' else 'MACs'} target | GMACs | params (M) | mAP50-95 | mAP50 | ONNX p50 (ms) "
        "| latency vs unpruned |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        ratio = p.latency_p50_ms / base.latency_p50_ms if base else float("nan")
        name = "unpruned" if p.target == 1.0 else f"{p.target:.2f}"
        lines.append(
            f"| {name} | {p.macs / 1e9:.2f} | {p.params / 1e6:.2f} | {p.map50_95:.4f} | {p.map50:.4f} | "
            f"{p.latency_p50_ms:.1f} | {ratio:.2f} |"
        )
    lines += ["", "![Pareto plot](pareto.png)", ""]
    write_atomic(out / "report.md", lambda f: f.write("\n".join(lines).encode()), overwrite=True)


def plot(points: list[Point], path: Path) -> None:
    """mAP50-95 against ONNX latency and against MACs, the unpruned model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "latency_p50_ms", "onnxruntime CPU latency p50 (ms)"), (axes[1], "macs", "GMACs")):
        xs = [getattr(p, key) / (1e9 if key == "macs" else 1) for p in points]
        ys = [p.map50_95 for p in points]
        ax.plot(xs, ys, "o-", color="tab:blue", label="pruned")
        for p, x, y in zip(points, xs, ys):
            if p.target == 1.0:
                ax.plot([x], [y], "*", color="tab:red", markersize=14, label="unpruned")
            else:
                ax.annotate(f"{p.target:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()

    def save(f: Any) -> None:
        fig.savefig(f, format="png", dpi=110)

    write_atomic(path, save, overwrite=True)
    plt.close(fig)
