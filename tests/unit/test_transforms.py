"""PairedTransform: input and target stay pixel-aligned through resize, crop and flip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from data_fixtures import noise
from PIL import Image

from p2p.config import DataConfig
from p2p.data.transforms import PairedTransform
from p2p.errors import DataError

# One bicubic rounding step in [-1, 1] units: resize(255 - x) and 255 - resize(x) may differ
# by one grey level after rounding.
TOL = 1.0 / 127.5 + 1e-6


def _pair(h: int = 40, w: int = 48, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    a = noise(h, w, seed)
    return Image.fromarray(a), Image.fromarray(255 - a)  # target = f(input) pixel-wise


@pytest.mark.parametrize("preprocess", ["resize_and_crop", "crop", "resize", "none"])
def test_target_stays_aligned_through_crop_and_flip(preprocess):
    data = DataConfig(load_size=36, crop_size=32, preprocess=preprocess, flip=True)
    t = PairedTransform(data, train=True)
    inp, tgt = _pair()
    outputs = set()
    for seed in range(40):
        x, y = t(inp, tgt, random.Random(seed))
        assert x.dtype == torch.float32 and x.shape == y.shape
        assert x.min() >= -1 and x.max() <= 1
        # 255 - v maps to -(v / 127.5 - 1): aligned iff target == -input everywhere
        assert (x + y).abs().max() <= TOL, f"misaligned at seed {seed}"
        outputs.add(x.numpy().tobytes())
    # the randomness is real (different crops/flips), so the alignment check had teeth
    assert len(outputs) > (1 if preprocess in ("resize", "none") else 10)


def test_misaligned_flip_would_be_detected():
    # Sanity of the test above: flipping only the target breaks target == -input.
    inp, tgt = _pair()
    x = PairedTransform(DataConfig(preprocess="resize", crop_size=32), train=False)(inp, tgt)[0]
    y_flipped = -torch.flip(x, dims=[2])
    assert (x + y_flipped).abs().max() > 0.5


def test_flip_and_crop_positions_follow_rng():
    data = DataConfig(load_size=32, crop_size=32, preprocess="resize", flip=True)
    inp, tgt = _pair()
    base = PairedTransform(data, train=False)(inp, tgt)[0]  # resize to 32, no flip
    t = PairedTransform(data, train=True)
    seen = {"plain": 0, "flipped": 0}
    for seed in range(30):
        x, _ = t(inp, tgt, random.Random(seed))
        if torch.equal(x, base):
            seen["plain"] += 1
        elif torch.equal(x, torch.flip(base, dims=[2])):
            seen["flipped"] += 1
        else:
            raise AssertionError("output is neither the image nor its mirror")
    assert seen["plain"] > 5 and seen["flipped"] > 5
    # no flip when data.flip is false
    t2 = PairedTransform(
        DataConfig(preprocess="resize", load_size=32, crop_size=32, flip=False), train=True
    )
    assert all(torch.equal(t2(inp, tgt, random.Random(s))[0], base) for s in range(10))


def test_resize_mode_trains_at_load_size_like_the_reference():
    """The reference's `preprocess: resize` resizes to load_size (not crop_size) for training;
    evaluation resizes to crop_size (the reference's test default load_size = crop_size)."""
    data = DataConfig(load_size=36, crop_size=32, preprocess="resize", flip=False)
    inp, tgt = _pair(50, 70)
    x, y = PairedTransform(data, train=True)(inp, tgt, random.Random(0))
    assert x.shape == (3, 36, 36) and (x + y).abs().max() <= TOL
    expected = np.asarray(inp.resize((36, 36), Image.Resampling.BICUBIC), dtype=np.float32)
    assert torch.allclose(x, torch.from_numpy(expected.transpose(2, 0, 1) / 127.5 - 1))
    assert PairedTransform(data, train=False)(inp, tgt)[0].shape == (3, 32, 32)


def test_crop_mode_crops_the_original_pixels():
    data = DataConfig(crop_size=32, preprocess="crop", flip=False)
    a = noise(40, 48, seed=3)
    x, _ = PairedTransform(data, train=True)(
        Image.fromarray(a), Image.fromarray(a), random.Random(7)
    )
    img = ((x.numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
    hits = [
        (i, j)
        for i in range(40 - 32 + 1)
        for j in range(48 - 32 + 1)
        if np.array_equal(a[i : i + 32, j : j + 32], img)
    ]
    assert len(hits) == 1


def test_same_rng_same_output():
    data = DataConfig(load_size=36, crop_size=32)
    t = PairedTransform(data, train=True)
    inp, tgt = _pair()
    a = t(inp, tgt, random.Random(5))
    b = t(inp, tgt, random.Random(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_eval_is_deterministic_resize_to_crop_size():
    data = DataConfig(load_size=286, crop_size=32)
    t = PairedTransform(data, train=False)
    inp, tgt = _pair(50, 70)
    x1, y1 = t(inp, tgt, random.Random(1))
    x2, _ = t(inp, tgt, random.Random(2))
    assert x1.shape == (3, 32, 32) and torch.equal(x1, x2)
    assert (x1 + y1).abs().max() <= TOL
    expected = np.asarray(inp.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
    assert torch.allclose(x1, torch.from_numpy(expected.transpose(2, 0, 1) / 127.5 - 1))


def test_value_range_and_grayscale_channels():
    data = DataConfig(input_nc=1, output_nc=3, crop_size=8, load_size=8, flip=False)
    inp = Image.fromarray(np.array([[0, 255] * 4] * 8, dtype=np.uint8))  # (8, 8) L
    tgt = Image.fromarray(noise(8, 8, seed=1))
    x, y = PairedTransform(data, train=True)(inp, tgt, random.Random(0))
    assert x.shape == (1, 8, 8) and y.shape == (3, 8, 8)
    assert x[0, 0, 0] == -1.0 and x[0, 0, 1] == 1.0


def test_none_mode_rounds_to_multiple_of_4():
    data = DataConfig(preprocess="none", flip=False)
    x, _ = PairedTransform(data, train=True)(*_pair(30, 45))
    assert x.shape == (3, 32, 44)


def test_errors():
    data = DataConfig(load_size=36, crop_size=32)
    t = PairedTransform(data, train=True)
    a = Image.fromarray(noise(40, 40, seed=1))
    with pytest.raises(DataError, match="input is 40x40 but target is 40x41"):
        t(a, Image.fromarray(noise(41, 40, seed=1)))
    with pytest.raises(DataError, match="input image has 1 channel"):
        t(a.convert("L"), a)
    small = Image.fromarray(noise(20, 20, seed=1))
    with pytest.raises(DataError, match="smaller than data.crop_size 32"):
        PairedTransform(DataConfig(crop_size=32, preprocess="crop"), train=True)(small, small)
