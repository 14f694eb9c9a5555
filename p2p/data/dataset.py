"""Streaming loader over WebDataset shards with equal batches on every rank.

`make_loader(shards, split, data, batch_size=..., rank=r, world_size=n)` streams the tars of
one split (local dir or s3://, through p2p.data.storage: no shell pipes), decodes with
`open_image`, applies `PairedTransform`, and yields `(real_a, real_b)` batches of shape
(B, C, H, W), exactly `num_batches` per rank per epoch.

How samples are assigned (why every rank gets the same number of batches):

The index (index.json) knows how many samples each shard holds, so the loader splits the
epoch at the SAMPLE level instead of handing whole shards to ranks (`split_by_node`), which is
what makes uneven shards hang DDP. An epoch is a virtual stream of positions g = 0, 1, ...:

    stream   = passes ("cycles") over the split, as many as the requested batches need:
               each is the split's shards concatenated (train: in an order shuffled with
               (seed, epoch, cycle) and rotated by a random offset; eval: index order), so
               the first N positions visit each of the N samples exactly once
    rank r   = positions [r * B, (r + 1) * B), B = num_batches * batch_size
    worker w = train: a contiguous run of the rank's batches (each worker streams only its
               part of the data); eval: batches w, w + W, ... so the DataLoader's round-robin
               over workers returns the rank's batches in stream order whatever W is

Each (rank, worker) opens just the shards its positions fall in and streams them, skipping the
samples before its first position. Consequences:
- equal batch counts by construction, for any shard sizes, any world size and any number of
  loader workers, including fewer shards than ranks x workers (workers share shards);
- train: every sample at most once per epoch when num_batches <= N // (batch_size * world),
  the default (the remainder is dropped, a different one each epoch thanks to the rotation);
  more batches than that wrap around into the next cycle (`loader.dataset.padded` counts them);
  the order mixes shard order, the write-time hash order and a shuffle buffer
  (data.shuffle_buffer samples per worker); the crop/flip of position g is drawn from
  Random((seed, epoch, g)), so an epoch is fully determined by (seed, epoch, rank) and
  world size, whatever the number of loader workers (which only changes batch composition
  through the per-worker shuffle buffer);
- eval: deterministic order, default num_batches = ceil(N / (batch_size * world)) so every
  sample is seen once; the last batch(es) are padded by wrapping around to the first samples
  (all padding sits at the end of the last ranks: `loader.dataset.padded` says how many
  samples of this rank are repeats, so metrics can drop them).

Why not WebDataset's usual fix (resampled shards + a fixed epoch length): sampling shards
with replacement repeats some samples and skips others within an epoch, cannot give an exact
eval pass, and with few shards many workers read the same shard in parallel. The per-shard
counts in index.json make an exact, deterministic split cheap; the price is that a worker
streams (without decoding) the samples before its first position in its first shard, and
after its last position in its last shard: every shard is read to its end, so that its sha256,
size and sample count are checked against index.json (`iter_tar_samples`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from p2p.config import DataConfig
from p2p.data.images import open_image
from p2p.data.shard_read import (
    DEFAULT_MAX_MEMBER,
    Sample,
    iter_tar_samples,
    register_webdataset_s3,
)
from p2p.data.shards import ShardIndex, read_index, shard_urls
from p2p.data.transforms import PairedTransform
from p2p.errors import DataError, P2PError

# the shard reader lives in p2p.data.shard_read; its names stay importable from here
__all__ = [
    "DEFAULT_MAX_MEMBER",
    "Sample",
    "ShardLoader",
    "ShardStream",
    "iter_tar_samples",
    "make_loader",
    "register_webdataset_s3",
]

log = logging.getLogger(__name__)


def make_loader(
    shards_url: str | os.PathLike,
    split: str,
    data: DataConfig,
    *,
    num_workers: int | None = None,
    **stream: Any,
) -> DataLoader:
    """A DataLoader yielding `(real_a, real_b)` float32 batches (B, C, H, W) in [-1, 1].

    Args:
        shards_url: shard set (dir or s3://bucket/prefix) written by `write_shards`.
        split: "train", "val" or "test".
        data: data config (channels, transform sizes, loader_workers, shuffle_buffer).
        num_workers: DataLoader processes (default data.loader_workers).
        stream: `ShardStream`'s keyword arguments (batch_size required; rank, world_size,
            train, seed, epoch, num_batches, index).

    `loader.dataset.set_epoch(e)` re-plans the loader for another epoch (or build a new one).
    """
    ds = ShardStream(shards_url, split, data, **stream)
    workers = data.loader_workers if num_workers is None else num_workers
    return ShardLoader(
        ds,
        batch_size=None,  # the dataset yields whole batches
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers > 0 else None,
    )


class ShardStream(IterableDataset):
    """The iterable behind `make_loader` (see the module docstring for the assignment).

    Args:
        shards_url, split, data: as `make_loader`.
        batch_size: samples per batch on this rank (the per-worker batch in DDP).
        rank, world_size: this process's place among the data-parallel workers.
        train: random crop/flip + shuffling (train) or deterministic resize and order (eval).
        seed, epoch: the epoch's order and augmentations are a function of (seed, epoch).
        num_batches: batches per rank this epoch (default: train N // (batch_size * world),
            at least 1; eval ceil(N / (batch_size * world))).
        index: the shard set's index when the caller already read it (else read here).
    """

    def __init__(
        self,
        shards_url: str | os.PathLike,
        split: str,
        data: DataConfig,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        seed: int = 0,
        epoch: int = 0,
        num_batches: int | None = None,
        index: ShardIndex | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size/rank/world_size: {batch_size}/{rank}/{world_size}")
        self.url = str(shards_url)
        index = index if index is not None else read_index(self.url)
        self.urls = shard_urls(self.url, split, index)
        self.shards = index.split(split, self.url).shards
        self.counts = [s.samples for s in self.shards]
        self.num_samples = sum(self.counts)
        if self.num_samples == 0:
            raise DataError(f"{self.url}: split {split!r} has no samples")
        self.split, self.data, self.train, self.seed = split, data, train, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        per_step = batch_size * world_size
        if num_batches is None:
            n = self.num_samples
            num_batches = max(1, n // per_step) if train else math.ceil(n / per_step)
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self.num_batches = num_batches
        self.transform = PairedTransform(data, train)
        self.set_epoch(epoch)

    # -- planning ---------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Plan another epoch: new shard order, rotation and crops (train)."""
        self.epoch = epoch
        self._cycles: dict[int, tuple[list[int], list[int], int]] = {}
        start = self.rank * self.num_batches * self.batch_size
        end = start + self.num_batches * self.batch_size
        # positions of this rank past the first pass (wrap-around repeats / eval padding)
        self.padded = max(0, end - max(start, self.num_samples))

    def __len__(self) -> int:
        return self.num_batches

    def _cycle(self, cycle: int) -> tuple[list[int], list[int], int]:
        """(shard order, cumulative sample counts, rotation) of one pass over the split."""
        if cycle not in self._cycles:
            order = list(range(len(self.urls)))
            offset = 0
            if self.train:
                rng = random.Random(f"{self.seed}:{self.epoch}:{cycle}:order")
                rng.shuffle(order)
                offset = rng.randrange(self.num_samples)
            cum = [0]
            for k in order:
                cum.append(cum[-1] + self.counts[k])
            self._cycles[cycle] = (order, cum, offset)
        return self._cycles[cycle]

    def locate(self, g: int) -> tuple[int, int, int]:
        """Stream position -> (cycle, shard number in the index, sample number in the shard).

        Each cycle is one full pass: its shards in their order, rotated by its offset.
        """
        cycle, p = divmod(g, self.num_samples)
        order, cum, offset = self._cycle(cycle)
        p = (p + offset) % self.num_samples
        k = bisect.bisect_right(cum, p) - 1
        return cycle, order[k], p - cum[k]

    def worker_batches(self, worker: int, num_workers: int) -> list[int]:
        """The rank's batch numbers this loader worker produces."""
        nb = self.num_batches
        if not self.train:
            return list(range(worker, nb, num_workers))
        per, extra = divmod(nb, num_workers)
        lo = worker * per + min(worker, extra)
        return list(range(lo, lo + per + (worker < extra)))

    def positions(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """Stream positions this (rank, worker) reads, in order."""
        base = self.rank * self.num_batches * self.batch_size
        bs = self.batch_size
        return [
            base + b * bs + i for b in self.worker_batches(worker, num_workers) for i in range(bs)
        ]

    # -- reading ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        if info is None:  # the main process: errors propagate as they are
            yield from self._batches(0, 1)
            return
        # A loader worker: torch would re-raise an error here in the main process as a
        # multi-line "Caught DataError in DataLoader worker ... Original Traceback"; send it
        # as an item instead, which ShardLoader raises as the original one-line error.
        try:
            yield from self._batches(info.id, info.num_workers)
        except P2PError as e:
            yield _WorkerError(e)

    def _batches(
        self, worker: int, num_workers: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples = self._read(self.positions(worker, num_workers))
        if self.train and self.data.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}:buffer")
            samples = _shuffle(samples, self.data.shuffle_buffer, rng)
        batch_a: list[torch.Tensor] = []
        batch_b: list[torch.Tensor] = []
        for g, url, sample in samples:
            a, b = self._decode(g, url, sample)
            batch_a.append(a)
            batch_b.append(b)
            if len(batch_a) == self.batch_size:
                yield torch.stack(batch_a), torch.stack(batch_b)  # (B, C, H, W) each
                batch_a, batch_b = [], []
        assert not batch_a, "positions always fill whole batches"

    def _read(self, positions: list[int]) -> Iterator[tuple[int, str, Sample]]:
        """Stream the samples at `positions`: one open per run of positions in one shard."""
        run: list[tuple[int, int]] = []  # (position, sample number) in the current shard
        run_key: tuple[int, int] | None = None
        for g in positions:
            cycle, shard, i = self.locate(g)
            if run and ((cycle, shard) != run_key or i <= run[-1][1]):
                yield from self._read_run(self.urls[run_key[1]], run)
                run = []
            run_key = (cycle, shard)
            run.append((g, i))
        if run:
            yield from self._read_run(self.urls[run_key[1]], run)

    def _read_run(self, url: str, run: list[tuple[int, int]]) -> Iterator[tuple[int, str, Sample]]:
        """The samples of one shard at the run's sample numbers. The shard is read to its end
        even past the last wanted sample, so that its sha256 and count are always verified."""
        shard = self.shards[self.urls.index(url)]
        by_number = {i: g for g, i in run}  # sample number in the shard -> stream position
        for i, sample in enumerate(
            iter_tar_samples(url, shard=shard, max_member=self.data.shard_max_member)
        ):
            g = by_number.get(i)
            if g is not None:
                yield g, url, sample

    def _decode(self, g: int, url: str, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        key = sample["__key__"]
        imgs = []
        for role, nc in (("input", self.data.input_nc), ("target", self.data.output_nc)):
            ext = next((k for k in sample if k.startswith(f"{role}.")), None)
            if ext is None:
                raise DataError(f"{url}: sample {key!r} has no {role} image")
            imgs.append(open_image(sample[ext], name=f"{url}:{key}.{ext}", channels=nc))
        rng = random.Random(f"{self.seed}:{self.epoch}:{g}") if self.train else None
        try:
            return self.transform(imgs[0], imgs[1], rng)
        except DataError as e:
            raise DataError(f"{url}: sample {key!r}: {e}") from None


def _shuffle(
    items: Iterator[tuple[int, str, Sample]], size: int, rng: random.Random
) -> Iterator[tuple[int, str, Sample]]:
    """Streaming shuffle with a buffer of `size` encoded samples (count preserved)."""
    buf: list[tuple[int, str, Sample]] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class _WorkerError:
    """An error raised in a DataLoader worker, carried to the main process as an item."""

    def __init__(self, error: P2PError) -> None:
        self.error = error


class ShardLoader(DataLoader):
    """DataLoader that re-raises a worker's P2PError in the main process as the same one-line
    error (torch's own re-raise adds a multi-line worker traceback to the message).

    Its worker processes are shut down as soon as iteration ends, by an error or early, not
    when the iterator is garbage-collected: an error's traceback keeps the iterator alive, and
    torch's SIGCHLD handler checks the workers of every live loader, so a stale worker that
    exits later raised "DataLoader worker exited unexpectedly" inside another, healthy loader.
    Workers start with `forget_inherited_exit_hooks`, so they exit with status 0.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("worker_init_fn", forget_inherited_exit_hooks)
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        it = super().__iter__()
        try:
            for item in it:
                if isinstance(item, _WorkerError):
                    raise item.error
                yield item
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
            if shutdown is not None:
                try:
                    shutdown()
                except RuntimeError as e:  # a worker's exit status, seen while joining it
                    # Only reached when iteration stopped early or by an error, which is what
                    # the caller should see; a worker that died of it is logged.
                    log.debug("data loader: %s (while shutting the workers down)", e)


def forget_inherited_exit_hooks(_worker_id: int = 0) -> None:
    """Drop, in a forked loader worker, the thread at-exit hooks its parent registered.

    Python runs `threading._register_atexit` hooks when a multiprocessing child exits, and a
    forked worker inherits its parent's, although it has none of the threads they stop.
    Prefect registers one per running service (its API log writer, once a flow has run in the
    process) and resets the service in forked children, so in a worker the hook fails with an
    AssertionError and the worker exits with status 1. torch's SIGCHLD handler then raised
    "DataLoader worker exited unexpectedly" in the main process, at the latest when a worker
    finished its share before the others (evaluation inside a Prefect flow; seen in CI).
    """
    hooks = getattr(threading, "_threading_atexits", None)  # CPython's list of those hooks
    if hooks is not None:
        hooks.clear()
