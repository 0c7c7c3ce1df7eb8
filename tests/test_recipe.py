"""Recipes validate strictly, take --set overrides, and run end to end; every shipped recipe validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import randomize

from yoloprune.adapters import Loaded
from yoloprune.adapters.ultralytics import from_config, save
from yoloprune.cli import main
from yoloprune.data import synthesize
from yoloprune.workflows.recipe import RecipeError, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_shipped_recipes_validate_and_say_what_is_unmeasured():
    assert len(RECIPES) >= 10
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe["prune"]["target_macs"] == 0.5
        if "coco" in path.name:
            assert recipe["expected"]["map50_95"] == "to be measured"


@pytest.mark.parametrize(
    ("content", "sets", "message"),
    [
        ({"model": "m.pt", "prune": {"target_mac": 0.5}}, [], "unknown key 'prune.target_mac'"),
        ({"model": "m.pt", "imgsz": "640"}, [], "imgsz must be int, got str"),
        ({"model": "m.pt", "prune": {"global_ranking": 1}}, [], "prune.global_ranking must be bool"),
        ({"model": "m.pt"}, ["finetune.epochs=many"], "finetune.epochs must be int, got str"),
        ({"model": "m.pt"}, ["export.opset"], "--set expects KEY=VALUE"),
        ({"prune": {}}, [], "names no model"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, content, sets, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(path, sets)


def test_run_a_recipe_end_to_end(tmp_path):
    data = synthesize(tmp_path / "data", train=4, val=4, imgsz=64, classes=3, seed=3)
    net = randomize(from_config({**from_config("yolov8n.yaml").yaml, "nc": 3}))
    model = save(Loaded(net, "ultralytics", "x", {"train_args": {}}), tmp_path / "m.pt", {})
    recipe = {
        "name": "tiny",
        "model": str(model),
        "data": str(data),
        "imgsz": 64,
        "finetune": {"epochs": 1, "batch": 4, "workers": 0, "overrides": {"mosaic": 0.0, "warmup_epochs": 0}},
        "bench": {"runs": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["run", str(path), "--set", "prune.target_macs=0.6", "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert abs(results["prune"]["macs_after"] / results["prune"]["macs_before"] - 0.6) < 0.03
    assert results["latency_p50_ms"] > 0 and 0 <= results["eval"]["map50_95"] <= 1
    resolved = yaml.safe_load((out / "recipe.resolved.yaml").read_text())
    assert resolved["prune"]["target_macs"] == 0.6 and resolved["prune"]["round_to"] == 8
    assert torch.load(out / "pruned.pt", weights_only=False)["yoloprune"]["recipe"]["name"] == "tiny"
