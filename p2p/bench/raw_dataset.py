"""`PairedImageDataset`: a map-style reader of a canonical raw dir, for the loader benchmark
(training streams shards instead: `p2p.data.dataset.make_loader`)."""

from __future__ import annotations

import random
from pathlib import Path

from p2p.config import DataConfig
from p2p.data.images import open_image
from p2p.data.manifest import load_manifest, side_channels
from p2p.errors import DataError


class PairedImageDataset:
    """Map-style dataset over a canonical raw dir: item i -> (real_a, real_b) tensors.

    `direction` is applied here: AtoB gives (A, B), BtoA gives (B, A), i.e. always
    (input, target), each (C, H, W) float32 in [-1, 1].

    Args:
        root: canonical dataset dir.
        split: "train", "val" or "test".
        data: the data config (direction, channels, preprocess sizes).
        train: random crop/flip (train) or deterministic resize (eval).
        seed: if set, item i of epoch e always gets the same crop/flip (see `set_epoch`);
            otherwise the `random` module draws them (seeded per DataLoader worker by torch).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        data: DataConfig,
        train: bool,
        *,
        seed: int | None = None,
    ) -> None:
        from p2p.data.transforms import PairedTransform  # imports torch

        self.manifest = load_manifest(root)
        self.items = self.manifest.pairs(split)
        if not self.items:
            raise DataError(f"{root}: split {split!r} has no pairs")
        self.data = data
        self.transform = PairedTransform(data, train)
        self.seed = seed
        self.epoch = 0
        self._a_nc, self._b_nc = side_channels(data)

    def set_epoch(self, epoch: int) -> None:
        """New crops/flips per epoch when a seed is set."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        p = self.items[i]
        a = open_image(p.a, name=str(p.a), channels=self._a_nc)
        b = open_image(p.b, name=str(p.b), channels=self._b_nc)
        inp, tgt = (a, b) if self.data.direction == "AtoB" else (b, a)
        rng = None if self.seed is None else random.Random(f"{self.seed}:{self.epoch}:{i}")
        return self.transform(inp, tgt, rng)
