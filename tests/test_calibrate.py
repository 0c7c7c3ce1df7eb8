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
    calibration_batches,
    output_error,
    patches,
    recalibrate_norms,
    reconstruct,
    sample_positions,
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
    where = sample_positions(y.shape, 40, 0)
    rows = patches(conv, x, y.shape, where)
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


def test_one_pass_reconstruction_equals_a_pass_per_layer(trained_like, images, monkeypatch):
    """Refitting each layer as one pass over every image reaches it gives the weights that passes stopping at each
    layer give (the same sampled positions; only the order of floating-point sums may differ)."""
    from yoloprune.pruning import calibrate

    calib = calibration_batches(images[0], IMGSZ, images=12, batch=5)  # batches of 5, 5 and 2 images
    pruned = copy.deepcopy(trained_like)
    report = yoloprune.prune(pruned, torch.zeros(1, 3, IMGSZ, IMGSZ), target_macs=0.6)
    one, each = copy.deepcopy(pruned), copy.deepcopy(pruned)
    assert calibrate._fits_in_one_pass(one, calib)
    first = reconstruct(one, trained_like, calib, report.removed)
    monkeypatch.setattr(calibrate, "ONE_PASS_BYTES", 0)
    assert not calibrate._fits_in_one_pass(each, calib)
    second = reconstruct(each, trained_like, calib, report.removed)
    assert first.layers == second.layers > 20
    assert first.error_after == pytest.approx(second.error_after, rel=1e-4)
    for (name, a), b in zip(one.state_dict().items(), each.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max())), name
    changed = [
        n for n, a in one.state_dict().items() if a.is_floating_point() and not torch.equal(a, pruned.state_dict()[n])
    ]
    assert len(changed) >= first.layers  # the refits happened (weights, and biases or norm means)


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


def _refit_error(p: torch.Tensor, y: torch.Tensor, gone: set[int], k: int) -> float:
    """Relative error of the best least-squares fit of ``y`` from ``p`` (plus a constant) without channels ``gone``."""
    keep = [i for i in range(p.shape[1]) if i // k not in gone]
    a = torch.cat([p[:, keep], torch.ones(p.shape[0], 1, dtype=p.dtype)], 1)
    fit = a @ torch.linalg.lstsq(a, y).solution
    return float(((fit - y) ** 2).sum() / (y**2).sum())


def test_removal_costs_are_the_refit_errors(monkeypatch):
    from yoloprune.pruning import recon_scores

    monkeypatch.setattr(recon_scores, "DAMPING", 1e-10)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, bias=False)
    p = torch.randn(3000, 36, dtype=torch.float64)
    p[:, :9] = 0.9 * p[:, 9:18] + 0.1 * p[:, :9] + 1.0  # channel 0 is nearly channel 1, offset by a constant
    a = torch.cat([p, torch.ones(3000, 1, dtype=p.dtype)], 1)
    y = p @ conv.weight.detach().double().reshape(5, -1).T
    costs = recon_scores.channel_costs(conv.weight, a.T @ a)
    for c in range(4):
        assert costs[c].item() == pytest.approx(_refit_error(p, y, {c}, 9), rel=1e-4)
    assert costs[0] < 0.01 and costs[1] < 0.01 < costs[2]  # each of the twins alone is cheap...
    consumer = recon_scores._Consumer(conv.weight, recon_scores._damped_inverse(a.T @ a), y.pow(2).sum().item())
    consumer.remove([0])  # ...but not both: after one goes, the other carries it
    assert consumer.costs([1]).item() == pytest.approx(_refit_error(p, y, {0, 1}, 9) - costs[0].item(), rel=1e-3)
    assert consumer.costs([1]).item() > 0.1


def test_reconstruction_puts_the_lost_offset_into_the_following_norm():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1, bias=False), nn.BatchNorm2d(3)).eval()
    with torch.no_grad():
        original[0].weight[3].zero_(), original[0].bias[3].fill_(2.0)  # channel 3 is a constant
        original[2].running_mean.uniform_(-1, 1), original[2].running_var.uniform_(0.5, 2)
    pruned = copy.deepcopy(original)
    pruned[0].weight = nn.Parameter(original[0].weight[:3].detach().clone())
    pruned[0].bias = nn.Parameter(original[0].bias[:3].detach().clone())
    pruned[1].weight = nn.Parameter(original[1].weight[:, :3].detach().clone())
    x = torch.randn(8, 2, 6, 6)
    assert (pruned(x) - original(x)).abs().max() > 0.1  # the constant's contribution is gone...
    result = reconstruct(pruned, original, [x[:4], x[4:]], {"0": [3]})
    assert result.layers == 1
    assert torch.allclose(pruned(x), original(x), atol=1e-3)  # ...and back, through the norm's running mean
    assert pruned[1].bias is None


def test_with_calibration_images_the_default_keeps_the_allocation_that_holds_up_on_held_out_images(
    trained_like, images
):
    """Ranked by recon error, pruned and calibrated both ways (across layers per MAC, and uniformly); the copy whose
    detections on images past the calibration ones agree better with the unpruned model's becomes the model."""
    x = torch.zeros(1, 3, IMGSZ, IMGSZ)
    with pytest.raises(ValueError, match="needs calibration images"):
        yoloprune.prune(copy.deepcopy(trained_like), x, target_macs=0.7, importance="recon")
    net = copy.deepcopy(trained_like)
    report = yoloprune.prune(net, x, target_macs=0.7, calib=images[0], calib_images=12)  # the default with images
    allocation = report.settings["allocation"]
    assert report.settings["importance"] == "recon" and allocation["images"] == 4 and allocation["held_out"]
    assert set(allocation["fidelity"]) == {"global", "uniform"}
    assert allocation["fidelity"][allocation["chosen"]] == max(allocation["fidelity"].values())
    assert report.settings["global_ranking"] is (allocation["chosen"] == "global")
    assert abs(report.macs_ratio - 0.7) < 0.02
    again = copy.deepcopy(trained_like)  # the chosen way, asked for: the same network
    yoloprune.prune(
        again, x, target_macs=0.7, calib=images[0], calib_images=12, global_ranking=report.settings["global_ranking"]
    )
    for (name, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_every_step_is_calibrated_against_the_network_it_found(trained_like, images):
    """Two steps with a "fine-tune" between them (here: every weight scaled by 1.05): the second step is refitted
    against the network it found, so the result reproduces that network's outputs, not the original's."""
    held_out = calibration_batches(images[1], IMGSZ, images=8)
    found = {}

    def nudge(step, net):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.05)
        found["net"] = copy.deepcopy(net)

    net = copy.deepcopy(trained_like)
    report = yoloprune.prune(
        net,
        torch.zeros(1, 3, IMGSZ, IMGSZ),
        target_macs=0.5,
        steps=2,
        between_steps=nudge,
        calib=str(images[0]),
        calib_images=8,
        importance="l2",  # the ranking is not what is tested here
    )
    assert report.settings["calibration"]["steps"] == 2 and sum("calibrated on" in n for n in report.notes) == 2
    to_found, to_original = output_error(net, found["net"], held_out), output_error(net, trained_like, held_out)
    assert to_found < 0.5 * to_original, (to_found, to_original)


def test_fidelity_scores_detections_against_the_references_confident_ones():
    from yoloprune.evaluate.fidelity import fidelity_map

    truth = [torch.tensor([[10.0, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.8, 1]]), torch.zeros(0, 6)]
    assert fidelity_map(truth, truth) == pytest.approx(1.0)
    assert fidelity_map(truth, [torch.zeros(0, 6), torch.zeros(0, 6)]) == 0.0
    assert fidelity_map([torch.zeros(0, 6)], [torch.zeros(0, 6)]) == 1.0
    shifted = [t.clone() for t in truth]
    shifted[0][:, :4] += 6  # IoU 0.65 and 0.47 with the reference's boxes
    assert 0 < fidelity_map(truth, shifted) < 0.6
    wrong_class = [t.clone() for t in truth]
    wrong_class[0][:, 5] = 1 - wrong_class[0][:, 5]
    assert fidelity_map(truth, wrong_class) == 0.0


def test_the_allocation_that_cannot_reach_the_target_leaves_the_choice_to_the_other(trained_like, images, monkeypatch):
    from yoloprune.pruning.select import UnreachableTarget
    from yoloprune.workflows import pipeline

    real = pipeline._prune

    def global_unreachable(net, x, settings, *args):
        if settings.global_ranking:
            raise UnreachableTarget("cannot reach macs 0.700 of the original", 0.75)
        return real(net, x, settings, *args)

    monkeypatch.setattr(pipeline, "_prune", global_unreachable)
    x = torch.zeros(1, 3, IMGSZ, IMGSZ)
    report = yoloprune.prune(copy.deepcopy(trained_like), x, target_macs=0.7, calib=images[0], calib_images=12)
    assert report.settings["allocation"]["chosen"] == "uniform" and list(report.settings["allocation"]["fidelity"]) == [
        "uniform"
    ]
    monkeypatch.setattr(pipeline, "_prune", lambda *a: (_ for _ in ()).throw(UnreachableTarget("neither", 0.9)))
    with pytest.raises(UnreachableTarget, match="neither"):
        yoloprune.prune(copy.deepcopy(trained_like), x, target_macs=0.7, calib=images[0], calib_images=12)
