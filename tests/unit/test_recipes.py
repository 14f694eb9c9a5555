"""params/NAME.yaml: the paper's recipe per published dataset loads, validates and agrees with
the download registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.cli import main
from p2p.config import load_config
from p2p.data.download import DATASETS

PARAMS = Path(__file__).resolve().parents[2] / "params"
# dataset -> (total epochs, batch size): the paper's appendix
PAPER = {
    "facades": (200, 1),
    "cityscapes": (200, 1),
    "maps": (200, 1),
    "edges2shoes": (15, 4),
    "edges2handbags": (15, 4),
    "night2day": (17, 4),
}


def test_one_recipe_per_published_dataset():
    assert {p.stem for p in PARAMS.glob("*.yaml")} == set(DATASETS) == set(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_loads_and_matches_the_paper(name):
    cfg = load_config(PARAMS / f"{name}.yaml")
    epochs, batch = PAPER[name]
    assert cfg.epochs == epochs and cfg.train.batch_size == batch
    assert cfg.data.direction == DATASETS[name].direction
    assert (cfg.data.load_size, cfg.data.crop_size, cfg.data.preprocess) == (
        286, 256, "resize_and_crop",
    )  # fmt: skip
    assert (cfg.model.generator, cfg.model.num_downs, cfg.model.base_channels) == ("unet", 8, 64)
    assert (cfg.model.norm, cfg.loss.gan_mode, cfg.loss.lambda_l1) == ("batch", "vanilla", 100.0)
    assert cfg.eval.inference_mode == "paper"
    assert cfg.data.raw_dir == f"data/raw/{name}" and cfg.data.source == f"data/downloads/{name}"
    assert cfg.resources.use_gpu and cfg.resources.num_workers == 1


def test_recipe_runs_through_the_cli(capsys):
    assert (
        main(["config", "show", "--params", str(PARAMS / "facades.yaml"), "--format", "flat"]) == 0
    )
    out = capsys.readouterr().out
    assert "data.direction=BtoA" in out and "eval.inference_mode=paper" in out
