"""PatchGAN discriminators (Isola et al. 2017, section 3.2.2), as in the reference implementation.

A PatchGAN classifies each N x N patch of the (input, output) pair as real or fake and returns a
map of logits, one per patch; the GAN loss averages over the map. It is conditional: its input is
cat(A, B) on channels, so in_channels = input_nc + output_nc.

Receptive field (all kernels 4): r = 1 + sum over layers of (k - 1) * (product of the strides
of the layers before it). For n_layers = 3 the strides are 2, 2, 2, 1, 1, so
r = 1 + 3 * (1 + 2 + 4 + 8 + 8) = 70: the paper's 70x70 PatchGAN ("basic"). A 256x256 input
gives 30x30 logits (256 -> 128 -> 64 -> 32 -> 31 -> 30).
`PixelDiscriminator` uses 1x1 kernels only: a 1x1 "PixelGAN" that judges colours, not structure.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from p2p.models.layers import conv_bias, norm_layer


class PatchDiscriminator(nn.Module):
    """NLayerDiscriminator: n_layers stride-2 convs, one stride-1 conv, a 1-channel logit conv.

    Layer indices in `self.model` for n_layers = 3 (the reference's state_dict keys):
    0 conv(+bias), 1 LReLU, 2 conv, 3 norm, 4 LReLU, 5 conv, 6 norm, 7 LReLU, 8 conv (stride 1),
    9 norm, 10 LReLU, 11 conv (+bias) -> logits. No sigmoid: the losses take logits.

    Args:
        in_channels: input_nc + output_nc (6 for RGB -> RGB).
        base_channels: ndf, filters of the first conv (64).
        n_layers: stride-2 convs (3 = the 70x70 PatchGAN).
        norm: "batch", "instance" or "none".
    """

    def __init__(
        self, in_channels: int = 6, base_channels: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        ndf = base_channels
        # The first conv has no norm after it, so it keeps its bias.
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):  # the last of these has stride 1 (keeps the patch grid)
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(
                    ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=bias
                ),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))  # logits
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, 1, h, w) patch logits (30x30 for 256x256, n_layers 3)."""
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: per-pixel real/fake logits, (B, in_channels, H, W) -> (B, 1, H, W).

    Args:
        in_channels: input_nc + output_nc.
        base_channels: ndf.
        norm: "batch", "instance" or "none".
    """

    def __init__(self, in_channels: int = 6, base_channels: int = 64, norm: str = "batch") -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        ndf = base_channels
        # Attribute name `net` as in the reference, so reference D files keep their keys.
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=bias),
            make_norm(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
