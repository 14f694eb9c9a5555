"""`p2p data download NAME`: fetch one of the paper's aligned datasets (p2p.data.download).

    p2p data download facades                       # -> data/raw/facades (+ data/downloads/)
    p2p data download facades --version             # and DVC-version it
    P2P_DATASETS_URL=http://mirror/datasets p2p data download maps

Then train with the paper's recipe: `p2p train --params params/facades.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register_data_subcommand(dsub: argparse._SubParsersAction, common) -> None:
    """Add `download` to the `p2p data` group."""
    from p2p.data.download import DATASETS

    p = dsub.add_parser(
        "download",
        parents=[common],
        help="download a published pix2pix dataset (facades, maps, ...) and import it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(DATASETS), metavar="NAME", help=", ".join(DATASETS))
    p.add_argument("--dest", type=Path, default=Path("data/downloads"), help="archive folder")
    p.add_argument("--out", type=Path, help="dataset dir to write (default: data/raw/NAME)")
    p.add_argument("--no-import", action="store_true", help="download and verify only")
    p.add_argument("--version", action="store_true", help="DVC-version the imported dataset")
    p.add_argument("--remote", help="DVC remote for --version (default: as `p2p data version`)")
    p.set_defaults(func=download_cmd)


def download_cmd(args: argparse.Namespace) -> int:
    import dataclasses

    from p2p.cli import load_cfg
    from p2p.data.download import download_dataset, spec_of

    spec = spec_of(args.name)
    # channels etc. from --params/--set; the direction is the dataset's own
    data = dataclasses.replace(load_cfg(args).data, direction=spec.direction)
    d = download_dataset(
        args.name,
        dest=args.dest,
        out=args.out,
        data=data,
        import_=not args.no_import,
        version=args.version,
        remote=args.remote,
    )
    how = "cached" if d.cached else f"resumed at {d.resumed_from} B" if d.resumed_from else "new"
    print(f"{d.archive}: {d.size} bytes, sha256 {d.sha256} ({how})")
    if d.raw_dir is not None:
        counts = ", ".join(f"{k} {v}" for k, v in d.counts.items())
        print(f"imported {d.raw_dir}: {counts}")
    if d.data_version:
        print(f"data version {d.data_version}")
    print(
        f"direction: {d.direction} ({spec.task}); train with --params params/{d.name}.yaml",
        file=sys.stderr,
    )
    return 0
