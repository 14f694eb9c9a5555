"""Extension points: each registry entry carries its own rules, and everything that depends on
the choice (config validation, inference sizes, the ONNX contract, the CLI, the training step)
reads them from the entry."""

from __future__ import annotations

import argparse
import typing

import pytest
import torch
import torch.nn as nn
from PIL import Image

from p2p import architectures
from p2p.architectures import GeneratorSpec, size_multiple
from p2p.checkpoints import unwrap
from p2p.cli import build_parser
from p2p.config import ConfigError, LossConfig, load_config
from p2p.data.build import TASKS
from p2p.inference import geometry, translate
from p2p.losses import GAN_MODES, GANLoss, gradient_penalty
from p2p.models import build_generator
from p2p.serving.onnx_export import contract


class _ToyGenerator(nn.Module):
    """A test-only third architecture: one stride-8 conv down, one transposed conv back up.

    It does not carry input_nc/output_nc/size_multiple attributes: its size rule lives only
    in its registry entry."""

    def __init__(self, in_ch: int, out_ch: int, width: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_ch, width, kernel_size=8, stride=8)
        self.up = nn.ConvTranspose2d(width, out_ch, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(torch.relu(self.down(x))))


@pytest.fixture
def toy(monkeypatch):
    spec = GeneratorSpec(
        build=lambda m, i, o: _ToyGenerator(i, o, m.base_channels),
        size_multiple=lambda m: 8,
        size_rule="8: one stride-8 conv",
    )
    monkeypatch.setitem(architectures.GENERATORS, "toy", spec)
    return spec


def _toy_cfg(**over):
    base = {"model.generator": "toy", "model.base_channels": 4}
    base |= {"data.crop_size": 24, "data.load_size": 32, "model.norm": "none"}
    return load_config(None, base | over)


def test_a_registered_generator_is_a_valid_config_choice(toy):
    cfg = _toy_cfg()
    assert cfg.model.generator == "toy" and size_multiple(cfg.model) == 8
    g = build_generator(cfg.model, 3, 3)
    assert isinstance(g, _ToyGenerator)
    with pytest.raises(ConfigError, match=r"data.crop_size \(20\) must be a multiple of 8 \(8:"):
        _toy_cfg(**{"data.crop_size": 20})


def test_inference_and_onnx_contract_use_the_registered_size_multiple(toy):
    cfg = _toy_cfg()
    torch.manual_seed(0)
    g = build_generator(cfg.model, 3, 3).eval()
    assert geometry(g, cfg) == (3, 3, 8)
    # 30x21 is no multiple of 8: resized to 32x24 for the network and back
    (out,) = translate(g, [Image.new("RGB", (30, 21), (90, 30, 200))], cfg, mode="eval")
    assert out.size == (30, 21)
    assert contract(g, "eval", cfg)["p2p.size_multiple"] == "8"


def test_unknown_generator_names_the_registered_ones(toy):
    with pytest.raises(
        ConfigError, match="model.generator: 'gan9' is not one of unet, resnet, toy"
    ):
        load_config(None, {"model.generator": "gan9"})


def test_resnet_crop_size_must_be_a_multiple_of_4():
    base = {"model.generator": "resnet", "data.load_size": 286}
    assert load_config(None, base | {"data.crop_size": 252}).data.crop_size == 252
    with pytest.raises(ConfigError, match=r"data.crop_size \(254\) must be a multiple of 4"):
        load_config(None, base | {"data.crop_size": 254})


def test_discriminator_choices_are_the_registry():
    for name in architectures.DISCRIMINATORS:
        assert load_config(None, {"model.discriminator": name}).model.discriminator == name
    with pytest.raises(ConfigError, match="is not one of basic, n_layers, pixel"):
        load_config(None, {"model.discriminator": "huge"})


def _cli_choices(*path: str) -> list[str]:
    """The choices of option `path[-1]` of the subcommand `p2p path[0] path[1] ...`."""
    parser = build_parser()
    for name in path[:-1]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    (action,) = [a for a in parser._actions if a.dest == path[-1]]
    return list(action.choices)


def test_cli_build_task_choices_are_the_task_registry(monkeypatch):
    assert _cli_choices("data", "build", "task") == list(TASKS)
    monkeypatch.setitem(TASKS, "invert", lambda b: b.point(lambda v: 255 - v))
    assert _cli_choices("data", "build", "task") == list(TASKS)
    assert load_config(None, {"build.task": "invert"}).build.task == "invert"
    with pytest.raises(ConfigError, match="build.task: 'blur' is not one of edges, colorize"):
        load_config(None, {"build.task": "blur"})


def test_config_gan_modes_are_the_loss_registry():
    hint = typing.get_type_hints(LossConfig)["gan_mode"]
    assert typing.get_args(hint) == tuple(GAN_MODES)


def test_d_penalty_comes_from_the_gan_mode():
    cfg = load_config(None, {"loss.lambda_gp": 3.0})
    d = nn.Conv2d(6, 1, 3)
    real, fake = torch.rand(2, 6, 8, 8), torch.rand(2, 6, 8, 8)
    for mode in ("vanilla", "lsgan"):
        assert GANLoss(mode).d_penalty(d, real, fake, cfg) == 0.0
    torch.manual_seed(1)
    got = GANLoss("wgangp").d_penalty(d, real, fake, cfg)
    torch.manual_seed(1)
    assert torch.equal(got, gradient_penalty(d, real, fake, weight=3.0))


def test_unwrap_keep_compiled_strips_only_parallel_wrappers():
    net = nn.Linear(2, 2)
    compiled = torch.compile(net)  # compiles lazily: nothing runs here
    assert unwrap(compiled) is net
    assert unwrap(compiled, keep_compiled=True) is compiled
    assert unwrap(nn.DataParallel(compiled), keep_compiled=True) is compiled
    # a compile wrapper around the parallel one goes with it (torch.compile(DDP(net)) -> net)
    assert unwrap(torch.compile(nn.DataParallel(net)), keep_compiled=True) is net
    assert unwrap(torch.compile(nn.DataParallel(net))) is net
