"""`p2p data ACTION`: the data commands.

This module holds the commands that make a canonical raw dataset (import, build, demo), check
one (validate) and the `prepare` stage, and registers the rest of the group: `shard`
(p2p.cli.shard), the DVC data versions `version | pull | remote` (p2p.cli.versioning) and
`download` (p2p.cli.download).

`prepare` is the DVC stage: driven only by params (data.source, data.source_format,
data.on_error, data.raw_dir, build.*). The others are the same operations with explicit paths.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from p2p.config import BUILD_TASK_NAMES  # the names of p2p.data.build.TASKS, read lazily

    p = sub.add_parser("data", help="import, build, validate and shard paired datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    imp = dsub.add_parser(
        "import", parents=[common], help="import an aligned (A|B) or folders (A/, B/) dataset"
    )
    imp.add_argument("--format", dest="fmt", choices=["aligned", "folders"], required=True)
    imp.add_argument("--src", type=Path, required=True, help="source folder")
    imp.add_argument("--out", type=Path, required=True, help="canonical dataset dir to write")
    imp.add_argument("--on-error", choices=["fail", "skip"], help="default: data.on_error")
    imp.add_argument("--name", help="dataset name in the manifest (default: name of --out)")
    _split_args(imp, "without split folders: ")
    imp.add_argument(
        "--allow-mixed-shapes",
        action="store_true",
        help="aligned: accept files whose halves are shaped unlike the rest of the dataset",
    )
    _address_arg(imp)
    imp.set_defaults(func=import_cmd)

    bld = dsub.add_parser(
        "build", parents=[common], help="make pairs from a folder of photos (edges|colorize|...)"
    )
    bld.add_argument("--task", choices=BUILD_TASK_NAMES, help="build.task")
    bld.add_argument("--src", type=Path, required=True, help="folder of photos")
    bld.add_argument("--out", type=Path, required=True, help="canonical dataset dir to write")
    bld.add_argument("--num-pairs", type=int, help="build.num_pairs")
    bld.add_argument("--size", type=int, help="build.size: side of each square tile")
    bld.add_argument("--seed", type=int, help="build.seed")
    _split_args(bld, "")
    bld.add_argument("--on-error", choices=["fail", "skip"], help="default: data.on_error")
    _address_arg(bld)
    bld.set_defaults(func=build_cmd)

    demo = dsub.add_parser(
        "demo", parents=[common], help="build the embedded demo dataset from installed photos"
    )
    demo.add_argument("--out", type=Path, help="default: data.raw_dir")
    demo.set_defaults(func=demo_cmd)

    val = dsub.add_parser(
        "validate", parents=[common], help="check a canonical dataset or a source folder"
    )
    val.add_argument("dir", type=Path)
    val.add_argument("--format", dest="fmt", choices=["aligned", "folders"], help="source layout")
    val.add_argument("--allow-mixed-shapes", action="store_true")
    val.set_defaults(func=validate_cmd)

    prep = dsub.add_parser(
        "prepare", parents=[common], help="DVC stage: data.source -> data.raw_dir (from params)"
    )
    prep.set_defaults(func=prepare_cmd)

    from p2p.cli import download
    from p2p.cli import shard as shard_cmd
    from p2p.cli import versioning as versioning_cmd

    shard_cmd.register_data_subcommands(dsub, common)
    versioning_cmd.register_data_subcommands(dsub, common)

    download.register_data_subcommand(dsub, common)


def _split_args(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--val-fraction", type=float, help=f"{prefix}build.val_fraction")
    p.add_argument("--test-fraction", type=float, help=f"{prefix}build.test_fraction")


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="run the per-pair work as Ray tasks on this cluster (auto, host:6379, "
        "ray://host:10001); the output is byte-identical. Default: local threads, no Ray",
    )


@contextlib.contextmanager
def _executor(args: argparse.Namespace, **options: Any) -> Iterator[Any]:
    """None (local threads) without --address, else Ray tasks on that cluster (`options`:
    RayExecutor's)."""
    if not args.address:
        yield None
        return
    from p2p.raycluster import RayExecutor, ray_session

    with ray_session(args.address):
        ex = RayExecutor(**options)
        yield ex
        where = ", ".join(f"{n[:8]} {k}" for n, k in sorted(ex.nodes.items()))
        print(
            f"ray: {sum(ex.nodes.values())} tasks on {len(ex.nodes)} node(s): {where}",
            file=sys.stderr,
        )


def _cfg(args: argparse.Namespace, **build_overrides):
    """The resolved config with CLI flags applied as build.* overrides (validated the same way)."""
    from p2p.cli import load_cfg

    cfg = load_cfg(args)
    flat = {f"build.{k}": v for k, v in build_overrides.items() if v is not None}
    return cfg.replace(**flat) if flat else cfg


def _done(report, t0: float) -> int:
    print(report.summary())
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def import_cmd(args: argparse.Namespace) -> int:
    from p2p.data.importer import import_pairs

    t0 = time.perf_counter()
    cfg = _cfg(args, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    with _executor(args) as executor:
        report = import_pairs(
            args.src,
            args.out,
            fmt=args.fmt,
            on_error=args.on_error or cfg.data.on_error,
            data=cfg.data,
            name=args.name,
            val_fraction=cfg.build.val_fraction,  # the flags, else build.* (as the help says)
            test_fraction=cfg.build.test_fraction,
            seed=cfg.build.seed,
            check_aspect=not args.allow_mixed_shapes,
            executor=executor,
        )
    return _done(report, t0)


def build_cmd(args: argparse.Namespace) -> int:
    from p2p.data.build import build_pairs

    t0 = time.perf_counter()
    cfg = _cfg(
        args,
        task=args.task,
        num_pairs=args.num_pairs,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
    )
    with _executor(args) as executor:
        report = build_pairs(
            args.src,
            args.out,
            build=cfg.build,
            data=cfg.data,
            on_error=args.on_error or cfg.data.on_error,
            executor=executor,
        )
    return _done(report, t0)


def demo_cmd(args: argparse.Namespace) -> int:
    from p2p.data.build import build_demo

    t0 = time.perf_counter()
    cfg = _cfg(args)
    out = args.out or Path(cfg.data.raw_dir)
    return _done(build_demo(out, cfg.build, cfg.data), t0)


def validate_cmd(args: argparse.Namespace) -> int:
    from p2p.data.validate import validate_dataset

    t0 = time.perf_counter()
    cfg = _cfg(args)
    report = validate_dataset(
        args.dir,
        data=cfg.data,
        fmt=args.fmt,
        check_aspect=not args.allow_mixed_shapes,
        val_fraction=cfg.build.val_fraction,  # a source without split folders: as import splits
        test_fraction=cfg.build.test_fraction,
        seed=cfg.build.seed,
    )
    counts = ", ".join(f"{s} {n}" for s, n in report.counts.items())
    print(f"{report.path} ({report.kind}): {counts} valid pairs")
    for w in report.warnings:
        print(f"warning: {w}")
    report.raise_if_bad()  # the CLI prints the list of problems and exits 2
    print(f"ok in {time.perf_counter() - t0:.1f} s")
    return 0


def prepare_cmd(args: argparse.Namespace) -> int:
    """The `prepare` stage: data.source ("demo" or a folder) -> data.raw_dir."""
    from p2p.data.prepare import prepare_dataset

    t0 = time.perf_counter()
    return _done(prepare_dataset(_cfg(args)), t0)
