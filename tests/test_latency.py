"""Latency-aware pruning: the latency model, the knapsack, the measured table and latency targets.

No test times anything: the tables here hold MACs or made-up costs, and the whole-model clock counts MACs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import MacsTable, randomize
from torch import nn

import yoloprune
from yoloprune.adapters import resolve
from yoloprune.adapters.ultralytics import from_config
from yoloprune.export.onnx import export_onnx
from yoloprune.graph import build
from yoloprune.graph.records import ConvCall
from yoloprune.pruning.importance import channel_scores as run_scores
from yoloprune.pruning.knapsack import conv_macs
from yoloprune.pruning.latency import (
    QUANTUM,
    LatencyBudget,
    LatencyModel,
    block_widths,
    channel_block,
    grid_widths,
)
from yoloprune.pruning.run import prune as run_prune
from yoloprune.pruning.settings import PruneSettings

X = torch.zeros(1, 3, 64, 64)


def graph_of(net: nn.Module, x: torch.Tensor = X):
    return build(net, x, outputs=resolve(net).outputs)


def test_the_trace_records_each_convolutions_geometry():
    net = from_config("yolov8n.yaml")
    convs = graph_of(net).trace.convs
    first = convs["model.0.conv.weight"]
    assert first == [ConvCall(3, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1, (64, 64))]
    assert convs["model.1.conv.weight"][0].size == (32, 32)
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in net.modules())


def test_grid_widths_round_up_to_the_runtimes_blocks():
    assert grid_widths(64) == (16, 32, 48, 64)
    assert grid_widths(100) == (32, 64, 80, 100)  # 25, 50, 75% rounded up to multiples of 16; the full width
    assert grid_widths(100, quantum=8) == (32, 56, 80, 100)
    assert grid_widths(24) == (6, 12, 18, 24)  # narrower than two blocks: every width may be used
    assert grid_widths(1) == (1,)
    assert block_widths(64) == (16, 32, 48, 64)  # outputs: every multiple of 16 and the full width
    assert block_widths(100) == (16, 32, 48, 64, 80, 96, 100)
    assert block_widths(24) == grid_widths(24) and block_widths(100, quantum=1) == grid_widths(100, quantum=1)


def test_a_table_of_macs_predicts_exactly_what_the_graph_counts():
    """MACs are bilinear in the kept widths, so the interpolated table must equal the graph's own count."""
    net = randomize(from_config("yolov8n.yaml"))
    graph = graph_of(net)
    table = LatencyModel(graph, conv_macs, quantum=1)
    nothing = np.zeros(graph.num_comps, dtype=bool)
    assert table.predict() == pytest.approx(graph.trace.macs / 1e6, rel=1e-9)
    rng = np.random.default_rng(0)
    removed = nothing.copy()
    for g in graph.prunable_groups:
        removed[rng.choice(g.comps, size=g.channels // 3, replace=False)] = True
    assert table.predict(removed) == pytest.approx(graph.estimate(removed)[0] / 1e6, rel=1e-9)
    assert table.predict(removed) < 0.8 * table.predict()


def test_a_depthwise_convolution_is_costed_by_its_kept_channels():
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        nn.SiLU(),
        nn.Conv2d(32, 8, 1),
    )
    graph = build(net, torch.zeros(1, 3, 16, 16))
    table = LatencyModel(graph, conv_macs, quantum=1)
    removed = np.zeros(graph.num_comps, dtype=bool)
    (group,) = graph.prunable_groups  # the first conv's outputs flow through the depthwise one
    removed[group.comps[:8]] = True
    assert table.predict(removed) == pytest.approx(graph.estimate(removed)[0] / 1e6, rel=1e-9)


def slow_at_full_resolution(call: ConvCall) -> float:
    """A made-up device on which layers reading a quarter of the input's resolution or more cost ten times more per
    MAC."""
    return conv_macs(call) * (10.0 if call.size[0] >= 16 else 1.0)


def test_latency_cost_prunes_where_the_milliseconds_are():
    """At the same MACs, ranking per millisecond takes more from the slow layers and predicts a faster model than
    ranking per MAC (for l2 scores, which do not compare across layers, every layer losing the same share); the MACs
    target is met either way."""
    results = {}
    for cost in ("macs", "latency"):
        net = randomize(from_config("yolov8n.yaml"))
        settings = PruneSettings(target_macs=0.6, cost=cost, round_to=8)
        budget = LatencyBudget(lambda g: LatencyModel(g, slow_at_full_resolution))
        report = run_prune(net, X, settings, latency=budget)
        graph = graph_of(net)
        results[cost] = (report.macs_ratio, LatencyModel(graph, slow_at_full_resolution).predict(), net)
        # l2 scores ranked per millisecond: said to compare layers by their milliseconds alone
        assert any("ranks layers by their milliseconds alone" in n for n in report.notes) == (cost == "latency")
    base = LatencyModel(graph_of(from_config("yolov8n.yaml")), slow_at_full_resolution).predict()
    for ratio, _, _ in results.values():
        assert ratio == pytest.approx(0.6, abs=0.02)
    assert results["latency"][1] < 0.97 * results["macs"][1] < base
    early = "model.3"  # reads 16x16: ten times the cost per MAC
    widths = {cost: dict(r[2].named_modules())[early].conv.out_channels for cost, r in results.items()}
    assert widths == {"macs": 40, "latency": 16}  # l2 per MAC: every layer loses the same share


def test_a_note_every_step_repeats_is_kept_once():
    net = randomize(from_config("yolov8n.yaml"))
    budget = LatencyBudget(lambda g: LatencyModel(g, slow_at_full_resolution))
    report = run_prune(net, X, PruneSettings(target_macs=0.6, cost="latency", steps=2), latency=budget)
    assert report.macs_ratio == pytest.approx(0.6, abs=0.02)
    assert sum("ranks layers by their milliseconds alone" in n for n in report.notes) == 1  # l2 per ms, both steps


def test_a_latency_goal_is_met_in_predicted_milliseconds():
    net = randomize(from_config("yolov8n.yaml"))
    budget = LatencyBudget(lambda g: LatencyModel(g, slow_at_full_resolution), fraction=0.5)
    before = LatencyModel(graph_of(net), slow_at_full_resolution).predict()
    run_prune(net, X, PruneSettings(target_latency_ms=1.0, round_to=8), latency=budget)
    after = LatencyModel(graph_of(net), slow_at_full_resolution).predict()
    assert 0.47 <= after / before <= 0.5


def blocked(call: ConvCall) -> float:
    """A made-up runtime that computes in blocks of 16 channels and, above 64 outputs, splits outputs in steps of 32
    (as onnxruntime does on AVX-512 with 2 threads): a width costs what the step above it costs."""

    def up(width: int, step: int) -> int:
        return -(-width // step) * step

    cout = up(call.out_channels, QUANTUM if call.out_channels <= 64 else 2 * QUANTUM)
    return conv_macs(replace(call, in_channels=up(call.in_channels, QUANTUM), out_channels=cout))


def test_the_runtimes_channel_block_is_found_by_timing():
    assert channel_block(blocked) == 16
    assert channel_block(lambda c: conv_macs(replace(c, out_channels=-(-c.out_channels // 8) * 8))) == 8
    assert channel_block(conv_macs) == 1  # every channel costs
    assert channel_block(slow_at_full_resolution) == 1


def test_the_table_reads_every_output_step_and_rounds_widths_up_to_the_block():
    graph = graph_of(randomize(from_config("yolov8s.yaml")))
    table = LatencyModel(graph, blocked)
    assert table.quantum == 16
    layer = next(x for x in table.layers if x.name == "model.8.cv2.conv.weight")  # 768 -> 512
    first = layer.calls[0]
    assert layer.outs == tuple(range(16, 513, 16)) and layer.ins == (192, 384, 576, 768)
    for cin, cout in [(768, 512), (768, 500), (700, 480), (600, 470), (200, 90), (100, 33), (17, 40)]:
        assert layer.ms(cin, cout) == pytest.approx(blocked(replace(first, in_channels=cin, out_channels=cout)))
    assert layer.ms(768, 72) == layer.ms(768, 96) > layer.ms(768, 64)


def test_latency_ranking_keeps_widths_on_the_runtimes_blocks():
    widths, predicted = {}, {}
    for cost in ("macs", "latency"):
        net = randomize(from_config("yolov8s.yaml"))
        budget = LatencyBudget(lambda g: LatencyModel(g, blocked))
        report = run_prune(net, X, PruneSettings(target_macs=0.5, cost=cost, round_to=8), latency=budget)
        assert report.macs_ratio == pytest.approx(0.5, abs=0.02)
        widths[cost] = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d) and m.out_channels >= 32]
        predicted[cost] = LatencyModel(graph_of(net), blocked).predict()
    assert any(w % 16 for w in widths["macs"])  # l2 per MAC (every layer alike), some widths land between blocks
    assert not any(w % 16 for w in widths["latency"])  # ranked per millisecond, none does
    assert predicted["latency"] < 0.98 * predicted["macs"]


def test_run_prune_refuses_latency_without_a_table():
    with pytest.raises(ValueError, match="times candidates with onnxruntime"):
        run_prune(from_config("yolov8n.yaml"), X, PruneSettings(target_latency_ms=5.0))
    with pytest.raises(ValueError, match="ranks by a latency table"):
        run_prune(from_config("yolov8n.yaml"), X, PruneSettings(target_macs=0.5, cost="latency"))


def relative(clock, unpruned_ms):
    """``bench.relative_latency`` on a deterministic ``clock``, against an unpruned model that takes ``unpruned_ms``."""
    return lambda model, reference, imgsz, threads, **_: clock(model, imgsz, threads) / unpruned_ms


def test_relative_latency_takes_turns_so_a_drifting_machine_cancels_out(monkeypatch, tmp_path):
    """The model and its reference are timed in alternate rounds and the median per-round ratio is returned: a
    machine whose speed swings by 30% between rounds still gives the model's true share."""
    from yoloprune.export import bench

    drift = [1.0, 1.3, 0.8, 1.1]
    calls = []

    def clock(run, runs, warmup):
        index = len(calls)
        calls.append(run() is not None)  # each runner really runs its exported model
        share = 1.0 if index % 2 == 0 else 0.4  # reference first, then the model, in every round
        return bench.Timing(10.0 * drift[index // 2] * share, 0.0, 0.0, runs, warmup)

    net = from_config("yolov8n.yaml").eval()
    reference = tmp_path / "reference.onnx"
    export_onnx(net, reference, imgsz=64)
    monkeypatch.setattr(bench, "time_calls", clock)
    assert bench.relative_latency(net, reference, 64, 1, rounds=4, runs=3) == pytest.approx(0.4)
    assert reference.is_file()  # the reference is read, never replaced
    assert calls == [True] * 8


def test_files_timed_side_by_side_take_turns_so_a_drifting_machine_moves_them_alike(monkeypatch, tmp_path):
    """``bench.side_by_side``: every file is timed in each round, in turn, and its figure is the median of its
    rounds: with the machine 1.0, 1.5, 0.9 and 1.1x as slow in four rounds, files taking 10, 6 and 3 ms read 10.5,
    6.3 and 3.15 (each at its rounds' median drift, 1.05), and their ratios stay exact."""
    from yoloprune.export import bench

    drift, shares, calls = [1.0, 1.5, 0.9, 1.1], [10.0, 6.0, 3.0], []

    def clock(run, runs, warmup):
        index = len(calls)
        calls.append(runs)
        return bench.Timing(shares[index % 3] * drift[index // 3], 0.0, 0.0, runs, warmup)

    path = tmp_path / "m.onnx"
    export_onnx(from_config("yolov8n.yaml").eval(), path, imgsz=64)
    monkeypatch.setattr(bench, "time_calls", clock)
    assert bench.side_by_side([path, path, path], 64, 1, rounds=4, runs=2) == pytest.approx([10.5, 6.3, 3.15])
    assert calls == [2] * 12  # 4 rounds of 2 runs, three files in each


def test_latency_target_lands_under_budget(monkeypatch):
    """The target path end to end on deterministic clocks: the whole model takes its MACs in microseconds plus a
    fixed 2 ms the table does not hold, so the first candidate lands over the budget and the line through it and
    the unpruned model aims the next one under."""
    from yoloprune.export import bench, latency_table
    from yoloprune.graph.counting import count_macs

    def clock(model, imgsz, threads):
        return 2.0 + count_macs(model, torch.zeros(1, 3, imgsz, imgsz)) / 1e6 / 1e3

    from yoloprune.pruning import run

    kept, references = [], []

    def unpruned_clock(model, imgsz, threads, runs=20, onnx_path=None):
        kept.append(onnx_path)
        return clock(model, imgsz, threads)

    monkeypatch.setattr(bench, "module_latency", unpruned_clock)
    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    scored = []
    monkeypatch.setattr(run, "channel_scores", lambda *a, **k: scored.append(1) or run_scores(*a, **k))
    model = randomize(from_config("yolov8n.yaml"))
    unpruned = clock(model, 128, 1)
    against = relative(clock, unpruned)
    monkeypatch.setattr(
        bench, "relative_latency", lambda net, ref, *a, **k: references.append(ref) or against(net, ref, *a, **k)
    )
    budget = 2.0 + 0.5 * (unpruned - 2.0)
    report = yoloprune.prune(model, X, target_latency_ms=budget, latency_imgsz=128, latency_threads=2)
    assert report.latency_ms == pytest.approx(clock(model, 128, 1))
    assert 0.97 * budget <= report.latency_ms <= budget
    latency = report.settings["latency"]
    assert latency["unpruned_ms"] == pytest.approx(unpruned) and latency["threads"] == 2 and latency["imgsz"] == 128
    assert report.settings["cost"] == "macs" and report.settings["global_ranking"] is False and MacsTable.made[-1] == 2
    # l2 scores do not compare across layers: every layer loses the same share, the table predicting the cut
    assert "measured" in report.notes[-1]
    assert len(scored) == 1  # the candidate and the final prune score the same network once
    assert len(kept) == 1 and kept[0] is not None and len(references) >= 2 and set(references) == {kept[0]}
    # the unpruned model is exported once: the file its timing wrote is the reference every candidate runs against


def test_a_calibrated_latency_target_ranks_per_millisecond_unless_every_layer_loses_alike(monkeypatch, tmp_path):
    """With calibration images (recon scores, which compare across layers) a latency target is ranked per
    millisecond; with ``global_ranking=False`` (--uniform) it is met as a MACs target is, not refused."""
    from yoloprune.data import synthesize
    from yoloprune.export import bench, latency_table
    from yoloprune.graph.counting import count_macs

    def clock(model, imgsz, threads, runs=20, **_):
        return count_macs(model, torch.zeros(1, 3, imgsz, imgsz)) / 1e9

    root = synthesize(tmp_path / "d", train=4, val=1, imgsz=64, classes=3, seed=1)
    images = root.parent / "images" / "train"
    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    unpruned = clock(from_config("yolov8n.yaml"), 64, 1)
    monkeypatch.setattr(bench, "relative_latency", relative(clock, unpruned))
    for uniform, given, cost in ((None, None, "latency"), (False, None, "macs"), (None, "macs", "macs")):
        model = randomize(from_config("yolov8n.yaml"))
        report = yoloprune.prune(
            model,
            X,
            target_latency_ms=0.6 * unpruned,
            latency_unpruned_ms=unpruned,
            calib=images,
            calib_images=4,
            global_ranking=uniform,
            cost=given,
            latency_threads=1,
        )
        assert report.settings["importance"] == "recon" and report.settings["cost"] == cost
        assert report.settings["global_ranking"] is (uniform is None)  # recon per MAC: globally, over the table
        assert 0.97 * 0.6 <= clock(model, 64, 1) / unpruned <= 0.6


def test_a_latency_target_aims_from_a_given_unpruned_timing(monkeypatch):
    """With ``latency_unpruned_ms`` the unpruned model is not timed again: every candidate's share is taken of the
    given milliseconds (here 1.5x what the clock says, as if timed on a slower moment), so two runs given one timing
    aim at the same share."""
    from yoloprune.export import bench, latency_table
    from yoloprune.graph.counting import count_macs

    def clock(model, imgsz, threads, runs=20, **_):
        return count_macs(model, torch.zeros(1, 3, imgsz, imgsz)) / 1e9

    def never(*args, **kwargs):
        raise AssertionError("the unpruned model was timed although its milliseconds were given")

    monkeypatch.setattr(bench, "module_latency", never)
    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    model = randomize(from_config("yolov8n.yaml"))
    true_ms = clock(model, 128, 1)
    monkeypatch.setattr(bench, "relative_latency", relative(clock, true_ms))
    given = 1.5 * true_ms
    report = yoloprune.prune(
        model, X, target_latency_ms=0.6 * given, latency_unpruned_ms=given, latency_imgsz=128, latency_threads=1
    )
    share = clock(model, 128, 1) / true_ms
    assert 0.97 * 0.6 <= share <= 0.6
    assert report.latency_ms == pytest.approx(share * given)
    assert report.settings["latency"]["unpruned_ms"] == given
    with pytest.raises(ValueError, match="latency_unpruned_ms is the unpruned timing a target_latency_ms"):
        PruneSettings(target_macs=0.5, latency_unpruned_ms=given)
    with pytest.raises(ValueError, match="latency_unpruned_ms must be positive, got 0"):
        PruneSettings(target_latency_ms=3.0, latency_unpruned_ms=0)


def test_a_latency_target_the_model_already_meets_is_refused(monkeypatch):
    from yoloprune.export import bench, latency_table

    monkeypatch.setattr(bench, "module_latency", lambda model, imgsz, threads, runs=20, **_: 3.0)
    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    with pytest.raises(yoloprune.graph.PruneError, match=r"already runs in 3\.0 ms"):
        yoloprune.prune(from_config("yolov8n.yaml"), X, target_latency_ms=4.0)


def test_settings_record_the_cost_and_refuse_unknown_ones():
    from yoloprune.options import default_cost

    assert PruneSettings(target_latency_ms=3.0).cost is None  # resolved when the importance is known
    assert default_cost("recon", True) == "latency"  # scores that compare across layers, per millisecond
    assert default_cost("l2", True) == "macs" and default_cost("recon", False) == "macs"
    assert default_cost(lambda model, graph: None, True) == "macs"
    assert default_cost("recon", True, global_ranking=False) == "macs"  # --uniform: every layer alike
    with pytest.raises(ValueError, match="cost must be one of macs, latency"):
        PruneSettings(cost="flops")
    with pytest.raises(ValueError, match="unit_ratios fix each unit"):
        PruneSettings(unit_ratios={"model.2": 0.5}, cost="latency")
    with pytest.raises(ValueError, match=r"global_ranking=False \(--uniform\) does not"):
        PruneSettings(target_latency_ms=3.0, cost="latency", global_ranking=False)
    assert PruneSettings(target_latency_ms=3.0, global_ranking=False).cost is None  # uniform to a latency target


def test_the_conv_timer_times_a_conv_once_and_caches_it(tmp_path, capsys):
    from yoloprune.export.latency_table import ConvTimer, conv_onnx
    from yoloprune.export.onnx import session

    call = ConvCall(8, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1, (20, 20))
    out = session(conv_onnx(call)).run(None, {"x": np.ones((1, 8, 20, 20), np.float32)})[0]
    assert out.shape == (1, 16, 10, 10)
    timer = ConvTimer(1, runs=2, warmup=0, cache=tmp_path)
    ms = timer(call)
    assert ms > 0 and timer.measured == 1 and timer(call) == ms and timer.measured == 1
    timer(ConvCall(8, 8, (1, 1), (1, 1), (0, 0), (1, 1), 1, (4, 4)))
    said = capsys.readouterr().err.splitlines()
    assert said == [
        f"timing convolutions alone with onnxruntime for the latency table (1 thread(s); cached in {tmp_path})"
    ]
    path = timer.save()
    assert path is not None and path.parent == tmp_path
    again = ConvTimer(1, cache=tmp_path)
    assert again(call) == ms and again.measured == 0 and again.save() is None
    assert capsys.readouterr().err == ""  # nothing to time, nothing said
    assert ConvTimer(2, cache=tmp_path).path != path  # each thread count has its own table
    data = json.loads(path.read_text())
    data["convs"] = {k: "fast" for k in data["convs"]}
    path.write_text(json.dumps(data))
    assert ConvTimer(1, cache=tmp_path).entries == {}  # a table that does not parse is measured again


def test_the_cli_prunes_to_a_latency_target_with_every_core_by_default(monkeypatch, tmp_path, capsys):
    from yoloprune.cli import main
    from yoloprune.export import bench, latency_table
    from yoloprune.graph.counting import count_macs
    from yoloprune.options import default_threads

    seen = []

    def clock(model, imgsz, threads, runs=20, **_):
        seen.append(threads)
        return 2.0 + count_macs(model, torch.zeros(1, 3, imgsz, imgsz)) / 1e9

    monkeypatch.setattr(bench, "module_latency", clock)
    monkeypatch.setattr(latency_table, "ConvTimer", MacsTable)
    unpruned = clock(from_config("yolov8n.yaml"), 64, 1)
    monkeypatch.setattr(bench, "relative_latency", relative(clock, unpruned))
    out = tmp_path / "p.pt"
    budget = f"{2.0 + 0.6 * (unpruned - 2.0):.4f}"
    assert main(["prune", "yolov8n.yaml", "-o", str(out), "--imgsz", "64", "--target-latency", budget]) == 0
    printed = capsys.readouterr().out
    assert f"ms ({default_threads()} thread(s), 64x64)" in printed and "predicted" in printed
    assert set(seen[1:]) == {default_threads()} and out.is_file()
    section = yoloprune.io.load_data(out)["yoloprune"]
    assert section["settings"]["cost"] == "macs" and section["settings"]["latency"]["threads"] == default_threads()


def test_the_cli_takes_a_known_unpruned_timing_only_with_a_latency_target(tmp_path, capsys):
    from yoloprune.cli import main

    out = tmp_path / "p.pt"
    assert main(["prune", "yolov8n.yaml", "-o", str(out), "--target-macs", "0.5", "--unpruned-ms", "40"]) == 2
    assert "latency_unpruned_ms is the unpruned timing a target_latency_ms is aimed from" in capsys.readouterr().err
    assert not out.exists()


def test_each_latency_candidate_is_aimed_by_the_ones_timed_before():
    from yoloprune.pruning.latency import next_fraction

    # one timing: in proportion (0.5 measured 110 ms for a 100 ms target: aim at 98.5 ms)
    assert next_fraction([(0.5, 110.0)], 100.0) == pytest.approx(0.5 * 98.5 / 110)
    # both sides of the aim: interpolated between them
    assert next_fraction([(0.5, 110.0), (0.4, 90.0)], 100.0) == pytest.approx(0.4 + 8.5 / 20 * 0.1)
    # both over: through the two nearest, never below half the deepest cut tried
    assert next_fraction([(0.5, 120.0), (0.45, 118.0)], 100.0) == pytest.approx(0.225)
    assert next_fraction([(0.5, 104.0), (0.48, 102.0)], 100.0) == pytest.approx(0.48 - 3.5 / 2 * 0.02)
    # with the unpruned model: past the deepest cut at most twice the step of the line from the unpruned model to it
    # (in a real search candidates at 0.712 and 0.711 of the unpruned for 0.70 drew a line to a copy measured at
    # 0.31; here the line through them reaches 0.25, the line from the unpruned model 0.656)
    reach = 0.68 - (0.711 - 0.6895) * 0.32 / 0.289
    assert next_fraction([(1.0, 1.0), (0.70, 0.712), (0.68, 0.711)], 0.70) == pytest.approx(0.68 - 2 * (0.68 - reach))
    # with the unpruned model among them: a line through it and one copy holds a constant cost the table left out
    # (147 ms unpruned, 77 at half the table: 7 ms that do not shrink; aimed at 0.4671, not in proportion at 0.4701)
    assert next_fraction([(1.0, 147.0), (0.5, 77.0)], 73.5) == pytest.approx(0.5 - (77.0 - 0.985 * 73.5) / 140)
    # a deeper cut measured slower than a shallower one (noise) draws no line: in proportion from the deepest
    assert next_fraction([(1.0, 100.0), (0.5, 101.0)], 50.0) == pytest.approx(0.25)  # 0.2438, at most halved
    assert next_fraction([(1.0, 100.0), (0.6, 80.0), (0.5, 81.0)], 60.0) == pytest.approx(0.5 * 59.1 / 81)
    # never a share already timed: the whole model measured under the target aims at 1.0, timed already: 0.98
    assert next_fraction([(1.0, 60.0)], 100.0) == pytest.approx(0.98)


def test_the_target_search_never_times_the_same_cut_twice(monkeypatch):
    """A copy that measures the same whatever is cut (60 ms for a 100 ms target) keeps aiming at one share; once a
    share has been timed, the next is taken 2% deeper rather than timed again. A copy shaped like one timed already
    (a cut that moves in steps) is not timed again either: the share steps 2% past it."""
    from yoloprune.export import bench
    from yoloprune.workflows.pipeline import _fit_latency

    timings: list[int] = []
    monkeypatch.setattr(bench, "relative_latency", lambda *a, **k: timings.append(1) or 0.3)
    tried: list[float] = []

    def prune_copy(net, f):  # keeps a share of model.2's channels that moves in steps of 5%
        tried.append(f)
        conv = net.model[2].cv1.conv
        conv.weight = nn.Parameter(conv.weight[: round(f * 20) * conv.out_channels // 20])

    model = from_config("yolov8n.yaml")
    fraction, measured, unpruned = _fit_latency(model, 100.0, 200.0, 64, PruneSettings(), prune_copy)
    aimed = 0.5 + (98.5 - 60) / 140 * 0.5  # 0.6375, between the first copy and the unpruned model (1.0, 200 ms)
    # every later aim is a share timed already: 2% deeper each time (0.6248 keeps 12/20, timed; 0.6123 keeps 12/20
    # again, so it is not timed: its copy ran under the target, so the share steps 2% wider past those tried, to
    # 0.6505, which keeps 13/20 like 0.6375: between the widest copy under the target and the unpruned model over
    # it no other shape is left at this step, and the search stops)
    assert tried == pytest.approx([0.5, aimed, aimed * 0.98, aimed * 0.98**2, aimed / 0.98])
    assert len(timings) == 3  # 10/20, 13/20 and 12/20 of the channels: each shape timed once
    assert (fraction, measured) == (0.5, pytest.approx(60.0))  # every copy fits and ties: the first is kept
    assert unpruned == 200.0  # given, not timed


def test_a_target_no_cut_can_change_is_refused_without_timing_anything(monkeypatch):
    from yoloprune.export import bench
    from yoloprune.workflows.pipeline import _fit_latency

    def never(*args, **kwargs):
        raise AssertionError("a copy shaped like the unpruned model was timed")

    monkeypatch.setattr(bench, "relative_latency", never)
    tried: list[float] = []
    with pytest.raises(yoloprune.graph.PruneError, match=r"cannot reach 50\.0 ms: no cut these settings allow changes"):
        _fit_latency(from_config("yolov8n.yaml"), 50.0, 100.0, 64, PruneSettings(), lambda net, f: tried.append(f))
    assert tried == pytest.approx([0.5 * 0.98**k for k in range(24)])  # 2% deeper each time, up to 4 x 6 prunes


def test_a_target_past_what_max_ratio_allows_is_timed_at_the_deepest_cut(monkeypatch):
    """The table may call a target too deep when the runtime is faster than it was timed: the search then times the
    deepest cut ``max_ratio`` allows (here 0.6 of the table, measured at 0.55 of the unpruned) and keeps it when it
    fits; a target beyond even that is refused with what the fastest copy measured."""
    from yoloprune.export import bench
    from yoloprune.pruning.select import UnreachableTarget
    from yoloprune.workflows.pipeline import _fit_latency

    tried: list[float] = []

    def prune_copy(net, fraction):
        if fraction < 0.6 - 1e-9:
            raise UnreachableTarget(f"{fraction} is past max_ratio", 0.6)
        tried.append(fraction)
        conv = net.model[2].cv1.conv  # a copy shaped by its share, as a real cut is
        conv.weight = nn.Parameter(conv.weight[: round(fraction * 20) * conv.out_channels // 20])

    monkeypatch.setattr(bench, "relative_latency", lambda *a, **k: tried[-1] - 0.05)
    model = from_config("yolov8n.yaml")
    assert _fit_latency(model, 56.0, 100.0, 64, PruneSettings(), prune_copy) == (0.6, pytest.approx(55.0), 100.0)
    assert tried == [0.6]
    tried.clear()
    with pytest.raises(yoloprune.graph.PruneError, match=r"cannot reach 50\.0 ms: the fastest copy .* 55\.0 ms"):
        _fit_latency(model, 50.0, 100.0, 64, PruneSettings(), prune_copy)
    assert tried == [0.6]
    tried.clear()  # in steps the least share is the last step's, not the model's: the table's refusal stands
    with pytest.raises(UnreachableTarget, match="past max_ratio"):
        _fit_latency(model, 56.0, 100.0, 64, PruneSettings(steps=2), prune_copy)
    assert tried == []
