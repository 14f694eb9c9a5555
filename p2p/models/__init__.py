"""Generators and discriminators, chosen by name through explicit registries.

    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    d = build_discriminator(cfg.model, cfg.data.input_nc + cfg.data.output_nc)

Both return freshly initialised modules (`model.init_type`, `model.init_gain`); seed torch first
for reproducible weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from p2p.config import ModelConfig
from p2p.models.layers import init_weights
from p2p.models.patchgan import PatchDiscriminator, PixelDiscriminator
from p2p.models.resnet import ResnetGenerator
from p2p.models.unet import UnetGenerator

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "PatchDiscriminator",
    "PixelDiscriminator",
    "ResnetGenerator",
    "UnetGenerator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
]


def _unet(m: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    return UnetGenerator(in_ch, out_ch, m.num_downs, m.base_channels, m.norm, m.use_dropout)


def _resnet(m: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    return ResnetGenerator(in_ch, out_ch, m.base_channels, m.resnet_blocks, m.norm, m.use_dropout)


# model.generator -> builder(model_cfg, in_channels, out_channels)
GENERATORS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "unet": _unet,
    "resnet": _resnet,
}

# model.discriminator -> builder(model_cfg, in_channels); "basic" is n_layers fixed at 3.
DISCRIMINATORS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "basic": lambda m, c: PatchDiscriminator(c, m.disc_channels, 3, m.norm),
    "n_layers": lambda m, c: PatchDiscriminator(c, m.disc_channels, m.disc_layers, m.norm),
    "pixel": lambda m, c: PixelDiscriminator(c, m.disc_channels, m.norm),
}


def build_generator(model: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """Build and initialise the generator named by `model.generator`.

    Args:
        model: the `model` config group.
        in_channels: data.input_nc.
        out_channels: data.output_nc.
    """
    if model.generator not in GENERATORS:
        raise ValueError(f"unknown generator {model.generator!r}; one of {', '.join(GENERATORS)}")
    g = GENERATORS[model.generator](model, in_channels, out_channels)
    return init_weights(g, model.init_type, model.init_gain)


def build_discriminator(model: ModelConfig, in_channels: int) -> nn.Module:
    """Build and initialise the conditional discriminator named by `model.discriminator`.

    Args:
        model: the `model` config group.
        in_channels: data.input_nc + data.output_nc (D sees cat(A, B)).
    """
    if model.discriminator not in DISCRIMINATORS:
        raise ValueError(
            f"unknown discriminator {model.discriminator!r}; one of {', '.join(DISCRIMINATORS)}"
        )
    d = DISCRIMINATORS[model.discriminator](model, in_channels)
    return init_weights(d, model.init_type, model.init_gain)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (buffers such as BN running stats are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
