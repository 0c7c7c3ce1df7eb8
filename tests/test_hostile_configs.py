"""Hostile model configs (issue 27): sizes no allocator can meet, indices no parser can resolve, literals that
overflow, malformed yoloprune sections, and a checkpoint whose network carries a config ``yoloprune.load`` refuses.
Each is refused with one ``ConfigError`` line (exit status 2 on the command line) naming the file or field; nothing
is built for minutes, nothing raises MemoryError or a traceback, nothing a config names runs.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import yoloprune
from yoloprune.adapters.config_check import MAX_CHANNELS, MAX_REPEATS, ConfigError
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main

TINY: dict[str, Any] = {
    "nc": 2,
    "scales": {"n": [0.33, 0.25, 1024]},
    "scale": "n",
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],
        [-1, 1, "Conv", [32, 3, 2]],
        [-1, 2, "C2f", [32, True]],
        [-1, 1, "Conv", [64, 3, 2]],
        [-1, 1, "SPPF", [64, 5]],
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 2], 1, "Concat", [1]],
        [-1, 1, "C2f", [32]],
        [[7, 4], 1, "Detect", ["nc"]],
    ],
}
"""A small ultralytics detector (two levels, about 60k parameters) that builds in a fraction of a second."""


def tiny(**changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(TINY)
    cfg.update(changes)
    return cfg


def with_layer(section: str, index: int, layer: list[Any]) -> dict[str, Any]:
    cfg = tiny()
    cfg[section][index] = layer
    return cfg


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 300, text
    return text


def test_the_tiny_config_builds():
    assert isinstance(from_config(tiny()), nn.Module)


# --------------------------------------------------------------------------------------- 1. sizes are bounded
SIZES = {
    "repeats 1e8": (with_layer("backbone", 2, [-1, 100_000_000, "C2f", [32, True]]), "repeats"),
    "repeats after depth": (tiny(scales={"n": [1.0, 0.25, 1024]}), None),  # control: 2 x 1.0 builds
    "scaled repeats": (
        tiny(scales={"n": [4.0, 0.25, 1024]}, backbone=[[-1, 20, "Conv", [16, 3, 2]], *TINY["backbone"][1:]]),
        f"more than {MAX_REPEATS}",
    ),
    "scales width": (tiny(scales={"n": [0.33, 1e6, 1024]}), "width"),
    "scales max_channels": (tiny(scales={"n": [0.33, 0.25, 10**12]}), "max_channels"),
    "depth_multiple": (tiny(scales=None, depth_multiple=1e9), "depth_multiple"),
    "width_multiple": (tiny(scales=None, width_multiple=1e9), "width_multiple"),
    "channel argument": (with_layer("backbone", 0, [-1, 1, "Conv", [10**9, 3, 2]]), "beyond"),
    "scaled channels": (
        tiny(scales=None, width_multiple=4.0, backbone=[[-1, 1, "Conv", [4096, 3, 2]], *TINY["backbone"][1:]]),
        f"more than {MAX_CHANNELS}",
    ),
    "nc": (tiny(nc=10**9), "nc must be"),
    "kpt_shape": (tiny(kpt_shape=[10**9, 3]), "kpt_shape"),
    "kernel within the bounds": (with_layer("backbone", 0, [-1, 1, "Conv", [16, 8000, 1]]), "too large to build"),
    "upsample factor": (with_layer("head", 0, [-1, 1, "nn.Upsample", [None, 4000, "nearest"]]), "scale factor"),
}


@pytest.mark.parametrize("case", list(SIZES))
def test_sizes_beyond_the_bounds_are_refused(case):
    cfg, fragment = SIZES[case]
    if fragment is None:
        assert isinstance(from_config(cfg), nn.Module)
        return
    with pytest.raises(ConfigError, match=fragment) as info:
        from_config(cfg)
    assert _one_line(info.value)


# ------------------------------------------------------------------------ 2. what the parsers would choke on
CHOKES = {
    "from past the end": (with_layer("backbone", 1, [99, 1, "Conv", [16, 3, 2]]), "from 99 names no earlier layer"),
    "from far back": (with_layer("head", 2, [-50, 1, "C2f", [32]]), "from -50 names no earlier layer"),
    "from at the first layer": (with_layer("backbone", 0, [0, 1, "Conv", [16, 3, 2]]), "from 0 names no earlier"),
    "from a float": (with_layer("backbone", 1, [-1.5, 1, "Conv", [16, 3, 2]]), "from must hold layer indices"),
    "torch.nn.Conv2d": (with_layer("backbone", 1, [-1, 1, "torch.nn.Conv2d", [16, 3, 2]]), "not a model layer class"),
    "nn.Conv2d": (with_layer("backbone", 1, [-1, 1, "nn.Conv2d", [16, 3, 2]]), "not a model layer class"),
    "activation 1e999": (tiny(activation="nn.LeakyReLU(1e999)"), "activation LeakyReLU takes inf"),
    "activation huge int": (tiny(activation=f"nn.LeakyReLU({'9' * 1000})"), "activation LeakyReLU takes 9999"),
    "activation not element-wise": (tiny(activation="nn.Softmax2d()"), "not an element-wise"),
    "activation bad arguments": (tiny(activation="nn.Hardtanh(2.0, -2.0)"), "cannot be built as written"),
    "identifier argument": (with_layer("backbone", 0, [-1, 1, "Conv", ["d", 3, 2]]), "argument 'd' is neither"),
    "literal argument 1e999": (with_layer("backbone", 0, [-1, 1, "Conv", [16, "1e999", 2]]), "argument inf"),
    "string scales entry": (tiny(scales={"n": "abc"}), r"scales\['n'\] must be"),
    "missing scale": (tiny(scale="q"), "scale 'q' is none of"),
    "Concat from one layer": (with_layer("head", 1, [-1, 1, "Concat", [1]]), "parser cannot build this config"),
}


@pytest.mark.parametrize("case", list(CHOKES))
def test_what_a_parser_would_choke_on_is_one_line(case):
    cfg, fragment = CHOKES[case]
    with pytest.raises(ConfigError, match=fragment) as info:
        from_config(cfg)
    assert _one_line(info.value)


def test_a_layer_count_beyond_the_bound_is_refused_before_building():
    cfg = tiny(backbone=[*TINY["backbone"], *[[-1, 1, "Conv", [16, 1, 1]]] * 2000])
    with pytest.raises(ConfigError, match="more than 1024 layers"):
        from_config(cfg)


def test_yolov5_needs_its_keys_and_bounds_its_anchors():
    pytest.importorskip("yolov5")
    from yoloprune.adapters import adapter

    v5 = {
        "nc": 2,
        "depth_multiple": 0.33,
        "width_multiple": 0.25,
        "anchors": 3,
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]]],
        "head": [[[0, 1], 1, "Detect", ["nc", "anchors"]]],
    }
    assert isinstance(adapter("yolov5").from_config(copy.deepcopy(v5)), nn.Module)
    with pytest.raises(ConfigError, match="has no depth_multiple"):
        adapter("yolov5").from_config({k: v for k, v in v5.items() if k != "depth_multiple"})
    with pytest.raises(ConfigError, match="anchors must be an integer"):
        adapter("yolov5").from_config({**copy.deepcopy(v5), "anchors": 10**9})
    with pytest.raises(ConfigError, match="from 7 names no earlier layer"):
        adapter("yolov5").from_config({**copy.deepcopy(v5), "head": [[[0, 7], 1, "Detect", ["nc", "anchors"]]]})


# -------------------------------------------------------------------- the command line: one line, status 2
def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _assert_refused(code: int, err: str, command: str, fragment: str) -> None:
    err = err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"yoloprune {command}: error:"), err
    assert "Traceback" not in err and fragment in err, err


def test_a_config_file_with_1e8_repeats_is_one_line(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(with_layer("backbone", 2, [-1, 100_000_000, "C2f", [32, True]])))
    code = _run(["inspect", str(path), "--imgsz", "64"])
    _assert_refused(code, capsys.readouterr().err, "inspect", "huge.yaml: backbone layer 2: repeats")


# ---------------------------------------------------------------------------------- 3. yoloprune.load's section
@pytest.fixture(scope="module")
def section() -> dict[str, Any]:
    net = from_config(tiny())
    return {
        "format": 1,
        "family": "ultralytics",
        "plan": {"removed": {}, "sizes": {}},
        "imgsz": 64,
        "config": tiny(),
        "state_dict": net.state_dict(),
        "names": {0: "a", 1: "b"},
    }


def _saved(path: Path, section: dict[str, Any], **changes: Any) -> Path:
    torch.save({"yoloprune": {**section, **changes}}, path)
    return path


def test_a_sound_section_loads(section, tmp_path):
    net = yoloprune.load(_saved(tmp_path / "ok.pt", section))
    assert net.names == {0: "a", 1: "b"}


SECTIONS = {
    "no config": ({"config": None}, "its yoloprune section has no model config"),
    "plan a string": ({"plan": "x"}, "plan that is not a pruning plan"),
    "removed not indices": ({"plan": {"removed": {"model.0.conv": ["a"]}}}, "by other than their indices"),
    "names disagree": ({"names": {0: "a", 1: "b", 2: "c"}}, "names 3 classes, but the head it describes predicts 2"),
    "names not numbered": ({"names": {"x": "a", "y": "b"}}, "class names that are not"),
    "no state_dict": ({"state_dict": None}, "has no state_dict"),
    "weights that do not fit": ({"state_dict": {}}, "saved weights do not fit"),
    "stored config too large": ({"config": tiny(nc=10**9)}, "its stored config: "),
}


@pytest.mark.parametrize("case", list(SECTIONS))
def test_a_malformed_section_is_refused_naming_the_file(case, section, tmp_path):
    changes, fragment = SECTIONS[case]
    if changes.get("config", ...) is None:
        changes = {k: v for k, v in section.items() if k != "config"}
        path = tmp_path / "bad.pt"
        torch.save({"yoloprune": changes}, path)
    else:
        path = _saved(tmp_path / "bad.pt", section, **changes)
    with pytest.raises(ConfigError, match=fragment) as info:
        yoloprune.load(path)
    assert str(info.value).startswith(str(path)) and _one_line(info.value)


# --------------------------------------------------------------- 4. prune/export read a code-bearing model.yaml
EVIL = "__import__('pathlib').Path({mark!r}).touch() or __import__('torch').nn.SiLU()"


@pytest.mark.parametrize("command", ["prune", "export"])
def test_a_checkpoint_whose_model_yaml_carries_code_is_refused_up_front(command, tmp_path, capsys):
    mark = tmp_path / "ran"
    net = from_config(tiny())
    net.yaml = {**net.yaml, "activation": EVIL.format(mark=str(mark))}
    path = tmp_path / "evil.pt"
    torch.save({"model": net, "ema": None, "train_args": {}}, path)
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("o.pt" if command == "prune" else "o.onnx")
    argv = [command, str(path), "--imgsz", "64", "-o", str(target)]
    if command == "prune":
        argv += ["--ratio", "0.3"]
    code = _run(argv)
    _assert_refused(code, capsys.readouterr().err, command, f"{path}: its model.yaml: activation")
    assert not mark.exists() and not any(out.iterdir())


# ---------------------------------------------------------------------------------------------- the fuzz test
HOSTILE_VALUES = st.one_of(
    st.sampled_from([10**9, 2**63, 10**400, -1, -50, 0, 7, 10_000]),
    st.sampled_from([1e999, -1e999, math.nan, 0.5, 3.7, 1e300]),
    st.sampled_from(["abc", "d", "ch", "1e999", "nc", "[1e9]", "__import__('os')", "nn.LeakyReLU(1e999)", ""]),
    st.sampled_from([None, True, [], [[10**9]], [[[[[]]]]], {"a": 1}, [1, 2, 3]]),
)
FIELDS = ["repeats", "arg", "from", "scales", "scale entry", "nc", "activation", "kpt_shape"]


def _mutate(cfg: dict[str, Any], field: str, layer: int, slot: int, value: Any) -> dict[str, Any]:
    layers = cfg["backbone"] + cfg["head"]
    row = layers[layer % len(layers)]
    if field == "repeats":
        row[1] = value
    elif field == "from":
        row[0] = value
    elif field == "arg":
        if row[3]:
            row[3][slot % len(row[3])] = value
        else:
            row[3].append(value)
    elif field == "scales":
        cfg["scales"] = {"n": value}
    elif field == "scale entry":
        entry = cfg["scales"].get("n") if isinstance(cfg.get("scales"), dict) else None
        if isinstance(entry, list) and entry:
            entry[slot % len(entry)] = value
        else:  # an earlier mutation replaced the scales: start a fresh entry
            cfg["scales"] = {"n": [value, 0.25, 1024]}
    elif field == "activation":
        cfg["activation"] = value if not isinstance(value, (int, float)) else f"nn.LeakyReLU({value!r})"
    else:
        cfg[field] = value
    return cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(FIELDS), st.integers(0, 8), st.integers(0, 3), HOSTILE_VALUES), min_size=1, max_size=3
    )
)
def test_mutated_configs_build_or_give_one_config_error(mutations):
    cfg = copy.deepcopy(TINY)
    for field, layer, slot, value in mutations:
        cfg = _mutate(cfg, field, layer, slot, value)
    try:
        net = from_config(cfg)
    except ConfigError as exc:
        _one_line(exc)
    else:
        assert isinstance(net, nn.Module)
