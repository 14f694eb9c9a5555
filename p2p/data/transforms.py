"""PairedTransform: the pix2pix preprocessing, applied identically to input and target.

pix2pix's key data invariant: input and target stay pixel-aligned, so every random choice
(crop position, flip) is drawn ONCE per pair and applied to both images. Train mode follows the
reference `resize_and_crop`: bicubic resize to load_size x load_size, a random crop_size crop,
a random horizontal flip (p = 0.5), then [0, 255] -> [-1, 1]. Eval mode is deterministic.

Modes (data.preprocess), train, as the reference's get_transform:
    resize_and_crop: resize to load_size, random crop to crop_size (the paper's jitter)
    crop:            random crop to crop_size from the original size (no resize)
    resize:          resize to load_size (no crop). Set load_size = crop_size unless you mean
                     to train at another size: the generator must take load_size (a multiple
                     of 2**num_downs for the U-Net), e.g. load_size 256 for unet_256
    none:            keep the size, rounded to a multiple of 4 by bicubic resize (the reference)
Eval: resize to crop_size ("none": rounded to a multiple of 4 only); never flipped. This is the
reference's test setting too: its test options default load_size to crop_size.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from p2p.config import DataConfig
from p2p.errors import DataError


class PairedTransform:
    """Callable `(inp, tgt, rng) -> (inp_tensor, tgt_tensor)`, both (C, H, W) float32 in [-1, 1].

    Args:
        data: the data config (preprocess, load_size, crop_size, flip, input_nc, output_nc).
        train: random crop + flip (train) or deterministic resize (eval).
    """

    def __init__(self, data: DataConfig, train: bool) -> None:
        self.data = data
        self.train = train

    def __call__(
        self, inp: Image.Image, tgt: Image.Image, rng: random.Random | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform one pair. `rng` draws the crop and flip; default: the `random` module."""
        d = self.data
        rng = rng if rng is not None else random  # DataLoader seeds `random` per worker
        if inp.size != tgt.size:
            raise DataError(f"input is {_wh(inp)} but target is {_wh(tgt)}: a pair must match")
        _check_channels(inp, d.input_nc, "input", "data.input_nc")
        _check_channels(tgt, d.output_nc, "target", "data.output_nc")

        mode = d.preprocess
        if not self.train:  # eval: one fixed size, no randomness
            size = _round4(inp.size) if mode == "none" else (d.crop_size, d.crop_size)
            return _to_tensor(_resize(inp, size)), _to_tensor(_resize(tgt, size))

        # 1) resize (shared size)
        if mode in ("resize_and_crop", "resize"):
            size = (d.load_size, d.load_size)
        elif mode == "none":
            size = _round4(inp.size)
        else:  # "crop": original size
            size = inp.size
        inp, tgt = _resize(inp, size), _resize(tgt, size)

        # 2) one random crop position for both
        if mode in ("resize_and_crop", "crop"):
            w, h = inp.size
            c = d.crop_size
            if w < c or h < c:
                raise DataError(
                    f"image is {w}x{h}, smaller than data.crop_size {c} (preprocess={mode})"
                )
            x, y = rng.randint(0, w - c), rng.randint(0, h - c)
            box = (x, y, x + c, y + c)
            inp, tgt = inp.crop(box), tgt.crop(box)

        # 3) one flip decision for both
        if d.flip and rng.random() < 0.5:
            inp = inp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            tgt = tgt.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _to_tensor(inp), _to_tensor(tgt)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL (H, W) or (H, W, C) uint8 -> (C, H, W) float32 in [-1, 1] (ToTensor + Normalize 0.5)."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W) -> (H, W, 1)
    arr = arr / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)


def _round4(size: tuple[int, int]) -> tuple[int, int]:
    # The reference's "none" mode makes sides a multiple of 4 (U-Net downsampling needs it).
    return tuple(max(4, int(round(s / 4)) * 4) for s in size)


def _check_channels(img: Image.Image, expected: int, what: str, key: str) -> None:
    got = len(img.getbands())
    if got != expected:
        raise DataError(f"{what} image has {got} channel(s) but {key} is {expected}")


def _wh(img: Image.Image) -> str:
    return f"{img.size[0]}x{img.size[1]}"
