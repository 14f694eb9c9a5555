"""`p2p bench loader`: samples/s of the input pipeline at the paper's resolution.

What is timed: reading + decoding both PNGs of a pair + PairedTransform (resize to 286,
random 256x256 crop, flip, to [-1, 1]) + collation, through a torch DataLoader, from

- local shards (`make_loader` over a shard dir),
- S3 shards (the same tars uploaded to S3 and streamed with boto3; a moto server started in
  this process unless --s3 or AWS_ENDPOINT_URL points at a real endpoint),
- the raw image folder (`PairedImageDataset`, one file open per image),

for each number of DataLoader worker processes in --workers. Throughput is measured from the
first batch on (worker start-up is reported separately as "first batch"); with --repeat N the
best of N runs is shown (use it on a shared machine). The moto rows measure the S3 code path
(HTTP, streaming, parsing) against a local in-process server, not a real network.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", help="canonical raw dataset (default: data.raw_dir, else a fresh demo)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader workers to time")
    p.add_argument("--batch-size", type=int, default=1, help="per-rank batch (paper: 1)")
    p.add_argument("--samples", type=int, default=160, help="samples timed per run")
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the best is shown")
    p.add_argument("--s3", metavar="URL", help="s3://bucket/prefix to upload shards to and read")
    p.add_argument("--no-s3", action="store_true", help="skip the S3 rows")
    p.add_argument(
        "--train-ips",
        type=float,
        help="images/s one training worker consumes (skips measuring it with --train-steps)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        help="timed p2p training steps at the paper config for the ratio column "
        "(default: 3 on a GPU, 0 = skip on CPU, where such a step takes seconds to minutes)",
    )


def run(args: argparse.Namespace) -> int:
    from p2p.config import load_config

    cfg = load_config(args.params, args.overrides)  # the CLI's --params / --set
    # the paper's input pipeline: 286 -> random 256 crop + flip
    data = dataclasses.replace(
        cfg.data, load_size=286, crop_size=256, preprocess="resize_and_crop", flip=True
    )
    with tempfile.TemporaryDirectory(prefix="p2p-bench-loader-") as tmp:
        raw = _raw_dataset(args.src or cfg.data.raw_dir, Path(tmp), cfg)
        shards = Path(tmp) / "shards"
        from p2p.data.shards import write_shards

        index = write_shards(raw, shards, data, progress=lambda line: None)
        n_train = index.samples("train")
        print(
            f"p2p bench loader: decode + PairedTransform (286 -> 256x256 crop), batch "
            f"{args.batch_size}, {args.samples} samples per run; dataset {raw} "
            f"({n_train} train pairs, {index.totals['shards']} shards); "
            f"{os.cpu_count()} CPU cores"
        )
        rows: list[tuple[str, int, float, float]] = []
        for workers in args.workers:
            rows.append(("local shards", workers, *_time_shards(str(shards), data, args, workers)))
        if not args.no_s3:
            from p2p.data import storage

            with _s3_prefix(args.s3) as (url, where):
                uploaded = _upload(shards, url)
                try:
                    for workers in args.workers:
                        label = f"s3 shards ({where})"
                        rows.append((label, workers, *_time_shards(url, data, args, workers)))
                finally:
                    for u in uploaded:  # only what this bench wrote
                        storage.remove(u)
        for workers in args.workers:
            rows.append(("raw folder", workers, *_time_raw(raw, data, args, workers)))
    train_ips = args.train_ips or _train_consumption(args.train_steps)
    _print_table(rows, train_ips)
    return 0


def _train_consumption(steps: int | None) -> float | None:
    """images/s one training worker consumes at the paper config (unet_256, ngf/ndf 64, batch 1,
    256x256), measured with `p2p.bench.train.bench_step` on this machine's best device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if steps is None:
        steps = 3 if device == "cuda" else 0
    if steps <= 0:
        return None
    try:
        from p2p.bench.train import bench_step
    except ImportError:
        return None
    from p2p.config import load_config

    paper = load_config(None)
    rows = bench_step(paper, device, 1, steps)
    ips = next(r["images_per_s"] for r in rows if r["impl"].startswith("p2p"))
    print(
        f"one training worker, paper config ({paper.model.generator} num_downs "
        f"{paper.model.num_downs}, ngf/ndf {paper.model.base_channels}/"
        f"{paper.model.disc_channels}, batch 1, {paper.data.crop_size}x{paper.data.crop_size}, "
        f"{device}): {ips:.2f} images/s (median of {steps} steps, p2p.bench.train)"
    )
    return ips


# ----------------------------------------------------------------------------- sources


def _raw_dataset(src: str, tmp: Path, cfg) -> Path:
    from p2p.data.manifest import is_dataset

    if is_dataset(src):
        return Path(src)
    from p2p.data.build import build_demo

    out = tmp / "raw" / "demo"
    print(f"{src} not found: building the demo dataset into {out} ...", flush=True)
    build_demo(out, cfg.build, cfg.data)
    return out


@contextlib.contextmanager
def _s3_prefix(url: str | None) -> Iterator[tuple[str, str]]:
    """(s3 prefix, description): --s3, else a bucket on AWS_ENDPOINT_URL, else a moto server."""
    if url:
        yield url, "given endpoint"
        return
    import boto3

    if os.environ.get("AWS_ENDPOINT_URL"):
        client = boto3.client("s3")
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket="p2p-bench")
        yield f"s3://p2p-bench/loader-{os.getpid()}", "AWS_ENDPOINT_URL"
        return
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in (*env, "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update(env)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="p2p-bench")
        yield "s3://p2p-bench/loader", "moto, in-process"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _upload(shards: Path, url: str) -> list[str]:
    from p2p.data import storage

    files = sorted(shards.iterdir(), key=lambda p: p.name == "index.json")  # index last
    urls = [storage.join_url(url, p.name) for p in files]
    for p, u in zip(files, urls, strict=True):
        storage.upload_file(p, u)
    return urls


# ----------------------------------------------------------------------------- timing


def _time_shards(url: str, data, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    from p2p.data.dataset import make_loader

    def make():
        return make_loader(
            url,
            "train",
            data,
            batch_size=args.batch_size,
            num_batches=max(2, args.samples // args.batch_size),
            num_workers=workers,
        )

    return _time(make, args.repeat)


def _time_raw(raw: Path, data, args: argparse.Namespace, workers: int) -> tuple[float, float]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from p2p.bench.raw_dataset import PairedImageDataset

    ds = PairedImageDataset(raw, "train", data, train=True, seed=0)
    n = max(2, args.samples // args.batch_size) * args.batch_size

    def make():
        gen = torch.Generator().manual_seed(0)
        sampler = RandomSampler(ds, num_samples=n, generator=gen)
        return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=workers)

    return _time(make, args.repeat)


def _time(make, repeat: int) -> tuple[float, float]:
    """Best of `repeat` runs: (samples/s after the first batch, seconds to the first batch)."""
    runs = [_time_once(make()) for _ in range(max(1, repeat))]
    return max(r[0] for r in runs), min(r[1] for r in runs)


def _time_once(loader) -> tuple[float, float]:
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    n = 0
    for a, _ in it:
        n += a.shape[0]
    t2 = time.perf_counter()
    return n / max(t2 - t1, 1e-9), t1 - t0


def _print_table(rows: list[tuple[str, int, float, float]], train_ips: float | None) -> None:
    head = f"{'source':<30}{'workers':>8}{'samples/s':>12}{'first batch':>13}"
    if train_ips:
        head += f"{'x train worker':>16}"
    print(head)
    print("-" * len(head))
    for source, workers, ips, first in rows:
        line = f"{source:<30}{workers:>8}{ips:>12.1f}{first:>12.2f}s"
        if train_ips:
            line += f"{ips / train_ips:>15.1f}x"
        print(line)
    if train_ips is None:
        print(
            "Compare with what one training worker consumes at the paper config "
            "(`p2p bench train`; or here with --train-steps N / --train-ips X): "
            "see bench/RESULTS.md."
        )
    else:
        print("target: one loader worker feeds >= 4x what one training worker consumes")
