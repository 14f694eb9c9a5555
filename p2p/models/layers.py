"""The only building blocks shared by the networks: normalisation layers and weight init.

Both follow the reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix, `networks.py`):
batch norm is affine with running statistics, instance norm is neither, and "none" is an identity
so that module indices, and therefore state_dict keys, are the same for every norm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch.nn as nn

NormFactory = Callable[[int], nn.Module]

NORMS: dict[str, NormFactory] = {
    # BatchNorm2d(eps 1e-5, momentum 0.1): at batch 1 in train mode it acts like instance norm.
    "batch": functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True),
    "instance": functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False),
    "none": lambda num_features: nn.Identity(),
}


def norm_layer(name: str) -> NormFactory:
    """Return a factory `f(num_features) -> nn.Module` for the norm called `name`.

    Args:
        name: "batch", "instance" or "none".

    Raises:
        ValueError: for an unknown name.
    """
    try:
        return NORMS[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}") from None


def conv_bias(name: str) -> bool:
    """The reference's bias rule: convs followed by a norm get a bias only for instance norm.

    Batch norm has its own shift, so a conv bias would be redundant. The reference gives no bias
    with norm "none" either (its Identity is not InstanceNorm2d); we keep that so files match.
    """
    norm_layer(name)  # validate
    return name == "instance"


_WEIGHT_INITS: dict[str, Callable[[nn.Parameter, float], object]] = {
    "normal": lambda w, gain: nn.init.normal_(w, 0.0, gain),
    "xavier": lambda w, gain: nn.init.xavier_normal_(w, gain=gain),
    "kaiming": lambda w, gain: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
    "orthogonal": lambda w, gain: nn.init.orthogonal_(w, gain=gain),
}


def init_weights(module: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear and batch-norm parameters in place, as pix2pix does.

    Conv, ConvTranspose and Linear weights follow `init_type` (normal: N(0, gain)), their biases
    are zeroed; batch-norm weights are N(1, gain) and biases 0. Instance norm here has no
    parameters. Returns `module` for chaining.

    Args:
        module: the network (all submodules are visited).
        init_type: "normal", "xavier", "kaiming" or "orthogonal".
        gain: std for normal, gain for xavier/orthogonal (unused by kaiming).
    """
    if init_type not in _WEIGHT_INITS:
        raise ValueError(
            f"unknown init_type {init_type!r}; choose one of {', '.join(_WEIGHT_INITS)}"
        )
    init_w = _WEIGHT_INITS[init_type]
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            init_w(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:  # incl. SyncBatchNorm
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
