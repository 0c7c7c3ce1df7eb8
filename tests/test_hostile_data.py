"""A data yaml is data: its ``download:`` script never runs, its errors never print what a file holds, and no
number in it takes the machine. Every command that hands a data yaml to a trainer is run from a folder other than the
dataset's (where ultralytics resolves a relative ``path:`` differently from yoloprune)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import randomize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.data.datasets import DatasetError, load_detection_set, trainer_config

TRAIN = ["workers=0", "mosaic=0", "warmup_epochs=0", "val=False"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    return save(Loaded(net, "ultralytics", "m", {"train_args": {}}), tmp_path_factory.mktemp("m") / "m.pt", {})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "d", train=4, val=4, imgsz=64, classes=3, seed=2).parent


def _hostile(dataset: Path, tmp_path: Path, download: str) -> Path:
    """A copy of the dataset whose yaml says ``path: .`` and carries a ``download`` script."""
    copy = tmp_path / "hostile"
    shutil.copytree(dataset, copy)
    cfg = yaml.safe_load((copy / "data.yaml").read_text())
    cfg.update({"path": ".", "download": download})
    (copy / "data.yaml").write_text(yaml.safe_dump(cfg))
    return copy / "data.yaml"


def _python_payload(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_the_trainer_gets_the_checked_dataset(dataset, tmp_path):
    data = _hostile(dataset, tmp_path, "print('x')")
    config = trainer_config(data)
    assert "download" not in config
    assert config["path"] == str(data.parent.resolve())
    assert Path(config["train"]).is_absolute() and Path(config["train"]).is_dir()
    assert Path(config["val"]).is_absolute() and Path(config["val"]).is_dir()
    assert config["names"] == load_detection_set(data).names and config["nc"] == 3


@pytest.mark.parametrize("form", ["python", "bash"])
def test_finetune_runs_no_download_script(model, dataset, tmp_path, elsewhere, form):
    marker = tmp_path / "ran"
    script = tmp_path / "payload.sh"
    script.write_text(f"touch {marker}\n")
    data = _hostile(dataset, tmp_path, _python_payload(marker) if form == "python" else f"bash {script}")
    out = tmp_path / "run"
    argv = ["finetune", str(model), "--data", str(data), "-o", str(out), "--epochs", "1", "--imgsz", "64"]
    assert main([*argv, "--batch", "4", *TRAIN]) == 0
    assert not marker.exists()
    handed = yaml.safe_load((out / "dataset.yaml").read_text())
    assert "download" not in handed and Path(handed["path"]).is_absolute()


def test_sweep_fine_tuning_runs_no_download_script(model, dataset, tmp_path, elsewhere, capsys):
    marker = tmp_path / "ran"
    data = _hostile(dataset, tmp_path, _python_payload(marker))
    argv = ["sweep", str(model), "--data", str(data), "-o", str(tmp_path / "sw"), "--targets", "0.6"]
    argv += ["--finetune-epochs", "1", "--imgsz", "64", "--batch", "4", "--runs", "1", "--threads", "1"]
    assert main([*argv, *TRAIN]) == 0
    assert not marker.exists()
    assert "\nnote: no --calib: every point was ranked by weight magnitude (l2)" in capsys.readouterr().out


def test_a_recipe_that_fine_tunes_runs_no_download_script(model, dataset, tmp_path, elsewhere):
    marker = tmp_path / "ran"
    data = _hostile(dataset, tmp_path, _python_payload(marker))
    recipe = {
        "name": "hostile",
        "model": str(model),
        "data": str(data),
        "imgsz": 64,
        "prune": {"target_macs": 0.7},
        "finetune": {"epochs": 1, "batch": 4, "workers": 0, "overrides": {"mosaic": 0.0, "warmup_epochs": 0}},
        "bench": {"runs": 1, "threads": 1},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "-o", str(tmp_path / "out")]) == 0
    assert not marker.exists()


def test_errors_name_a_file_and_never_print_what_it_holds(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:SECRET-HASH:19000:0:99999:7:::\nsecond-line-secret\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"val": str(secret), "names": ["a"]}))
    with pytest.raises(DatasetError) as caught:
        load_detection_set(data)
    assert "SECRET" not in str(caught.value) and "secret.txt" in str(caught.value)
    assert main(["eval", str(data), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "SECRET" not in err and "second-line" not in err


def test_a_label_file_is_not_echoed(tmp_path):
    data = synthesize(tmp_path / "d", train=2, val=2, imgsz=32, classes=2, seed=0)
    label = next((data.parent / "labels" / "val").glob("*.txt"))
    label.write_text("SECRET-TOKEN-abc\n")
    with pytest.raises(DatasetError, match=rf"{label.name}:1: expected 'class cx cy w h'") as caught:
        load_detection_set(data)
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize("nc", [10**9, 100_001])
def test_a_huge_class_count_is_refused(tmp_path, nc):
    data = synthesize(tmp_path / "d", train=2, val=2, imgsz=32, classes=2, seed=0)
    cfg = yaml.safe_load(data.read_text())
    cfg.pop("names")
    cfg["nc"] = nc
    data.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetError, match=rf"nc: {nc} classes; at most 100000"):
        load_detection_set(data)


def test_eval_of_a_segmentation_model_runs_no_download_script(dataset, tmp_path, elsewhere):
    """``eval`` hands segment and pose models to ultralytics' validator for their mask or keypoint mAP."""
    marker = tmp_path / "ran"
    data = _hostile(dataset, tmp_path, _python_payload(marker))
    for label in (data.parent / "labels").rglob("*.txt"):  # boxes as rectangle polygons
        rows = [[float(v) for v in line.split()] for line in label.read_text().splitlines() if line.strip()]
        corners = [(c, x - w / 2, y - h / 2, x + w / 2, y + h / 2) for c, x, y, w, h in rows]
        label.write_text("".join(f"{int(c)} {a} {b} {d} {b} {d} {e} {a} {e}\n" for c, a, b, d, e in corners))
    net = randomize(from_config({**from_config("yolov8n-seg.yaml").yaml, "nc": 3}))
    model = save(Loaded(net, "ultralytics", "s", {"train_args": {}}), tmp_path / "seg.pt", {})
    assert main(["eval", str(model), "--data", str(data), "--imgsz", "64", "--batch", "4"]) == 0
    assert not marker.exists()


# --- fuzz: any data yaml and any label text read as data, refused in one line or used ------------------------------

_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["images/val", "images/train", "..", "/etc", "/etc/passwd", "../images/val", "val.txt", "~"]),
    st.lists(st.sampled_from(["images/val", "/etc/hostname", 3, None]), max_size=3),
    st.dictionaries(st.integers(-2, 5) | st.text(max_size=3), st.text(max_size=4) | st.integers(), max_size=4),
)
_KEYS = ["path", "train", "val", "names", "nc", "kpt_shape", "download", "channels"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("fuzz") / "d", train=2, val=2, imgsz=32, classes=2, seed=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(_KEYS), _ODD, max_size=4), drop=st.sets(st.sampled_from(_KEYS)))
def test_any_data_yaml_is_used_or_refused_in_one_line(small, tmp_path, changes, drop):
    marker = tmp_path / "ran"
    cfg = {k: v for k, v in yaml.safe_load(small.read_text()).items() if k not in drop}
    cfg.update(changes)
    if "download" in cfg:
        cfg["download"] = _python_payload(marker)
    data = small.parent / "fuzzed.yaml"
    data.write_text(yaml.safe_dump(cfg))
    try:
        dataset = load_detection_set(data)
        config = trainer_config(data)
    except DatasetError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert dataset.images and "download" not in config and Path(config["path"]).is_absolute()
    assert not marker.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet="0123456789 .-+einfa\n\t,e", max_size=60))
def test_any_label_text_is_read_or_refused_naming_its_line(small, text):
    label = sorted((small.parent / "labels" / "val").glob("*.txt"))[0]
    kept = label.read_text()
    label.write_text(text)
    try:
        dataset = load_detection_set(small)
    except DatasetError as exc:
        assert str(exc).startswith(str(label)) and "\n" not in str(exc)
    else:
        assert all(math.isfinite(v) for ann in dataset.coco.dataset["annotations"] for v in ann["bbox"])
    finally:
        label.write_text(kept)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val": []}, "'val' names no images"),
        ({"val": "images/val\nSECRET"}, "'val' must name a folder or an image list file (or a list of them)"),
        ({"path": "d\x00"}, "'path' must be a folder name"),
        ({"kpt_shape": ["a", 3]}, "kpt_shape must be [keypoints (1..1000), 2 or 3]"),
    ],
)
def test_odd_data_yaml_values_are_refused_in_one_line(small, change, message):
    data = small.parent / "odd.yaml"
    data.write_text(yaml.safe_dump({**yaml.safe_load(small.read_text()), **change}))
    with pytest.raises(DatasetError) as caught:
        load_detection_set(data)
    assert str(caught.value) == f"{data}: {message}"


def test_a_fifo_among_the_images_is_not_opened(small, tmp_path):
    """A named pipe called ``zzz.jpg`` would block the reader forever: only regular files are images."""
    import os

    from yoloprune.images import list_images

    fifo = small.parent / "images" / "val" / "zzz.jpg"
    os.mkfifo(fifo)
    try:
        assert fifo not in load_detection_set(small).images and len(load_detection_set(small).images) == 2
        assert fifo not in list_images(small.parent / "images" / "val")
    finally:
        fifo.unlink()


# --- run folders: a fine-tune writes inside -o only and reads back only a record of the right shape ----------------


def test_a_run_folder_holding_a_link_is_refused(model, dataset, tmp_path):
    from yoloprune.train import finetune

    victim = tmp_path / "victim.txt"
    victim.write_text("user data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").symlink_to(victim)
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"results.csv is a symbolic link: a run folder must hold no links"):
            finetune(None if resume else model, dataset / "data.yaml", out=run, resume=resume, epochs=1, imgsz=64)
    assert victim.read_text() == "user data"


def test_the_data_yaml_is_never_the_file_finetune_writes(model, dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    mine = run / "dataset.yaml"
    mine.write_text((dataset / "data.yaml").read_text())
    before = mine.read_bytes()
    assert main(["finetune", str(model), "--data", str(mine), "-o", str(run), "--epochs", "1", "--imgsz", "64"]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err and mine.read_bytes() == before


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("[1, 2]", "not a settings record (a JSON object)"),
        ('"str"', "not a settings record (a JSON object)"),
        ('{"args": [1]}', "'args' is not a mapping"),
        ("{bad", "is not a readable settings record (JSON)"),
        ('{"kd_weight": "nan"}', "'kd_weight' is not a number in [0, 1e6]"),
        ('{"settings": {"bogus": 1}}', "'settings' holds keys other than"),
        ('{"settings": {"lr0": "abc"}}', "'lr0' is not a learning rate"),
        ('{"args": {"imgsz": 1e99}}', "'imgsz' is not a whole number"),
    ],
)
def test_a_damaged_run_record_is_refused_naming_it(dataset, tmp_path, capsys, record, message):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    (run / "yoloprune_finetune.json").write_text(record)
    assert main(["finetune", "--resume", "-o", str(run), "--data", str(dataset / "data.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"yoloprune finetune: error: {run / 'yoloprune_finetune.json'}") and message in err, err
    assert len(err.splitlines()) == 1
