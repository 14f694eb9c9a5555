"""`p2p bench NAME`: benchmarks that print figures. Each bench module provides
`add_arguments(parser)` and `run(args) -> int` (the config from the common `--params` / `--set`
options, through p2p.config: bench modules do not import p2p.cli); the registry below is
explicit."""

from __future__ import annotations

import argparse


def _loader():
    from p2p.bench import loader

    return loader


def _import():
    from p2p.bench import importer

    return importer


def _shard():
    from p2p.bench import shard

    return shard


def _train():
    from p2p.bench import train

    return train


BENCHES = {
    "loader": ("samples/s of the data loader: local shards, S3 shards, raw folder", _loader),
    "train": ("images/s and peak memory of the training step", _train),
    "import": ("seconds to import generated pairs beside a plain PIL decode+encode", _import),
    "shard": ("seconds of `p2p data shard` vs `tar cf` of the same folder", _shard),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    bsub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (help_text, load) in BENCHES.items():
        bp = bsub.add_parser(name, parents=[common], help=help_text)
        bp.set_defaults(func=lambda args, load=load: load().run(args))
        load().add_arguments(bp)
