"""The streaming shard loader: equal batches per rank, determinism, eval order, S3, DDP."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from data_fixtures import noise
from PIL import Image

from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.dataset import ShardStream, iter_tar_samples, make_loader
from p2p.data.shards import read_index, write_shards
from p2p.data.writer import DatasetWriter
from p2p.errors import DataError

# preprocess "none" keeps 32x32 images as they are, so every pixel survives the transform
DATA = DataConfig(
    load_size=32, crop_size=32, preprocess="none", shard_max_count=4, shuffle_buffer=4
)


def make_raw(root: Path, counts: dict[str, int], size: int = 32) -> Path:
    """Canonical dataset; sample i of a split has value i in channel 0 of its top corners
    (so the number survives flips): see `ident`."""
    with DatasetWriter(root, "syn") as w:
        for split, n in counts.items():
            for i in range(n):
                a = noise(size, size, seed=1000 * len(split) + i).copy()
                a[:4, :4, 0] = a[:4, -4:, 0] = i
                w.add(f"{split}{i:03d}", split, Image.fromarray(a), Image.fromarray(255 - a))
        w.commit(data=DATA, report={}, warnings=[])
    return root


def ident(batch_a: torch.Tensor) -> list[int]:
    """Sample numbers of a (B, C, H, W) input batch in [-1, 1]."""
    return [round((float(x) + 1) * 127.5) for x in batch_a[:, 0, 0, 0]]


def run_epoch(url, split, data=DATA, **kw) -> tuple[list[int], list[torch.Tensor]]:
    loader = make_loader(url, split, data, **kw)
    ids, batches = [], []
    for a, b in loader:
        assert a.shape == b.shape == (kw["batch_size"], 3, 32, 32) and a.dtype == torch.float32
        assert torch.allclose(a, -b, atol=1e-6)  # B = 255 - A, pixel-aligned after transforms
        ids += ident(a)
        batches.append(a)
    assert len(batches) == len(loader)
    return ids, batches


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """10 train samples in uneven shards of at most 4; 7 val samples in 2+ shards; 2 test."""
    tmp = tmp_path_factory.mktemp("loader")
    raw = make_raw(tmp / "raw", {"train": 10, "val": 7, "test": 2})
    index = write_shards(raw, tmp / "shards", DATA)
    counts = [s.samples for s in index.splits["train"].shards]
    assert len(counts) >= 3 and len(set(counts)) > 1 and max(counts) <= 4
    assert len(index.splits["val"].shards) >= 2
    return tmp / "shards"


def written_order(url, split) -> list[int]:
    """Sample numbers of a split in index order (the eval order)."""
    index = read_index(url)
    return [
        int(s["__key__"].removeprefix(split))
        for shard in index.splits[split].shards
        for s in iter_tar_samples(storage.join_url(url, shard.name))
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_equal_batches_three_shards_two_ranks(shards, workers):
    """Whole-shard splitting of uneven shards would give the ranks different batch counts,
    and DDP would hang. Sample-level assignment gives both 2."""
    per_rank = [
        run_epoch(shards, "train", batch_size=2, rank=r, world_size=2, num_workers=workers)[0]
        for r in range(2)
    ]
    assert [len(ids) for ids in per_rank] == [4, 4]  # 10 // (2 * 2) = 2 batches each
    assert not set(per_rank[0]) & set(per_rank[1])  # no sample twice in an epoch
    assert set(per_rank[0]) | set(per_rank[1]) <= set(range(10))
    # asking for more batches than the data holds wraps around, still equal on every rank
    for r in range(2):
        ids, _ = run_epoch(
            shards, "train", batch_size=2, rank=r, world_size=2, num_batches=5, num_workers=workers
        )
        assert len(ids) == 10
    ds = ShardStream(shards, "train", DATA, batch_size=2, rank=1, world_size=2, num_batches=5)
    assert ds.padded == 10  # positions 10..19: the second pass


@pytest.mark.parametrize("world", [1, 2, 3])
def test_batches_equal_for_any_world_and_workers(shards, world):
    counts = set()
    for r in range(world):
        for workers in (0, 1, 3):
            ds = ShardStream(shards, "train", DATA, batch_size=1, rank=r, world_size=world)
            per_worker = [
                len(ds.worker_batches(w, max(workers, 1))) for w in range(max(workers, 1))
            ]
            counts.add(sum(per_worker))
    assert counts == {10 // world}


def test_train_epochs_are_deterministic(shards):
    kw = dict(batch_size=2, rank=0, world_size=2, num_workers=2)
    ids1, b1 = run_epoch(shards, "train", seed=7, epoch=3, **kw)
    ids2, b2 = run_epoch(shards, "train", seed=7, epoch=3, **kw)
    assert ids1 == ids2 and all(torch.equal(x, y) for x, y in zip(b1, b2, strict=True))
    # the set of samples a rank sees does not depend on the number of loader workers
    ids0, _ = run_epoch(shards, "train", seed=7, epoch=3, **{**kw, "num_workers": 0})
    assert sorted(ids0) == sorted(ids1)
    # other epochs / seeds: other samples or order
    seen = {tuple(run_epoch(shards, "train", seed=7, epoch=e, **kw)[0]) for e in range(4)}
    assert len(seen) > 1
    assert run_epoch(shards, "train", seed=8, epoch=3, **kw)[0] != ids1
    # over one epoch all ranks together see distinct samples (N // (bs * world) * bs * world)
    for epoch in range(3):
        ids = sum(
            (run_epoch(shards, "train", epoch=epoch, **{**kw, "rank": r})[0] for r in (0, 1)), []
        )
        assert len(ids) == len(set(ids)) == 8


def test_eval_order_padding_and_workers(shards):
    """Eval: every sample once in index order, padding by wrap-around at the end, the same
    batches whatever the number of loader workers."""
    outs = {}
    for workers in (0, 2):
        per_rank = []
        for r in range(2):
            ids, batches = run_epoch(
                shards, "val", batch_size=2, rank=r, world_size=2, train=False, num_workers=workers
            )
            per_rank.append((ids, batches))
        outs[workers] = per_rank
    # ceil(7 / 4) = 2 batches per rank: rank 0 gets the first 4 in index order, rank 1 the
    # last 3 + the first again
    order = written_order(shards, "val")
    assert sorted(order) == list(range(7))
    assert [ids for ids, _ in outs[0]] == [order[:4], order[4:] + order[:1]]
    for (ids0, b0), (ids2, b2) in zip(outs[0], outs[2], strict=True):
        assert ids0 == ids2 and all(torch.equal(x, y) for x, y in zip(b0, b2, strict=True))
    pads = [
        ShardStream(shards, "val", DATA, batch_size=2, rank=r, world_size=2, train=False).padded
        for r in range(2)
    ]
    assert pads == [0, 1]
    # one rank, batch 3: 3 batches, the last padded with samples 0 and 1
    ids, _ = run_epoch(shards, "val", batch_size=3, train=False, num_workers=2)
    assert ids == order + order[:2]


def test_fewer_shards_than_ranks_times_workers(tmp_path):
    raw = make_raw(tmp_path / "raw", {"train": 9, "val": 1})
    write_shards(raw, tmp_path / "s", DATA, max_count=100)  # one train shard
    per_rank = [
        run_epoch(tmp_path / "s", "train", batch_size=2, rank=r, world_size=2, num_workers=2)[0]
        for r in range(2)
    ]
    assert [len(x) for x in per_rank] == [4, 4] and not set(per_rank[0]) & set(per_rank[1])
    # a split smaller than one global batch still gives every rank a batch (wrap-around)
    ids = [
        run_epoch(tmp_path / "s", "val", batch_size=2, rank=r, world_size=2, train=False)[0]
        for r in range(2)
    ]
    assert ids == [[0, 0], [0, 0]]


def test_train_transform_crops(shards):
    """The real paired transform runs: resize to load_size, random crop_size crop."""
    data = dataclasses.replace(DATA, preprocess="resize_and_crop", load_size=40, crop_size=24)
    a, b = next(iter(make_loader(shards, "train", data, batch_size=2, num_workers=0)))
    assert a.shape == b.shape == (2, 3, 24, 24)
    assert torch.allclose(a, -b, atol=0.05)  # same crop and flip for input and target


def test_bad_input(shards, tmp_path):
    with pytest.raises(DataError, match="no shard index"):
        make_loader(tmp_path, "train", DATA, batch_size=2)
    with pytest.raises(ValueError, match="rank"):
        make_loader(shards, "train", DATA, batch_size=2, rank=2, world_size=2)
    raw = make_raw(tmp_path / "raw", {"train": 4})
    index = write_shards(raw, tmp_path / "s", DATA)
    with pytest.raises(DataError, match="split 'val' has no samples"):
        make_loader(tmp_path / "s", "val", DATA, batch_size=1)
    # a shard that no longer matches its index is an error, not a short epoch
    first = index.splits["train"].shards[0].name
    (tmp_path / "s" / first).write_bytes(b"\0" * 10240)  # an empty tar
    with pytest.raises(DataError, match="changed after the index was written"):
        run_epoch(tmp_path / "s", "train", batch_size=2, num_workers=0)


@pytest.mark.slow
def test_streams_from_s3(shards, s3_bucket):
    url = f"s3://{s3_bucket}/shards/syn"
    for p in sorted(shards.iterdir()):
        storage.upload_file(p, f"{url}/{p.name}")
    for split, train in (("val", False), ("train", True)):
        local = run_epoch(shards, split, batch_size=2, train=train, num_workers=0)
        remote = run_epoch(url, split, batch_size=2, train=train, num_workers=2)
        assert local[0] == remote[0] if not train else sorted(local[0]) == sorted(remote[0])
    # plain webdataset can read s3:// through the handler p2p.data.dataset registers
    import webdataset as wds

    first = f"{url}/{read_index(url).splits['val'].shards[0].name}"
    ds = wds.WebDataset([first], shardshuffle=False, nodesplitter=None)
    assert [s["__key__"] for s in ds] == [s["__key__"] for s in iter_tar_samples(first)]


_DDP_WORKER = textwrap.dedent(
    """
    import sys
    import torch, torch.distributed as dist
    from p2p.config import DataConfig
    from p2p.data.dataset import make_loader
    rank, world, port, url = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    data = DataConfig(load_size=32, crop_size=32, preprocess="none", loader_workers=1)
    steps = 0
    for split, train in (("train", True), ("val", False)):
        for a, b in make_loader(url, split, data, batch_size=2, rank=rank, world_size=world,
                                train=train):
            t = a.mean().reshape(1)
            dist.all_reduce(t)  # a rank without a batch here would block the others forever
            steps += 1
    dist.barrier()
    print(steps)
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_ddp_all_reduce_per_batch_does_not_hang(shards):
    """Two real gloo ranks all-reduce once per batch over uneven shards: both finish."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_WORKER, str(r), "2", str(port), str(shards)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert [int(out.split()[-1]) for out, _ in outs] == [4, 4]  # 2 train + 2 val batches each


@pytest.mark.slow
def test_bench_loader_prints_a_row_per_source_and_worker_count(tmp_path, capsys):
    import argparse
    import re

    from p2p.bench import loader as bench
    from p2p.cli import common_parser

    raw = make_raw(tmp_path / "raw", {"train": 6, "val": 1})
    parser = argparse.ArgumentParser(parents=[common_parser()])
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--src", str(raw), "--samples", "4", "--workers", "0", "1", "--train-ips", "2.5"]
    )
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    rows = re.findall(
        r"^(local shards|s3 shards \(.*?\)|raw folder)\s+(\d+)\s+([\d.]+)\s+[\d.]+s\s+([\d.]+)x$",
        out,
        re.M,
    )
    assert [(src.split()[0], int(w)) for src, w, _, _ in rows] == [
        ("local", 0),
        ("local", 1),
        ("s3", 0),
        ("s3", 1),
        ("raw", 0),
        ("raw", 1),
    ]
    for *_, ips, ratio in rows:  # ratio column: samples/s over the training worker's 2.5
        assert float(ips) > 0 and abs(float(ratio) - float(ips) / 2.5) <= 0.08  # both rounded
    assert "one loader worker feeds >= 4x" in out
