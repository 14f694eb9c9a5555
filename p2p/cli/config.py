"""`p2p config show`: print the resolved params (file + overrides), as YAML or dotted keys."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("config", help="show the resolved configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = csub.add_parser("show", parents=[common], help="print the resolved params")
    show.add_argument("--format", choices=["yaml", "flat", "json"], default="yaml")
    show.set_defaults(func=show_config)


def show_config(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.config import to_yaml

    cfg = load_cfg(args)
    if args.format == "yaml":
        print(to_yaml(cfg), end="")
    elif args.format == "json":
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        for k, v in cfg.flat().items():
            print(f"{k}={v}")
    return 0
