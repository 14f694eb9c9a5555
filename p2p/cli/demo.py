"""`p2p demo`: the whole pipeline on the embedded demo data, through the Prefect flows.

The demo is a flow run (`pipelines.demo`, over `retrain_flow`). The library never imports the
flows (they import it), so this command runs `python -m pipelines.demo` in a child process
with the same arguments and returns its exit status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole pipeline on the embedded demo data (retrain_flow)",
        description="prepare -> validate -> DVC version -> shard -> Ray train -> evaluate -> "
        "MLflow register -> promotion gate, skipped when the champion already has this data.",
    )
    p.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="rebuild and re-version the data before comparing with the champion's",
    )
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "pipelines.demo", "--params", args.params]
    for override in args.overrides:
        argv += ["--set", override]
    if args.address:
        argv += ["--address", args.address]
    if args.refresh:
        argv.append("--refresh")
    return subprocess.call(argv)  # an argument list: no shell
