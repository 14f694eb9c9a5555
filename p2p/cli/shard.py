"""`p2p data shard`: WebDataset shards (DVC data versions: p2p.cli.versioning).

`shard` is the DVC stage of the same name: with no flags it reads data.raw_dir and writes
data.shards (a directory or s3://bucket/prefix) with the data.shard_max_* limits.
"""

from __future__ import annotations

import argparse
import sys

from p2p.cli.data import _address_arg, _executor


def register_data_subcommands(
    dsub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add `shard` to the `p2p data` group."""
    sh = dsub.add_parser(
        "shard", parents=[common], help="DVC stage: write WebDataset shards (dir or s3://)"
    )
    sh.add_argument("--src", help="canonical raw dataset dir (default: data.raw_dir)")
    sh.add_argument("--out", help="shard dir or s3://bucket/prefix (default: data.shards)")
    sh.add_argument(
        "--max-count", type=int, help="samples per shard (default: data.shard_max_count)"
    )
    sh.add_argument("--max-size", type=int, help="bytes per shard (default: data.shard_max_size)")
    _address_arg(sh)
    sh.set_defaults(func=shard_cmd)


def shard_cmd(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.data.shards import REMOTE_BUFFER, write_shards

    cfg = load_cfg(args)
    src = args.src or cfg.data.raw_dir
    out = args.out or cfg.data.shards
    print(f"sharding {src} -> {out} (direction {cfg.data.direction})", flush=True)
    # Ray: one bucket per task; tasks in flight bounded by REMOTE_BUFFER (their input and tars
    # pass through this process)
    max_size = args.max_size or cfg.data.shard_max_size
    in_flight = max(2, min(16, REMOTE_BUFFER // max_size))
    with _executor(args, chunk=1, max_in_flight=in_flight) as executor:
        index = write_shards(
            src,
            out,
            cfg.data,
            max_count=args.max_count,
            max_size=args.max_size,
            progress=lambda line: print(line, flush=True),
            executor=executor,
        )
    counts = ", ".join(f"{s} {v.samples}" for s, v in index.splits.items())
    version = index.data_version
    print(f"samples: {counts}; data version {version['dvc_md5'] or version['manifest_sha256']}")
    for skipped in index.skipped:
        print(f"skipped {skipped['file']}: {skipped['reason']}", file=sys.stderr)
    return 0
