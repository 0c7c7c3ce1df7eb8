"""Reliability: every kind of bad input through the CLI, inputs untouched, atomic outputs, no surprise unpickling."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.io import UntrustedCheckpoint, load_checkpoint
from yoloprune.options import parse_assignment, parse_fractions
from yoloprune.workflows.recipe import SCHEMA, RecipeError, load_recipe

HERE = Path(__file__).parent


class Marker:
    """A pickled object that leaves a file behind when it is unpickled (a stand-in for hostile code)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input the table needs, written once."""
    root = tmp_path_factory.mktemp("inputs")
    data = synthesize(root / "data", train=2, val=2, imgsz=64, classes=2, seed=1)
    net = from_config({**from_config("yolov8n.yaml").yaml, "nc": 2}).eval()
    good = root / "good.pt"
    torch.save({"model": net, "train_args": {}}, good)
    (root / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "garbage.pt").write_bytes(os.urandom(4096))
    (root / "notes.pt").write_text("not a model\n")
    torch.save({"weights": torch.zeros(3)}, root / "tensors.pt")
    torch.save({"model": net, "hook": Marker(str(root / "pwned"))}, root / "hostile.pt")
    from ultralytics.nn.tasks import RTDETRDetectionModel

    torch.save({"model": RTDETRDetectionModel("rtdetr-l.yaml", verbose=False)}, root / "rtdetr.pt")
    (root / "recipe-ok.yaml").write_text("model: yolov8n.yaml\n")
    (root / "empty" / "images").mkdir(parents=True)
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (root / "nolabels.yaml").write_text(f"path: {root / 'empty'}\ntrain: images\nval: images\nnames: [a, b]\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "recipe-key.yaml").write_text("model: yolov8n.yaml\nprune: {ratioo: 0.3}\n")
    (root / "recipe-type.yaml").write_text("model: yolov8n.yaml\nimgsz: big\n")
    (root / "afile").write_text("x")
    (root / "outdir").mkdir()
    (root / "outdir" / "sensitivity.csv").write_text("unit,ratio\n")
    return {"root": root, "data": data, "good": good}


CASES = {
    "missing file": (["prune", "{root}/missing.pt", "-o", "{root}/o.pt"], "no such model"),
    "truncated checkpoint": (
        ["prune", "{root}/truncated.pt", "-o", "{root}/o.pt"],
        "not a readable PyTorch checkpoint",
    ),
    "corrupt checkpoint": (["inspect", "{root}/garbage.pt"], "not a readable PyTorch checkpoint"),
    "text file named .pt": (["inspect", "{root}/notes.pt"], "not a readable PyTorch checkpoint"),
    "checkpoint without a model": (["inspect", "{root}/tensors.pt"], "is not an ultralytics checkpoint"),
    "not a model file": (["inspect", "{root}/bad.yaml"], "bad.yaml: not a readable model config"),
    "unknown architecture": (["inspect", "yolov99n.yaml"], "no such model config: yolov99n.yaml"),
    "unknown family": (["inspect", "yolov8n.yaml", "--family", "yolov42"], "family 'yolov42' cannot be loaded"),
    "unsupported task": (["inspect", "yolov8s-worldv2.yaml"], "not supported yet"),
    "unsupported task checkpoint": (["inspect", "{root}/rtdetr.pt"], "not supported yet"),
    "hostile pickle": (["inspect", "{root}/hostile.pt"], "not on yoloprune's allow-list"),
    "ratio out of range": (["prune", "yolov8n.yaml", "--ratio", "1.5", "-o", "{root}/o.pt"], "ratio must be in"),
    "target out of range": (
        ["prune", "yolov8n.yaml", "--target-macs", "0", "-o", "{root}/o.pt"],
        "target_macs is a fraction",
    ),
    "target unreachable": (
        ["prune", "yolov8n.yaml", "--target-macs", "0.01", "--imgsz", "64", "-o", "{root}/o.pt"],
        "cannot reach",
    ),
    "unknown importance": (
        ["prune", "yolov8n.yaml", "--importance", "taylorx", "-o", "{root}/o.pt"],
        "invalid choice: 'taylorx'",
    ),
    "recipe unknown key": (["run", "{root}/recipe-key.yaml"], "unknown key 'prune.ratioo'"),
    "recipe wrong type": (["run", "{root}/recipe-type.yaml"], "imgsz must be int"),
    "recipe bad --set": (["run", "{root}/recipe-ok.yaml", "--set", "prune"], "--set expects KEY=VALUE"),
    "dataset missing": (["eval", "yolov8n.yaml", "--data", "{root}/nowhere.yaml"], "no such dataset: "),
    "dataset malformed": (["eval", "yolov8n.yaml", "--data", "{root}/bad.yaml"], "bad.yaml is not a readable yaml"),
    "dataset empty": (["eval", "yolov8n.yaml", "--data", "{root}/nolabels.yaml"], "no images"),
    "unreadable image": (
        ["export", "{root}/good.pt", "--imgsz", "64", "--image", "{root}/broken.jpg", "-o", "{root}/o.onnx"],
        "cannot read image",
    ),
    "unsupported opset": (
        ["export", "{root}/good.pt", "--imgsz", "64", "--opset", "99", "-o", "{root}/o.onnx"],
        "opset 99",
    ),
    "output is a directory": (["prune", "yolov8n.yaml", "-o", "{root}/outdir"], "is a directory"),
    "output not writable": (["prune", "yolov8n.yaml", "-o", "{root}/afile/o.pt"], "not a writable folder"),
    "output exists": (["prune", "yolov8n.yaml", "-o", "{root}/afile"], "exists; pass --overwrite"),
    "output is the input": (["export", "{root}/good.pt", "-o", "{root}/good.pt"], "refusing to overwrite the input"),
    "analysis exists": (
        ["sensitivity", "{root}/good.pt", "--data", "{data}", "-o", "{root}/outdir"],
        "holds a sensitivity analysis; pass --overwrite",
    ),
    "bad --targets": (
        ["sweep", "{root}/good.pt", "--data", "{data}", "-o", "{root}/s", "--targets", "0.5,2"],
        "--targets: 2 is outside (0, 1]",
    ),
    "bad --train-set": (
        ["finetune", "{root}/good.pt", "--data", "{data}", "--train-set", "mosaic"],
        "--train-set expects KEY=VALUE",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_status_2(case, files, capsys):
    argv, message = CASES[case]
    argv = [a.format(root=files["root"], data=files["data"]) for a in argv]
    code = _run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"yoloprune {argv[0]}: error:"), err
    assert message in err and "Traceback" not in err
    assert not (files["root"] / "pwned").exists() and not (files["root"] / "o.pt").exists()


def _run(argv: list[str]) -> int:
    """The CLI's exit status, whether ``main`` returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_verbose_adds_the_traceback(files, capsys):
    assert main(["inspect", str(files["root"] / "garbage.pt"), "--verbose"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("yoloprune inspect: error:")


def test_a_missing_output_folder_is_created(files, tmp_path):
    out = tmp_path / "new" / "deeper" / "pruned.pt"
    assert main(["prune", "yolov8n.yaml", "--ratio", "0.2", "--imgsz", "64", "-o", str(out)]) == 0
    assert out.is_file()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inputs_are_never_modified(files, tmp_path):
    src = tmp_path / "in.pt"
    shutil.copy(files["good"], src)
    before = {p: _digest(p) for p in (src, files["data"])}
    stamp = src.stat().st_mtime_ns
    assert main(["inspect", str(src), "--imgsz", "64"]) == 0
    assert main(["prune", str(src), "--ratio", "0.3", "--imgsz", "64", "-o", str(tmp_path / "p.pt")]) == 0
    assert main(["export", str(src), "--imgsz", "64", "-o", str(tmp_path / "p.onnx")]) == 0
    assert main(["eval", str(src), "--data", str(files["data"]), "--imgsz", "64"]) == 0
    assert main(["bench", str(src), "--imgsz", "64", "--runs", "2", "--warmup", "1"]) == 0
    assert {p: _digest(p) for p in before} == before and src.stat().st_mtime_ns == stamp


def test_an_existing_output_is_replaced_only_with_overwrite(files, tmp_path):
    out = tmp_path / "p.pt"
    out.write_bytes(b"keep me")
    argv = ["prune", "yolov8n.yaml", "--ratio", "0.2", "--imgsz", "64", "-o", str(out)]
    assert main(argv) == 2 and out.read_bytes() == b"keep me"
    assert main([*argv, "--overwrite"]) == 0 and out.stat().st_size > 1000


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch
    from yoloprune.io import save_atomic
    target, i = sys.argv[1], 0
    while True:
        i += 1
        save_atomic({"i": i, "x": torch.full((4_000_000,), float(i))}, target, overwrite=True)
        print(i, flush=True)
    """
)


def test_a_killed_save_leaves_the_old_file_or_the_complete_new_one(tmp_path):
    target = tmp_path / "ckpt.pt"
    torch.save({"i": 0, "x": torch.zeros(4_000_000)}, target)
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = torch.load(target, weights_only=True)
        assert data["x"].shape == (4_000_000,) and bool((data["x"] == data["i"]).all())


def test_hostile_checkpoint_runs_only_when_trusted(files, tmp_path, caplog):
    hostile = files["root"] / "hostile.pt"
    with pytest.raises(UntrustedCheckpoint, match=r"names pathlib\.Path, which is not on yoloprune's allow-list"):
        load_checkpoint(hostile)
    assert not (files["root"] / "pwned").exists()
    loaded = load_checkpoint(hostile, trust=True)
    assert (files["root"] / "pwned").exists() and "model" in loaded
    warnings = [r for r in caplog.records if r.name == "yoloprune"]
    assert len(warnings) == 1 and "full unpickling" in warnings[0].getMessage()
    (files["root"] / "pwned").unlink()


def test_ultralytics_checkpoints_load_without_trust(files):
    ckpt = load_checkpoint(files["good"], trust=False)
    assert type(ckpt["model"]).__name__ == "DetectionModel" and ckpt["model"].model[-1].nc == 2


# ---------------------------------------------------------------------------------------- property-based parsing
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
words = names.filter(lambda t: yaml.safe_load(t) == t)  # not "false", "null", "yes"...: yaml reads those as data
scalars = st.one_of(st.integers(-(10**6), 10**6), st.booleans(), st.floats(-1e6, 1e6, allow_nan=False), words)


@given(st.lists(names, min_size=1, max_size=3), scalars)
def test_assignments_round_trip(parts, value):
    text = repr(value).lower() if isinstance(value, bool) else str(value)
    assert parse_assignment(f"{'.'.join(parts)}={text}") == (parts, value)


@given(st.text(max_size=20))
def test_any_assignment_text_parses_or_fails_cleanly(text):
    try:
        parts, _ = parse_assignment(text)
    except ValueError as exc:
        assert "--set" in str(exc)
    else:
        assert "=" in text and all(parts)


@given(st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=6))
def test_fractions_round_trip(values):
    assert parse_fractions(",".join(map(repr, values)), "--targets") == values


@given(st.text(max_size=20))
def test_any_fraction_text_parses_or_fails_cleanly(text):
    try:
        values = parse_fractions(text, "--targets")
    except ValueError as exc:
        assert str(exc).startswith("--targets")
    else:
        assert values and all(0 < v <= 1 for v in values)


sections = st.sampled_from([k for k, v in SCHEMA.items() if isinstance(v, dict)])


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("top"), names),
        st.tuples(sections, names),
    ),
    scalars,
)
def test_recipe_unknown_keys_are_named(tmp_path_factory, where, value):
    section, key = where
    known = SCHEMA if section == "top" else SCHEMA[section]
    if key in known:
        return
    path = tmp_path_factory.mktemp("r") / "r.yaml"
    path.write_text("model: yolov8n.yaml\n")
    dotted = key if section == "top" else f"{section}.{key}"
    with pytest.raises(RecipeError, match=f"unknown key '{dotted}'"):
        load_recipe(path, [f"{dotted}={value}"])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30))
def test_any_set_text_loads_or_fails_with_a_recipe_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("r") / "r.yaml"
    path.write_text("model: yolov8n.yaml\n")
    try:
        recipe = load_recipe(path, [text])
    except RecipeError as exc:
        assert str(exc)
    else:
        assert recipe["model"] and set(recipe) <= set(SCHEMA)
