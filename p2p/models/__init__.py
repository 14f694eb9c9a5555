"""Generators and discriminators, chosen by name through the registries of p2p.architectures.

    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    d = build_discriminator(cfg.model, cfg.data.input_nc + cfg.data.output_nc)

Both return freshly initialised modules (`model.init_type`, `model.init_gain`); seed torch first
for reproducible weights.
"""

from __future__ import annotations

import torch.nn as nn

from p2p.architectures import DISCRIMINATORS, GENERATORS, generator_spec
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


def build_generator(model: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    """Build and initialise the generator named by `model.generator`.

    Args:
        model: the `model` config group.
        in_channels: data.input_nc.
        out_channels: data.output_nc.
    """
    g = generator_spec(model).build(model, in_channels, out_channels)
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
