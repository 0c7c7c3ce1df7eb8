"""Calibrated pruning: least-squares reconstruction of the layers that lost inputs, norm statistics re-estimated."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize
from torch import nn

import yoloprune
from yoloprune.adapters.ultralytics import from_config
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.pruning.calibrate import (
    _patches,
    _positions,
    calibration_batches,
    output_error,
    recalibrate_norms,
    reconstruct,
)

IMGSZ = 96


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = synthesize(tmp_path_factory.mktemp("calib") / "d", train=16, val=8, imgsz=IMGSZ, classes=3, seed=1)
    return root.parent / "images" / "train", root.parent / "images" / "val"


@pytest.fixture(scope="module")
def trained_like(images):
    """A randomized yolov8n whose norm statistics match the images, as a trained model's do."""
    torch.manual_seed(0)
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    recalibrate_norms(net, calibration_batches(images[0], IMGSZ, images=16))
    return net.eval()


@pytest.mark.parametrize(("k", "stride", "pad", "dilation"), [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_sampled_patches_are_the_unfolded_rows(k, stride, pad, dilation):
    conv = nn.Conv2d(4, 6, k, stride, pad, dilation=dilation)
    x = torch.randn(2, 4, 11, 13)
    y = conv(x)
    where = _positions(y.shape, 40, 0)
    rows = _patches(conv, x, y.shape, where)
    expected = F.unfold(x, k, dilation, pad, stride).transpose(1, 2).reshape(-1, 4 * k * k)[where]
    assert torch.equal(rows, expected)
    assert torch.allclose(
        rows @ conv.weight.reshape(6, -1).T + conv.bias, y.flatten(2).transpose(1, 2).reshape(-1, 6)[where], atol=1e-5
    )


def test_reconstruction_brings_the_pruned_outputs_back_toward_the_original(trained_like, images):
    calib = calibration_batches(images[0], IMGSZ, images=16)
    held_out = calibration_batches(images[1], IMGSZ, images=8)
    plain, rebuilt = copy.deepcopy(trained_like), copy.deepcopy(trained_like)
    report = yoloprune.prune(plain, torch.zeros(1, 3, IMGSZ, IMGSZ), target_macs=0.6)
    yoloprune.prune(rebuilt, torch.zeros(1, 3, IMGSZ, IMGSZ), target_macs=0.6)
    result = reconstruct(rebuilt, trained_like, calib, report.removed)
    assert result.layers > 20 and result.error_after < result.error_before
    before, after = output_error(plain, trained_like, held_out), output_error(rebuilt, trained_like, held_out)
    assert after < 0.9 * before, (before, after)  # on images the fit never saw
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in plain.parameters()]  # architecture as pruned


def test_norm_statistics_are_re_estimated_on_the_images(images):
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    first = net.model[0].bn
    first.running_mean.fill_(5.0)
    assert recalibrate_norms(net, calibration_batches(images[0], IMGSZ, images=8)) == 57
    assert first.running_mean.abs().max() < 5.0 and first.momentum == 0.03 and not net.training


def test_prune_with_calib_from_the_command_line(trained_like, images, tmp_path, capsys):
    model = tmp_path / "m.pt"
    torch.save({"model": trained_like, "train_args": {}}, model)
    out = tmp_path / "p.pt"
    argv = ["prune", str(model), "--target-macs", "0.6", "--imgsz", str(IMGSZ), "-o", str(out)]
    assert main([*argv, "--calib", str(images[0]), "--calib-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert "note: calibrated on 8 images" in printed and "layers refitted" in printed
    section = torch.load(out, weights_only=False)["yoloprune"]
    assert section["settings"]["calibration"]["images"] == 8 and section["settings"]["calibration"]["layers"] > 20
    assert yoloprune.load(out) is not None  # the plan still rebuilds the calibrated network's shapes
    empty = tmp_path / "none"
    empty.mkdir()
    assert main([*argv, "--calib", str(empty), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == f"yoloprune prune: error: --calib {empty}: no images in {empty}"
