"""Run a generator on PIL images: the library behind `p2p predict` and evaluation samples.

Images become (C, H, W) tensors in [-1, 1] (x / 127.5 - 1, the reference's ToTensor + Normalize
(0.5, 0.5)). A generator needs sides that are multiples of its size multiple
(`p2p.architectures.size_multiple`: 2**num_downs for a U-Net, 4 for a ResNet); other sizes are
resized (bicubic) to the nearest valid size for the network and the result is resized back,
with a log message. Images of the same network size are batched together.

Two inference modes (`eval.inference_mode`, recorded on every registered version):

    paper  the paper's test-time setting and the reference test.py's default (no --eval): the
           generator runs as in training, dropout on and batch norm on the batch's own
           statistics. Images run one at a time, so with batch norm each image is normalised
           with its own mean and variance (the statistics of a batch of 1 are that image's
           instance statistics) and its output never depends on the other images of a request.
           Dropout makes it stochastic; with a seed it is reproducible: the dropout mask is a
           counter-based hash of (seed, layer, channel, row, column) (`seeded_dropout`, the same
           Bernoulli(1 - p) keep / scale by 1 / (1 - p) as torch's dropout), so the same image
           and seed give the same output on any device, in torch and in the ONNX export alike.
           The BN running statistics are restored afterwards.
    eval   running statistics, no dropout (`model.eval()`, the reference's --eval):
           deterministic, batched.

The same weights give different images in the two modes; `p2p evaluate` scores both on val.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from p2p.architectures import size_multiple
from p2p.checkpoints import unwrap
from p2p.config import ExperimentConfig
from p2p.data.images import to_channels
from p2p.errors import P2PError

log = logging.getLogger(__name__)

MODES = ("paper", "eval")  # eval.inference_mode values
DEFAULT_SEED = 0  # paper mode's dropout seed in evaluate, predict and serving unless one is given


def check_mode(mode: str, where: str = "inference mode") -> str:
    """`mode` if it is one of MODES, else a P2PError naming `where`."""
    if mode not in MODES:
        raise P2PError(f"{where}: {mode!r} is not one of {', '.join(MODES)}")
    return mode


def mode_of(cfg: ExperimentConfig | None) -> str:
    """The inference mode a model records (`eval.inference_mode`); "paper" without a config
    (a reference `latest_net_G.pth`: the reference's test.py default)."""
    return cfg.eval.inference_mode if cfg is not None else "paper"


@contextlib.contextmanager
def inference_mode(g: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Run `g` in `mode` inside the block; its training flag and BN buffers are restored after
    (paper mode updates the running statistics, which must not leak into the model)."""
    check_mode(mode)
    was_training = g.training
    saved = {k: b.clone() for k, b in g.named_buffers()} if mode == "paper" else None
    g.train(mode == "paper")
    try:
        yield g
    finally:
        g.train(was_training)
        if saved is not None:
            with torch.no_grad():
                for k, b in g.named_buffers():
                    b.copy_(saved[k])


HASH_PRIME = 2_147_483_647  # 2**31 - 1: every product below stays under 2**63 (exact int64)


def seeded_dropout(x: torch.Tensor, seed: torch.Tensor, layer: int, p: float) -> torch.Tensor:
    """Dropout of `x` (N, C, H, W) with a mask that is a function of (seed, layer, position):
    each unit is kept with probability 1 - p and scaled by 1 / (1 - p), as torch's dropout, but
    the mask comes from integer arithmetic only (a few rounds of squaring mod a prime), so it
    is identical on CPU, GPU and in onnxruntime. Every image of the batch gets the same mask.

    Args:
        seed: int64 scalar tensor in [0, HASH_PRIME).
        layer: the dropout layer's index in the network (layers get different masks).
    """
    idx = torch.ones_like(x[:1], dtype=torch.int64).flatten(1).cumsum(1) - 1  # 0..C*H*W-1
    h = (idx * 1_640_531_527 + seed * 97_531 + (layer + 1) * 1_000_003) % HASH_PRIME
    for _ in range(3):
        h = (h * h + 12_345) % HASH_PRIME
        h = (h * 48_271) % HASH_PRIME
    keep = (h >= int(p * HASH_PRIME)).to(x.dtype).reshape_as(x[:1])
    return x * keep * (1.0 / (1.0 - p))


def dropout_layers(g: nn.Module) -> list[nn.Dropout]:
    """The generator's dropout modules in definition order (their `layer` index)."""
    return [m for m in unwrap(g).modules() if isinstance(m, nn.Dropout)]


@contextlib.contextmanager
def dropout_seed(g: nn.Module, seed: int | None) -> Iterator[None]:
    """Inside the block, every dropout layer of `g` applies `seeded_dropout(seed)` (whatever
    the module's train flag; eval mode is set back after). `seed=None`: a fresh seed drawn
    from torch's global RNG."""
    if seed is None:
        seed = int(torch.randint(0, HASH_PRIME, ()))
    drops = dropout_layers(g)
    device = next(unwrap(g).parameters()).device
    s = torch.tensor(int(seed) % HASH_PRIME, dtype=torch.int64, device=device)
    handles, flags = [], [m.training for m in drops]

    def hook(layer: int):
        return lambda m, inp, out: seeded_dropout(inp[0], s, layer, m.p)

    for layer, m in enumerate(drops):
        m.eval()  # identity: the hook applies the seeded mask instead
        handles.append(m.register_forward_hook(hook(layer)))
    try:
        yield
    finally:
        for h, m, f in zip(handles, drops, flags, strict=True):
            h.remove()
            m.train(f)


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
        from_cfg = (cfg.data.input_nc, cfg.data.output_nc, size_multiple(cfg.model))
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
    mode: str | None = None,
    seed: int | None = DEFAULT_SEED,
    batch_size: int = 8,
    names: list[str] | None = None,
) -> list[Image.Image]:
    """Translate images with generator `g`; outputs have the input sizes.

    Args:
        g: the generator (on any device; inputs follow it).
        images: PIL images (converted to the network's input channels per p2p.data.images).
        cfg: the run config; optional when `g` carries input_nc/output_nc/size_multiple.
        mode: "paper" or "eval" (module docstring); default `mode_of(cfg)`.
        seed: paper mode: every image runs under `dropout_seed(g, seed)`, so the same image and
            seed give the same output whatever the other images are (default DEFAULT_SEED, the
            seed `p2p evaluate` scores with); None: a fresh seed per image from the global RNG.
            Eval mode ignores it.
        batch_size: images per forward pass in eval mode (paper mode uses 1).
        names: names for messages and errors (default "image <i>").

    Returns:
        One "RGB" (output_nc 3) or "L" (output_nc 1) image per input, in order.
    """
    mode = check_mode(mode or mode_of(cfg))
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

    outputs: list[Image.Image | None] = [None] * len(images)
    paper = mode == "paper"
    step = 1 if paper else max(1, batch_size)
    with inference_mode(g, mode), torch.no_grad():
        for (w, h), idx in groups.items():
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                x = torch.stack([_resize(tensors[i], (w, h)) for i in chunk]).to(device)
                with dropout_seed(g, seed) if paper else contextlib.nullcontext():
                    y = g(x).float().cpu()  # (b, output_nc, h, w) in [-1, 1]
                for i, yi in zip(chunk, y, strict=True):
                    outputs[i] = tensor_to_image(_resize(yi, images[i].size))
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


def load_model(checkpoint: str | None, model_uri: str | None, device: str):
    """(generator, its config or None) from a checkpoint file (p2p's or a reference
    `latest_net_G.pth`: config None) or a registered model URI (`models:/NAME@alias`); the one
    loading path of `p2p predict`, single-process and batch."""
    from p2p.checkpoints import load_generator, read_generator_config

    if checkpoint:  # translate() sets the mode
        return load_generator(checkpoint, device=device), read_generator_config(checkpoint)
    from p2p.registry import load_registered_generator

    return load_registered_generator(model_uri, device=device)
