"""Fine-tuning keeps the pruned network, distils, resumes, works offline; distillation runs across processes."""

from __future__ import annotations

import copy
import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import randomize

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.data import synthesize
from yoloprune.data.datasets import DatasetError
from yoloprune.train import finetune
from yoloprune.train.loop import distill

X = torch.zeros(1, 3, 64, 64)
FAST = {"imgsz": 64, "batch": 4, "nbs": 4, "workers": 0, "mosaic": 0.0, "val": True, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "d", train=8, val=4, imgsz=64, classes=3, seed=1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """An unpruned 3-class yolov8n and a copy pruned to about half its MACs, both saved as checkpoints."""
    root = tmp_path_factory.mktemp("models")
    base = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    from yoloprune.adapters import Loaded
    from yoloprune.adapters.ultralytics import save

    save(Loaded(base, "ultralytics", "t", {"train_args": {}}), root / "teacher.pt", {})
    pruned = randomize(from_config({**base.yaml, "nc": 3}))
    pruned.load_state_dict(base.state_dict())
    yoloprune.prune(pruned, X, target_macs=0.5)
    save(Loaded(pruned, "ultralytics", "p", {"train_args": {}}), root / "pruned.pt", {"plan": pruned.yaml["yoloprune"]})
    return root / "teacher.pt", root / "pruned.pt", sum(p.numel() for p in pruned.parameters())


def test_finetune_keeps_the_pruned_network_and_writes_fp32(pair, data, tmp_path):
    _teacher, pruned, params = pair
    before = pruned.read_bytes()
    result = finetune(pruned, data, epochs=1, out=tmp_path / "run", **FAST)
    assert pruned.read_bytes() == before
    assert result.params == params and result.best.is_file()
    ckpt = torch.load(result.best, weights_only=False)
    assert all(p.dtype == torch.float32 for p in ckpt["model"].parameters())
    assert sum(p.numel() for p in ckpt["model"].parameters()) == params
    rebuilt = yoloprune.load(result.best)  # the plan survived training
    assert sum(p.numel() for p in rebuilt.parameters()) == params
    from yoloprune.adapters.ultralytics import GUARD

    for path in (result.best, result.last):  # stock training of the fine-tuned files stops too
        assert torch.load(path, weights_only=False)["model"].yaml["backbone"][0][2] == GUARD


def test_finetune_hands_back_the_start_when_no_epoch_beats_it(pair, data, tmp_path, monkeypatch):
    from yoloprune.train import ultralytics_trainer

    _teacher, pruned, _params = pair
    real = ultralytics_trainer.start_fitness
    scores = []
    monkeypatch.setattr(  # above any real fitness, and the real validation run too
        ultralytics_trainer, "start_fitness", lambda *a, **k: scores.append(real(*a, **k)) or 2.0
    )
    import ultralytics.cfg

    monkeypatch.chdir(tmp_path)  # where ultralytics puts what it is not told where to put
    monkeypatch.setattr(ultralytics.cfg, "SETTINGS", {**ultralytics.cfg.SETTINGS, "runs_dir": str(tmp_path / "ul")})
    monkeypatch.setattr(ultralytics.cfg, "TESTS_RUNNING", False)
    result = finetune(pruned, data, epochs=1, out=tmp_path / "run", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the start's validation wrote nothing outside
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0
    start = yoloprune.load(pruned).state_dict()
    best = yoloprune.load(result.best).state_dict()
    assert all(torch.equal(v.float(), start[k].float()) for k, v in best.items())
    last = yoloprune.load(result.last).state_dict()
    assert any(not torch.equal(v.float(), start[k].float()) for k, v in last.items() if v.is_floating_point())


def test_distillation_adds_its_loss(pair, data, tmp_path):
    teacher, pruned, _ = pair
    result = finetune(pruned, data, epochs=1, teacher=teacher, kd_weight=2.0, out=tmp_path / "kd", **FAST)
    assert result.metrics.get("train/kd_loss", 0) > 0


def test_interrupted_run_resumes(pair, data, tmp_path):
    _, pruned, params = pair

    def stop(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        finetune(pruned, data, epochs=2, out=tmp_path / "r", callbacks={"on_fit_epoch_end": stop}, **FAST)
    refused = [
        ({"epochs": 3}, "its epochs=2\\); epochs=3 would"),
        ({"lr0": 0.5}, "no lr0 setting"),
        ({"kd_weight": 5.0}, "its kd_weight=1.0\\); kd_weight=5.0 would"),
        ({"teacher": str(pruned)}, "its teacher=None\\); teacher="),
    ]
    for changed, message in refused:
        with pytest.raises(ValueError, match=rf"--resume continues the run in .* \({message}"):
            finetune(None, data, out=tmp_path / "r", resume=True, **changed)  # refused, not silently ignored
    run, last = tmp_path / "r", tmp_path / "r" / "weights" / "last.pt"
    kept = last.read_bytes()
    ckpt = torch.load(last, weights_only=False)
    ckpt["train_args"]["imgsz"] = 160  # what ultralytics' resume would train at
    torch.save(ckpt, last)
    with pytest.raises(ValueError, match=r"last.pt: its imgsz \(160\) is not the run's recorded 64"):
        finetune(None, data, out=run, resume=True)
    last.write_bytes(kept)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    record = json.loads((run / "yoloprune_finetune.json").read_text())
    record["args"]["model"], record["start_fitness"] = str(secret), 1e9  # "no epoch beats the start": copy it
    (run / "yoloprune_finetune.json").write_text(json.dumps(record))
    result = finetune(None, data, epochs=2, out=run, resume=True)
    assert result.epochs == 2 and result.params == params
    assert result.best.read_bytes() != secret.read_bytes() and yoloprune.load(result.best) is not None


def test_a_model_of_another_class_list_learns_the_datas_classes(data, tmp_path, capsys):
    """An 80-class model pruned, then fine-tuned with its unpruned self as teacher on 3-class data: the head gets
    the data's classes (fresh class layers, everything else kept), the file rebuilds and evaluates on the data."""
    from yoloprune.adapters import Loaded
    from yoloprune.adapters.ultralytics import save
    from yoloprune.data.datasets import load_detection_set
    from yoloprune.evaluate.coco import evaluate

    coco = randomize(from_config("yolov8n.yaml"))
    teacher = save(Loaded(coco, "ultralytics", "t", {"train_args": {}}), tmp_path / "coco.pt", {})
    pruned = copy.deepcopy(coco)
    yoloprune.prune(pruned, X, target_macs=0.5)
    path = save(
        Loaded(pruned, "ultralytics", "p", {"train_args": {}}), tmp_path / "p.pt", {"plan": pruned.yaml["yoloprune"]}
    )
    result = finetune(path, data, teacher=teacher, epochs=1, out=tmp_path / "run", **FAST)
    assert "the model predicts 80 classes, the dataset has 3" in capsys.readouterr().out
    net = yoloprune.load(result.best)
    assert net.model[-1].nc == 3 and net.names == load_detection_set(data, "train").names
    shapes, before = {k: v.shape for k, v in net.state_dict().items()}, pruned.state_dict()
    changed = {k for k, v in before.items() if shapes[k] != v.shape}
    assert changed == {f"model.22.cv3.{i}.2.{w}" for i in range(3) for w in ("weight", "bias")}
    assert evaluate(result.best, data, imgsz=64, batch=4).images == 4
    with pytest.raises(DatasetError, match="no such dataset"):
        finetune(path, tmp_path / "missing.yaml", epochs=1, out=tmp_path / "bad2")


def test_finetune_and_eval_work_with_the_network_blocked(pair, data, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _, pruned, _ = pair
    result = finetune(pruned, data, epochs=1, out=tmp_path / "offline", **{**FAST, "plots": True})
    from yoloprune.evaluate.coco import evaluate

    metrics = evaluate(result.best, data, imgsz=64, batch=4)
    assert metrics.images == 4 and 0.0 <= metrics.map50_95 <= 1.0


def test_an_in_memory_teacher_is_used_as_it_is(pair, data, tmp_path):
    """One process: the teacher module goes to the trainer directly, never through a file or the environment."""
    import os

    from yoloprune.adapters import load_model

    teacher, pruned, _ = pair
    net = load_model(str(teacher)).model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = finetune(pruned, data, epochs=1, teacher=net, out=tmp_path / "kd", **FAST)
    assert result.metrics.get("train/kd_loss", 0) > 0
    assert not (tmp_path / "kd" / "teacher.pt").exists()
    assert not [k for k in os.environ if k.startswith("YOLOPRUNE")]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the caller's module is untouched


def test_a_folder_of_images_means_distillation(pair, data, tmp_path):
    """finetune() is the one entry point: labelled data trains, an image folder with a teacher distils."""
    teacher, pruned, params = pair
    images = data.parent / "images" / "train"
    result = finetune(pruned, images, epochs=1, teacher=teacher, imgsz=64, batch=4, workers=0, out=tmp_path / "d")
    assert result.best.is_file() and result.params == params
    with pytest.raises(ValueError, match="teacher"):
        finetune(pruned, images, epochs=1, imgsz=64, batch=4, workers=0, out=tmp_path / "none")


def test_a_distillation_that_goes_wrong_hands_back_the_start(pair, data, tmp_path, monkeypatch, capsys):
    """Without labels the start and every epoch are scored by fidelity to the teacher; an epoch that wrecks the
    weights (here: all zero, as lr 1e-3 did to a real YOLOv5n) never becomes best.pt."""
    from yoloprune.evaluate import fidelity
    from yoloprune.train import loop

    teacher, pruned, _ = pair
    real = loop.distill

    def wrecking(student, *args, on_epoch_end=None, **kwargs):
        result = real(student, *args, on_epoch_end=None, **kwargs)
        with torch.no_grad():
            for p in student.parameters():
                p.zero_()
        on_epoch_end(1)
        return result

    monkeypatch.setattr(loop, "distill", wrecking)
    scores = [0.6, 0.1]  # random test weights detect nothing confidently: the scores the two checks would give
    monkeypatch.setattr(fidelity, "fidelity_map", lambda truth, found: scores.pop(0))
    images = data.parent / "images" / "train"
    result = finetune(pruned, images, epochs=1, teacher=teacher, imgsz=64, batch=4, workers=0, out=tmp_path / "d")
    printed = capsys.readouterr().out
    assert "start: fidelity to the teacher 0.6000" in printed and "epoch 1/1: fidelity to the teacher 0.1000" in printed
    kept = torch.load(result.best, weights_only=False)
    assert kept["yoloprune"]["distill"]["epoch"] == 0 and kept["yoloprune"]["fidelity"] == 0.6
    assert any(bool(p.abs().sum()) for p in kept["model"].parameters())


def test_distillation_loop_on_unlabelled_images(data):
    import copy

    from yoloprune.images import Preprocess
    from yoloprune.train.kd import decoded_kd
    from yoloprune.train.loop import ImageFolder

    teacher = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    with torch.no_grad():
        for branch in teacher.model[-1].cv3:
            branch[-1].bias.zero_()  # class probabilities near 0.5: informative targets for a random model
    student = copy.deepcopy(teacher)
    yoloprune.prune(student, X, target_macs=0.5)
    images = ImageFolder(data.parent / "images" / "train", 64, Preprocess(), flip=False)
    x = torch.stack([images[i] for i in range(len(images))])

    def excess(m):  # distillation loss above its floor (the teacher against itself)
        with torch.no_grad():
            t = teacher.eval()(x)[0]
            return float(decoded_kd(m.eval()(x)[0], t, "xywh-class", 3, 64) - decoded_kd(t, t, "xywh-class", 3, 64))

    before = excess(student)
    result = distill(student, teacher, data.parent / "images" / "train", epochs=3, imgsz=64, batch=4)
    assert result.steps == 6 and 0 <= excess(student) < 0.8 * before
    assert not any(p.requires_grad for p in student.parameters())


def _rank(rank: int, world: int, port: int, student: str, teacher: str, images: str, out: dict) -> None:
    import os

    import torch.distributed as dist

    from yoloprune.adapters import load_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different seeds: identical weights afterwards come from DDP, not luck
    s, t = load_model(student).model, load_model(teacher).model
    distill(s, t, images, epochs=1, imgsz=64, batch=2, max_steps=1, lr=1e-3)
    out[rank] = torch.cat([p.detach().flatten() for p in s.parameters()]).sum().item()
    dist.destroy_process_group()


def test_ddp_two_processes_keep_identical_weights(pair, data):
    teacher, pruned, _ = pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank, args=(2, port, str(pruned), str(teacher), str(data.parent / "images" / "train"), out), nprocs=2)
    before = torch.load(pruned, weights_only=False)["model"]
    initial = torch.cat([p.detach().flatten() for p in before.parameters()]).sum().item()
    assert out[0] == out[1] and out[0] != initial


def test_sparsity_training_shrinks_bn_scales(pair, data, tmp_path):
    _, pruned, _ = pair

    def gammas(path):
        net = torch.load(path, weights_only=False)["model"]
        return torch.cat([m.weight.abs() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]).mean()

    sgd = {**FAST, "optimizer": "SGD", "lr0": 0.05}
    plain = finetune(pruned, data, epochs=2, out=tmp_path / "plain", **sgd)
    sparse = finetune(pruned, data, epochs=2, sparsity=3.0, out=tmp_path / "sparse", **sgd)
    assert gammas(sparse.last) < gammas(plain.last) - 0.05
    lasso = finetune(pruned, data, epochs=2, sparsity=3.0, sparsity_kind="group", out=tmp_path / "lasso", **sgd)

    def channel_norms(path):
        from yoloprune.train.ultralytics_trainer import group_lasso

        net = torch.load(path, weights_only=False)["model"]
        return group_lasso(net, FAST["imgsz"]).norms(net)

    shrunk, kept = channel_norms(lasso.last), channel_norms(plain.last)
    assert shrunk.shape == kept.shape and shrunk.mean() < kept.mean() - 0.04  # measured: 1.344 against 1.419
    assert (shrunk < kept).float().mean() > 0.9


def test_cli_taylor_importance_and_steps_with_finetuning(pair, data, tmp_path, capsys):
    from yoloprune.cli import main

    teacher, _, _ = pair
    out = tmp_path / "t.pt"
    assert (
        main(
            [
                "prune",
                str(teacher),
                "-o",
                str(out),
                "--importance",
                "taylor",
                "--data",
                str(data),
                "--imgsz",
                "64",
                "--target-macs",
                "0.6",
            ]
        )
        == 0
    )
    stepped = tmp_path / "s.pt"
    assert (
        main(
            [
                "prune",
                str(teacher),
                "-o",
                str(stepped),
                "--target-macs",
                "0.5",
                "--steps",
                "2",
                "--finetune-epochs",
                "1",
                "--data",
                str(data),
                "--imgsz",
                "64",
                "--batch",
                "4",
                "--max-drop",
                "1.0",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "step 1: mAP50-95" in printed and (tmp_path / "s-steps" / "step1.pt").is_file()
    section = torch.load(stepped, weights_only=False)["yoloprune"]
    assert section["settings"]["steps"] == 2 and section["report"]["steps_done"] == 2
    assert 0.47 <= section["report"]["macs_after"] / section["report"]["macs_before"] <= 0.53


def test_taylor_leaves_the_model_unchanged(pair, data):
    from yoloprune.adapters import load_model, resolve
    from yoloprune.data.batches import labelled_batches
    from yoloprune.graph import build
    from yoloprune.pruning.importance import channel_scores
    from yoloprune.pruning.taylor import detection_loss

    teacher, _, _ = pair
    net = load_model(str(teacher)).model.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    target = resolve(net)
    graph = build(net, X, outputs=target.outputs, ignore=target.ignore, policies=target.policies)
    scores = channel_scores(net, graph, "taylor", taylor_loss=detection_loss(labelled_batches(data, 64, 4, 2)))
    assert scores.max() > 0 and not net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_teacher_with_other_classes_teaches_boxes_only():
    """Each distillation loss, given a teacher of 80 classes and a student of 3, equals the same loss computed on
    the box (and objectness) terms alone, whatever the class outputs hold."""
    from yoloprune.train.kd import anchor_kd, decoded_kd, head_kd

    g = torch.Generator().manual_seed(0)
    boxes_s, boxes_t = torch.randn(2, 64, 10, generator=g), torch.randn(2, 64, 10, generator=g)
    student = {"boxes": boxes_s, "scores": torch.randn(2, 3, 10, generator=g)}
    teacher = {"boxes": boxes_t, "scores": torch.randn(2, 80, 10, generator=g)}
    zeros = torch.zeros(2, 1, 10)  # equal class logits: their term is exactly log 2
    box_only = head_kd({**student, "scores": zeros}, {**teacher, "scores": zeros}) - math.log(2)
    assert torch.allclose(head_kd(student, teacher), box_only)
    s_maps, t_maps = [torch.randn(2, 3, 4, 4, 8, generator=g)], [torch.randn(2, 3, 4, 4, 85, generator=g)]
    assert torch.allclose(anchor_kd(s_maps, t_maps), anchor_kd([s_maps[0][..., :5]], [t_maps[0][..., :5]]))
    s_dec, t_dec = torch.rand(2, 10, 8, generator=g), torch.rand(2, 10, 85, generator=g)
    weight_same = t_dec[..., 4:].max(-1, keepdim=True).values
    box = ((s_dec[..., :4] - t_dec[..., :4]).abs() / 64 * weight_same).sum() / weight_same.sum()
    obj = F.binary_cross_entropy(s_dec[..., 4:5], t_dec[..., 4:5])
    assert torch.allclose(decoded_kd(s_dec, t_dec, "xywh-obj-class", 3, 64, teacher_nc=80), box + obj)


def test_the_command_line_is_quiet_unless_verbose(pair, data, tmp_path):
    """One line per epoch and the result; ultralytics' banners, bars and tables only with --verbose."""
    import os
    import subprocess
    import sys

    _, pruned, _ = pair
    env = {k: v for k, v in os.environ.items() if k != "YOLO_VERBOSE"}
    outputs = {}
    for flag in ([], ["--verbose"]):
        argv = ["finetune", str(pruned), "--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch", "4"]
        argv += ["-o", str(tmp_path / f"run{len(flag)}"), "workers=0", "nbs=4", "mosaic=0", "warmup_epochs=0", *flag]
        done = subprocess.run([sys.executable, "-m", "yoloprune", *argv], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[bool(flag)] = done.stdout + done.stderr
    quiet, verbose = outputs[False], outputs[True]
    assert "epoch 1/1: loss" in quiet and "epoch 2/1" not in quiet
    assert "Ultralytics" not in quiet and "━" not in quiet and len(quiet) < 3000
    assert "Ultralytics" in verbose and len(verbose) > 3 * len(quiet)


def test_an_end_to_end_head_distils_both_branches():
    """YOLO26/YOLOv10 heads: the one-to-one branch (what --end2end exports) is distilled as well as one-to-many."""
    from yoloprune.train.kd import head_kd

    g = torch.Generator().manual_seed(1)

    def branch():
        return {"boxes": torch.randn(2, 64, 10, generator=g), "scores": torch.randn(2, 3, 10, generator=g)}

    s = {"one2many": branch(), "one2one": branch()}
    t = {"one2many": branch(), "one2one": branch()}
    both = head_kd(s, t)
    assert torch.allclose(both, head_kd(s["one2many"], t["one2many"]) + head_kd(s["one2one"], t["one2one"]))
    assert float(head_kd(s["one2one"], t["one2one"])) > 0
