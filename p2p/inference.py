"""Run a generator on PIL images: the library behind `p2p predict` and evaluation samples.

Images become (C, H, W) tensors in [-1, 1] (x / 127.5 - 1, the reference's ToTensor + Normalize
(0.5, 0.5)). A U-Net needs sides that are multiples of 2**num_downs (a ResNet: of 4); other sizes
are resized (bicubic) to the nearest valid size for the network and the result is resized back,
with a log message. Images of the same network size are batched together.

Eval mode (running BN statistics, no dropout) is the default. `train_mode=True` is the paper's
test-time setting: dropout on and batch statistics of each image (batch 1, as the reference's
test.py without --eval), so outputs are stochastic. The BN running statistics are restored after.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from p2p.checkpoints import unwrap
from p2p.config import ExperimentConfig
from p2p.data.images import to_channels

log = logging.getLogger(__name__)


def image_to_tensor(img: Image.Image, channels: int, name: str = "image") -> torch.Tensor:
    """PIL image -> (channels, H, W) float32 in [-1, 1]; channel policy of p2p.data.images."""
    img = to_channels(img, name=name, channels=channels)
    arr = np.asarray(img, dtype=np.float32)  # (H, W) or (H, W, 3), 0..255
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def tensor_to_image(t: torch.Tensor) -> Image.Image:
    """(C, H, W) tensor in [-1, 1] (C = 1 or 3) -> PIL "L" or "RGB" image (rounded to uint8)."""
    arr = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)), mode="RGB")


def network_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The nearest (w, h) whose sides are positive multiples of `multiple`."""
    return tuple(max(multiple, int(s / multiple + 0.5) * multiple) for s in size)  # type: ignore[return-value]


def geometry(g: nn.Module, cfg: ExperimentConfig | None = None) -> tuple[int, int, int]:
    """(input_nc, output_nc, size multiple) of a generator, from the module or from `cfg`."""
    base = unwrap(g)
    from_module = None
    if all(hasattr(base, a) for a in ("input_nc", "output_nc", "size_multiple")):
        from_module = (base.input_nc, base.output_nc, base.size_multiple)
    from_cfg = None
    if cfg is not None:
        m = cfg.model
        multiple = 2**m.num_downs if m.generator == "unet" else 4
        from_cfg = (cfg.data.input_nc, cfg.data.output_nc, multiple)
    if from_module and from_cfg and from_module != from_cfg:
        raise ValueError(
            f"generator (in, out, size multiple) {from_module} does not match the config {from_cfg}"
        )
    if not (from_module or from_cfg):
        raise ValueError("cannot tell the generator's channels and size multiple: pass cfg")
    return from_module or from_cfg  # type: ignore[return-value]


def translate(
    g: nn.Module,
    images: list[Image.Image],
    cfg: ExperimentConfig | None = None,
    *,
    train_mode: bool = False,
    batch_size: int = 8,
    names: list[str] | None = None,
) -> list[Image.Image]:
    """Translate images with generator `g`; outputs have the input sizes.

    Args:
        g: the generator (on any device; inputs follow it).
        images: PIL images (converted to the network's input channels per p2p.data.images).
        cfg: the run config; optional when `g` carries input_nc/output_nc/size_multiple.
        train_mode: keep dropout and per-image batch statistics on (the paper's noise).
        batch_size: images per forward pass in eval mode (train mode uses 1).
        names: names for messages and errors (default "image <i>").

    Returns:
        One "RGB" (output_nc 3) or "L" (output_nc 1) image per input, in order.
    """
    in_nc, _, multiple = geometry(g, cfg)
    names = names or [f"image {i}" for i in range(len(images))]
    device = next(unwrap(g).parameters()).device
    tensors = [image_to_tensor(img, in_nc, name) for img, name in zip(images, names, strict=True)]

    groups: dict[tuple[int, int], list[int]] = defaultdict(list)  # network size -> indices
    for i, (img, name) in enumerate(zip(images, names, strict=True)):
        size = network_size(img.size, multiple)
        if size != img.size:
            log.info(
                "%s: %dx%d is not a multiple of %d; resized to %dx%d for the network, "
                "output resized back",
                name,
                *img.size,
                multiple,
                *size,
            )
        groups[size].append(i)

    was_training = g.training
    saved = {k: b.clone() for k, b in g.named_buffers()}  # BN stats change in train mode
    g.train(train_mode)
    outputs: list[Image.Image | None] = [None] * len(images)
    step = 1 if train_mode else max(1, batch_size)
    try:
        with torch.no_grad():
            for (w, h), idx in groups.items():
                for start in range(0, len(idx), step):
                    chunk = idx[start : start + step]
                    x = torch.stack([_resize(tensors[i], (w, h)) for i in chunk]).to(device)
                    y = g(x).float().cpu()  # (b, output_nc, h, w) in [-1, 1]
                    for i, yi in zip(chunk, y, strict=True):
                        outputs[i] = tensor_to_image(_resize(yi, images[i].size))
    finally:
        g.train(was_training)
        for k, b in g.named_buffers():
            b.copy_(saved[k])
    return outputs  # type: ignore[return-value]


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) -> (C, size[1], size[0]) bicubic (clamped to [-1, 1]); no-op at that size."""
    w, h = size
    if t.shape[-2:] == (h, w):
        return t
    out = torch.nn.functional.interpolate(
        t[None].float(), size=(h, w), mode="bicubic", align_corners=False, antialias=True
    )
    return out[0].clamp(-1, 1)
