"""ResNet generator (Johnson et al. 2016, as used by CycleGAN), the second generator family.

Same layout as the reference `ResnetGenerator` (resnet_6blocks / resnet_9blocks):

    c7s1-ngf -> d(2ngf) -> d(4ngf) -> n_blocks x R(4ngf) -> u(2ngf) -> u(ngf) -> c7s1-out -> Tanh

c7s1 = reflection pad 3 + 7x7 conv + norm + ReLU; d = 3x3 stride-2 conv; u = 3x3 stride-2
transposed conv; R = residual block of two reflection-padded 3x3 convs. Resolution drops by 4
only, so input sides must be multiples of 4. Unlike the U-Net it has no skip across scales.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from p2p.models.layers import conv_bias, norm_layer


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, ReLU, (Dropout 0.5), pad, conv3x3, norm](x); shape preserved."""

    def __init__(self, dim: int, *, norm: str = "instance", use_dropout: bool = False) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=bias),
            make_norm(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)  # (B, dim, H, W)


class ResnetGenerator(nn.Module):
    """Encoder (2 stride-2 convs), `n_blocks` residual blocks at 1/4 resolution, decoder, Tanh.

    Args:
        input_nc: input image channels.
        output_nc: output image channels.
        base_channels: ngf.
        n_blocks: residual blocks (6 for 128 px, 9 for 256 px in CycleGAN).
        norm: "instance" (CycleGAN), "batch" or "none".
        use_dropout: Dropout(0.5) inside each residual block.
    """

    n_downsampling = 2

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        base_channels: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        self.input_nc, self.output_nc = input_nc, output_nc
        self.size_multiple = 2**self.n_downsampling
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        ngf = base_channels

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=bias),
            make_norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(self.n_downsampling):  # (ngf, H) -> (2ngf, H/2) -> (4ngf, H/4)
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(c * 2),
                nn.ReLU(True),
            ]
        dim = ngf * 2**self.n_downsampling
        layers += [ResnetBlock(dim, norm=norm, use_dropout=use_dropout) for _ in range(n_blocks)]
        for i in range(self.n_downsampling):  # (4ngf, H/4) -> (2ngf, H/2) -> (ngf, H)
            c = ngf * 2 ** (self.n_downsampling - i)
            layers += [
                nn.ConvTranspose2d(
                    c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                make_norm(c // 2),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0),  # keeps its bias: no norm
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_nc, H, W) in [-1, 1] -> (B, output_nc, H, W) in [-1, 1]; H, W % 4 == 0."""
        return self.model(x)
