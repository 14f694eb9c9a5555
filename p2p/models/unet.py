"""The pix2pix U-Net generator (Isola et al. 2017, appendix 6.1.1), layer for layer as in the
reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix `UnetGenerator`).

The net is built recursively: each `UnetSkipBlock` halves the resolution with a 4x4 stride-2 conv,
runs its child block, doubles the resolution back with a 4x4 stride-2 transposed conv and
concatenates its (activated) input as the skip connection. unet_256 (num_downs 8, ngf 64):

    depth   down conv (out ch)   map after down   up conv (in -> out)   dropout
    0       3   -> 64            128              128  -> 3, Tanh       -
    1       64  -> 128           64               256  -> 64            -
    2       128 -> 256           32               512  -> 128           -
    3       256 -> 512           16               1024 -> 256           -
    4..6    512 -> 512           8, 4, 2          1024 -> 512           0.5 (on 16, 8, 4 maps)
    7       512 -> 512           1 (bottleneck)   512  -> 512           -

Module names are the reference's (`model` Sequentials nested through index 1 or 3), so a reference
`latest_net_G.pth` state_dict loads into `UnetGenerator` without any key mapping.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from p2p.models.layers import UpConv, conv_bias, norm_layer


class UnetSkipBlock(nn.Module):
    """One U-Net level: down -> child -> up, with a skip connection around it.

    Layer indices inside `self.model` (they are the state_dict key indices):
      outermost: 0 conv, 1 child, 2 ReLU, 3 convT (+bias), 4 Tanh
      middle:    0 LReLU, 1 conv, 2 norm, 3 child, 4 ReLU, 5 convT, 6 norm, [7 Dropout]
      innermost: 0 LReLU, 1 conv, 2 ReLU, 3 convT, 4 norm

    Args:
        outer_nc: channels this block returns to its parent (before the skip concat).
        inner_nc: channels of its down conv output.
        input_nc: channels of its input; defaults to outer_nc (differs only for the outermost).
        submodule: the child block, None for the innermost.
        outermost: no activation before the down conv, no norm after it, Tanh at the end, no skip.
        innermost: no norm after the down conv (the 1x1 bottleneck), no child.
        norm: "batch", "instance" or "none".
        use_dropout: Dropout(0.5) after the up conv's norm.
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        *,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        if (submodule is None) != innermost:
            raise ValueError("exactly the innermost block has no submodule")
        self.outermost = outermost
        make_norm = norm_layer(norm)
        bias = conv_bias(norm)  # no conv bias in front of batch norm (nor, as upstream, with none)
        input_nc = outer_nc if input_nc is None else input_nc

        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        up_in = inner_nc if innermost else inner_nc * 2  # children return cat([skip, up])
        if outermost:
            # The last layer keeps its bias (no norm follows) and Tanh maps to the [-1, 1] range.
            up_conv = UpConv(up_in, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [down_conv]
            up = [nn.ReLU(True), up_conv, nn.Tanh()]
        else:
            up_conv = UpConv(up_in, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            down = [nn.LeakyReLU(0.2, True), down_conv]
            if not innermost:
                down.append(make_norm(inner_nc))  # no norm on the 1x1 bottleneck
            up = [nn.ReLU(True), up_conv, make_norm(outer_nc)]
            if use_dropout:
                up.append(nn.Dropout(0.5))
        middle = [] if submodule is None else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)  # (B, output_nc, H, W)
        # The reference's first LeakyReLU is in place, so its skip carries lrelu(x), not x. We
        # pass that tensor to both branches explicitly. (It changes no numbers: the parent's
        # first op on the concat is ReLU, and relu(lrelu(x)) == relu(x).)
        h = self.model[0](x)  # (B, C, H, W)
        y = h
        for layer in itertools.islice(self.model, 1, None):
            y = layer(y)  # ends at (B, outer_nc, H, W)
        return torch.cat([h, y], dim=1)  # (B, C + outer_nc, H, W)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: `num_downs` nested skip blocks; input sides must be multiples of 2**num_downs.

    Encoder channels are ngf * (1, 2, 4, 8, 8, ...). As in the reference, dropout sits in the
    blocks whose in and out both have 8*ngf channels, below depth 3 and above the innermost:
    num_downs - 5 blocks (3 for unet_256, 2 for unet_128, none below 6 levels).

    Args:
        input_nc: input image channels.
        output_nc: output image channels.
        num_downs: number of stride-2 downsamplings (8 = unet_256, 7 = unet_128).
        base_channels: ngf, filters of the first conv.
        norm: "batch" (pix2pix), "instance" or "none".
        use_dropout: the paper's noise; no parameters, so it does not change the state_dict.
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        num_downs: int = 8,
        base_channels: int = 64,
        norm: str = "batch",
        use_dropout: bool = True,
    ) -> None:
        super().__init__()
        if num_downs < 1:
            raise ValueError(f"num_downs must be >= 1, got {num_downs}")
        if min(input_nc, output_nc, base_channels) < 1:
            raise ValueError("input_nc, output_nc and base_channels must be >= 1")
        self.input_nc, self.output_nc = input_nc, output_nc
        self.num_downs, self.base_channels = num_downs, base_channels
        self.norm, self.use_dropout = norm, use_dropout
        self.size_multiple = 2**num_downs  # H and W must divide by this

        def ch(depth: int) -> int:  # down-conv output channels at a depth
            return base_channels * min(2**depth, 8)

        block = None
        for depth in reversed(range(num_downs)):  # built from the bottleneck outwards
            block = UnetSkipBlock(
                output_nc if depth == 0 else ch(depth - 1),
                ch(depth),
                input_nc=input_nc if depth == 0 else None,
                submodule=block,
                outermost=depth == 0,
                innermost=depth == num_downs - 1,
                norm=norm,
                use_dropout=use_dropout and 4 <= depth < num_downs - 1,
            )
        self.model = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_nc, H, W) in [-1, 1] -> (B, output_nc, H, W) in [-1, 1]."""
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"U-Net with num_downs={self.num_downs} needs H and W divisible by {m}, "
                f"got {tuple(x.shape[-2:])}"
            )
        return self.model(x)
