"""The command line of the flow modules: `python -m pipelines.training_flow --help`.

One small CLI for every flow module. `--params` and the repeatable `--set group.key=value` come
from the `p2p` CLI's own parser (`p2p.cli.common_parser`), so they are spelled and parsed the
same way; `--address` where the flow takes it; each module adds its flow's other parameters.
Every option's dest is the name of a parameter of the flow, so the parsed arguments are the
flow's keyword arguments, overrides included.

Nothing runs before the arguments are valid: `--help` and argparse errors (unknown arguments:
exit 2) exit during parsing, and the params file and overrides are loaded and checked before the
flow starts (a bad key or value: one line, exit 2). A P2PError raised by the flow is one line,
exit 2, as in `p2p`; any other exception keeps its traceback (a bug should be visible).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from p2p.cli import common_parser, load_cfg, one_line
from p2p.errors import P2PError

ADDRESS_HELP = (
    "Ray address for training: auto, ray://host:10001 or http://head:8265 "
    "(default: resources.address, else RAY_ADDRESS, else a local Ray)"
)


def flow_parser(module: str, doc: str | None, *, address: bool = False) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`: --params, --set and (if `address`) --address.

    The caller adds the flow's other parameters, each with `dest` = the flow parameter's name.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=(doc or module).strip().splitlines()[0],
        parents=[common_parser()],
    )
    if address:
        parser.add_argument("--address", default=None, help=ADDRESS_HELP)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The flow's keyword arguments from `argv`, after checking the params they resolve to."""
    args = parser.parse_args(argv)  # --help: exit 0; unknown or bad arguments: exit 2
    try:
        load_cfg(args)  # the config the flow's tasks will load: checked before anything runs
    except P2PError as e:
        parser.exit(2, f"{parser.prog}: error: {one_line(e)}\n")
    return vars(args)


def run(
    parser: argparse.ArgumentParser,
    flow: Callable[..., Any],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse `argv`, run `flow` with it, print its result as JSON; the exit status."""
    kwargs = parse(parser, argv)
    try:
        result = flow(**kwargs)
    except P2PError as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0
