"""The generator and discriminator registries: name -> how to build it and which sizes it takes.

One entry per architecture holds everything the rest of p2p needs to know about it:

    GENERATORS["unet"] = GeneratorSpec(build=..., size_multiple=lambda m: 2**m.num_downs, ...)

`model.generator` / `model.discriminator` accept exactly these names (p2p.config), and
`size_multiple(model_cfg)` is the one size rule used by config validation, inference (images are
resized to it) and the ONNX input contract. This module is torch-free so that p2p.config can
import it; the builders import their torch modules when called (`p2p.models.build_generator`
adds the weight init).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

    from p2p.config import ModelConfig


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator architecture.

    build: (model cfg, in_channels, out_channels) -> the bare module (no weight init).
    size_multiple: model cfg -> H and W of its input must be positive multiples of this.
    size_rule: where that multiple comes from, for messages, e.g. "2**model.num_downs".
    """

    build: Callable[[ModelConfig, int, int], nn.Module]
    size_multiple: Callable[[ModelConfig], int]
    size_rule: str


def _unet(m: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from p2p.models.unet import UnetGenerator

    return UnetGenerator(in_ch, out_ch, m.num_downs, m.base_channels, m.norm, m.use_dropout)


def _resnet(m: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from p2p.models.resnet import ResnetGenerator

    return ResnetGenerator(in_ch, out_ch, m.base_channels, m.resnet_blocks, m.norm, m.use_dropout)


def _patch(n_layers: Callable[[ModelConfig], int]) -> Callable[[ModelConfig, int], nn.Module]:
    def build(m: ModelConfig, in_ch: int) -> nn.Module:
        from p2p.models.patchgan import PatchDiscriminator

        return PatchDiscriminator(in_ch, m.disc_channels, n_layers(m), m.norm)

    return build


def _pixel(m: ModelConfig, in_ch: int) -> nn.Module:
    from p2p.models.patchgan import PixelDiscriminator

    return PixelDiscriminator(in_ch, m.disc_channels, m.norm)


# model.generator -> its spec
GENERATORS: dict[str, GeneratorSpec] = {
    # pix2pix U-Net: every down level halves the sides (8 levels = unet_256)
    "unet": GeneratorSpec(_unet, lambda m: 2**m.num_downs, "2**model.num_downs"),
    # CycleGAN-style ResNet: 2 stride-2 downsamplings (ResnetGenerator.n_downsampling)
    "resnet": GeneratorSpec(_resnet, lambda m: 4, "2**2: two stride-2 convs"),
}

# model.discriminator -> builder(model cfg, in_channels) of the bare module; D sees cat(A, B).
# "basic" is the 70x70 PatchGAN: n_layers fixed at 3.
DISCRIMINATORS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "basic": _patch(lambda m: 3),
    "n_layers": _patch(lambda m: m.disc_layers),
    "pixel": _pixel,
}


def generator_spec(model: ModelConfig) -> GeneratorSpec:
    """The spec of `model.generator` (ValueError naming the choices if unknown)."""
    try:
        return GENERATORS[model.generator]
    except KeyError:
        raise ValueError(
            f"unknown generator {model.generator!r}; one of {', '.join(GENERATORS)}"
        ) from None


def size_multiple(model: ModelConfig) -> int:
    """H and W of the generator's input must be positive multiples of this."""
    return generator_spec(model).size_multiple(model)
