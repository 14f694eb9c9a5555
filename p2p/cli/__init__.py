"""The `p2p` command line. Subcommands share names with the DVC stages and Prefect tasks.

Each command module exposes `register(subparsers, common)`; the registry below is explicit
(no discovery by name). Command modules keep their imports cheap: torch, ray, mlflow and
prefect are imported inside the functions that need them, so `p2p --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from p2p import __version__
from p2p.cli import bench as bench_cmd
from p2p.cli import config as config_cmd
from p2p.cli import data as data_cmd
from p2p.cli import demo as demo_cmd
from p2p.cli import doctor as doctor_cmd
from p2p.cli import evaluate as evaluate_cmd
from p2p.cli import predict as predict_cmd
from p2p.cli import registry as registry_cmd
from p2p.cli import train as train_cmd
from p2p.errors import P2PError
from p2p.settings import redact_uri

# The explicit command registry: one module per command group.
COMMANDS = (
    config_cmd,
    data_cmd,
    train_cmd,
    evaluate_cmd,
    registry_cmd,
    predict_cmd,
    demo_cmd,
    doctor_cmd,
    bench_cmd,
)


def common_parser() -> argparse.ArgumentParser:
    """Options every command accepts: the params file and dotted overrides."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2p", description="pix2pix from versioned paired data to a model registry."
    )
    parser.add_argument("--version", action="version", version=f"p2p {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_parser()
    for module in COMMANDS:
        module.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The user's errors (P2PError, which includes ConfigError) are one line and exit 2; any
    # other exception is a bug and keeps its traceback.
    try:
        return int(args.func(args) or 0)
    except P2PError as e:
        print(f"p2p {args.command}: error: {redact_uri(one_line(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `p2p config show | head`
        return 0
    except KeyboardInterrupt:
        print(f"p2p {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """An error message on one line (a message may quote multi-line text, e.g. YAML)."""
    return " ".join(str(e).split()) or type(e).__name__


def load_cfg(args: argparse.Namespace):
    """The resolved config of a command: --params file plus --set overrides."""
    from p2p.config import load_config

    return load_config(args.params, args.overrides)
