"""Nothing the user had is lost: existing outputs, inputs inside the output folder, a second command writing the
same output, recipe names leaving runs/, and ultralytics' label cache inside the dataset."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.io import LOCK_NAME, folder_lock, write_atomic


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2-class dataset and a matching yolov8n checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    data = synthesize(root / "data", train=2, val=2, imgsz=64, classes=2, seed=1)
    net = from_config({**from_config("yolov8n.yaml").yaml, "nc": 2})
    model = save(Loaded(net, "ultralytics", "x", {"train_args": {}}), root / "base.pt", {})
    return {"data": data, "model": model}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(argv: list[str], message: str, capsys) -> None:
    """The command exits with status 2 and prints exactly one line, ``yoloprune CMD: error: MESSAGE``."""
    argv = [str(a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err == f"yoloprune {argv[0]}: error: {message}"


def keep(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write the user's ``files`` into ``folder``; their snapshot."""
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return snapshot(folder)


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_while_writing_is_kept(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # file systems without hard links take the exclusive-create path

        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "out.bin"

    def write(f):
        target.write_bytes(b"theirs")  # another command publishes after this one checked
        f.write(b"ours")

    with pytest.raises(ValueError, match=re.escape(f"{target} exists; pass --overwrite to replace it")):
        write_atomic(target, write)
    assert target.read_bytes() == b"theirs" and list(tmp_path.iterdir()) == [target]
    write_atomic(tmp_path / "new.bin", lambda f: f.write(b"new"))
    write_atomic(target, lambda f: f.write(b"ours"), overwrite=True)
    assert snapshot(tmp_path) == {
        "new.bin": hashlib.sha256(b"new").hexdigest(),
        "out.bin": hashlib.sha256(b"ours").hexdigest(),
    }


def test_the_second_of_two_commands_writing_one_output_fails(tmp_path, monkeypatch, capsys):
    out = tmp_path / "p.pt"
    module = importlib.import_module("yoloprune.pruning.run")
    real = module.prune

    def racing(*args, **kwargs):
        out.write_bytes(b"the other command's result")  # after this command checked -o, before it writes
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "prune", racing)
    refused(
        ["prune", "yolov8n.yaml", "--ratio", "0.2", "--imgsz", "32", "-o", out],
        f"{out} exists; pass --overwrite to replace it",
        capsys,
    )
    assert out.read_bytes() == b"the other command's result" and list(tmp_path.iterdir()) == [out]


def _recipe(path: Path, model: Path | str, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "tiny", "model": str(model), "imgsz": 64, **extra}))
    return path


@pytest.mark.parametrize("name", ["recipe.resolved.yaml", "pruned.pt", "pruned.onnx", "results.json"])
def test_run_refuses_an_existing_output_before_any_work(inputs, tmp_path, capsys, name):
    recipe = _recipe(tmp_path / "recipe.yaml", inputs["model"])
    out = tmp_path / "r"
    before = keep(out, {name: b"mine"})
    refused(["run", recipe, "-o", out], f"{out / name} exists; pass --overwrite to replace it", capsys)
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "case",
    ["the model is pruned.pt", "the recipe is recipe.resolved.yaml", "the model is in finetune/weights"],
)
def test_run_never_overwrites_its_input(inputs, tmp_path, capsys, case):
    out = tmp_path / "r"
    model = inputs["model"]
    if case == "the model is pruned.pt":
        keep(out, {"pruned.pt": model.read_bytes()})
        recipe = _recipe(tmp_path / "recipe.yaml", out / "pruned.pt")
        message = f"refusing to overwrite the input {out / 'pruned.pt'}; choose another -o"
    elif case == "the recipe is recipe.resolved.yaml":
        recipe = _recipe(out / "recipe.resolved.yaml", model)
        message = f"refusing to overwrite the input {recipe}; choose another -o"
    else:
        keep(out, {"finetune/weights/epoch1.pt": model.read_bytes()})
        teacher = out / "finetune" / "weights" / "epoch1.pt"
        recipe = _recipe(tmp_path / "recipe.yaml", teacher, data=str(inputs["data"]), finetune={"epochs": 1})
        message = (
            f"refusing to overwrite the input {teacher} (model): fine-tuning into {out / 'finetune'} writes it; "
            "choose another -o"
        )
    before = snapshot(out)
    refused(["run", recipe, "-o", out, "--overwrite"], message, capsys)
    assert snapshot(out) == before


@pytest.mark.parametrize("given", ["in the recipe", "with --set"])
@pytest.mark.parametrize("name", ["../escaped", "{root}/absolute", "a/b", "a\\b", "..", ".", ""])
def test_a_recipe_name_is_one_folder_inside_runs(inputs, tmp_path, monkeypatch, capsys, name, given):
    name = name.format(root=tmp_path)
    work = tmp_path / "work"
    if given == "in the recipe":
        argv = ["run", _recipe(work / "recipe.yaml", inputs["model"], name=name)]
    else:
        argv = ["run", _recipe(work / "recipe.yaml", inputs["model"]), "--set", f"name={json.dumps(name)}"]
    monkeypatch.chdir(work)
    refused(argv, f"name must be a single folder name (no '/', '\\', '..' or drive), got {name!r}", capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["recipe.yaml", "work"]


def test_sweep_writes_nothing_beside_its_input(inputs, tmp_path):
    folder = tmp_path / "models"
    before = keep(folder, {"base.pt": inputs["model"].read_bytes(), "base.onnx": b"my own export"})
    out = tmp_path / "s"
    argv = ["sweep", folder / "base.pt", "--data", inputs["data"], "-o", out, "--targets", "0.5"]
    assert main([str(a) for a in [*argv, "--imgsz", "32", "--runs", "1", "--batch", "2"]]) == 0
    assert snapshot(folder) == before
    onnx = [Path(row["onnx"]) for row in json.loads((out / "results.json").read_text())]
    assert [p.relative_to(out).as_posix() for p in onnx] == ["models/unpruned.onnx", "models/pruned-0.500.onnx"]
    assert all(p.stat().st_size > 1000 for p in onnx)


@pytest.mark.parametrize(
    "flag, name, overwrite",
    [
        ("MODEL", "weights/best.pt", True),
        ("MODEL", "start.pt", True),
        ("--teacher", "weights/last.pt", True),
        ("--teacher", "weights/epoch3.pt", False),
    ],
)
def test_finetune_never_replaces_its_own_input(inputs, tmp_path, capsys, flag, name, overwrite):
    out = tmp_path / "run"
    before = keep(out, {name: inputs["model"].read_bytes()})
    given = out / name
    model, teacher = (given, inputs["model"]) if flag == "MODEL" else (inputs["model"], given)
    argv = ["finetune", model, "--teacher", teacher, "--data", inputs["data"], "-o", out, "--imgsz", "64"]
    refused(
        argv + ["--overwrite"] * overwrite,
        f"refusing to overwrite the input {given} ({flag}): fine-tuning into {out} writes it; choose another -o",
        capsys,
    )
    assert snapshot(out) == before


def test_finetune_refuses_a_disk_cache_beside_the_images(inputs, tmp_path, capsys):
    before = snapshot(inputs["data"].parent)
    argv = ["finetune", inputs["model"], "--data", inputs["data"], "-o", tmp_path / "run", "--train-set", "cache=disk"]
    refused(argv, "--train-set cache=disk writes .npy files beside the dataset's images; use cache=ram", capsys)
    assert snapshot(inputs["data"].parent) == before and not (tmp_path / "run").exists()


def _commands(inputs, tmp_path: Path, out: Path) -> dict[str, list]:
    recipe = _recipe(tmp_path / "recipe.yaml", inputs["model"])
    model, data = inputs["model"], inputs["data"]
    return {
        "finetune": ["finetune", model, "--data", data, "-o", out, "--imgsz", "64", "--epochs", "1"],
        "sweep": ["sweep", model, "--data", data, "-o", out, "--imgsz", "64", "--targets", "0.5"],
        "run": ["run", recipe, "-o", out],
        "sensitivity": ["sensitivity", model, "--data", data, "-o", out, "--imgsz", "64"],
    }


@pytest.mark.parametrize("command", ["finetune", "sweep", "run", "sensitivity"])
def test_a_second_command_into_a_busy_folder_fails_at_once(inputs, tmp_path, capsys, command):
    out = tmp_path / "busy"
    argv = _commands(inputs, tmp_path, out)[command]
    keep(out, {"notes.txt": b"mine"})
    with folder_lock(out):  # the first command, still running
        before = snapshot(out)
        message = f"{out} is in use by another yoloprune command ({out / LOCK_NAME}); wait for it or choose another -o"
        refused(argv, message, capsys)
        assert snapshot(out) == before
    assert snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_a_lock_left_by_a_killed_command_blocks_nothing_and_failures_leave_no_folder(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    keep(out, {LOCK_NAME: b""})  # no process holds it any more
    message = "--train-set cache=disk writes .npy files beside the dataset's images; use cache=ram"
    for folder in (out, tmp_path / "new" / "run"):  # a command that takes the lock, then fails
        argv = ["finetune", inputs["model"], "--data", inputs["data"], "-o", folder, "--train-set", "cache=disk"]
        refused(argv, message, capsys)
    assert list(out.iterdir()) == [] and list(tmp_path.iterdir()) == [out]  # no lock file, no new folder left


def test_sensitivity_refuses_any_earlier_output(inputs, tmp_path, capsys):
    out = tmp_path / "sens"
    before = keep(out, {"ratios.json": b"{}"})
    argv = ["sensitivity", inputs["model"], "--data", inputs["data"], "-o", out, "--imgsz", "64"]
    refused(argv, f"{out} holds a sensitivity analysis; pass --overwrite to replace it", capsys)
    assert snapshot(out) == before


def test_finetune_leaves_the_dataset_untouched(tmp_path):
    data = synthesize(tmp_path / "data", train=2, val=2, imgsz=64, classes=2, seed=3)
    net = from_config({**from_config("yolov8n.yaml").yaml, "nc": 2})
    model = save(Loaded(net, "ultralytics", "x", {"train_args": {}}), tmp_path / "m.pt", {})
    before = snapshot(data.parent)
    out = tmp_path / "run"
    settings = ["mosaic=0", "warmup_epochs=0", "nbs=2", "val=False", "plots=False"]
    argv = ["finetune", model, "--data", data, "-o", out, "--epochs", "1", "--imgsz", "64", "--batch", "2"]
    argv += ["--workers", "0", *(x for s in settings for x in ("--train-set", s))]
    assert main([str(a) for a in argv]) == 0
    assert snapshot(data.parent) == before
    caches = sorted(p.name for p in (out / "label_cache").iterdir())
    assert [re.sub(r"-[0-9a-f]{12}\.", ".", name) for name in caches] == ["train.cache", "val.cache"], caches
