"""`p2p doctor`: print what the settings point at and check every endpoint is reachable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="show the settings and check S3, MLflow, Prefect, Ray, DVC and GPU",
        description="Print each setting (secrets redacted) and check that every endpoint it "
        "names answers. Exit 0 when nothing failed, 1 otherwise.",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds per network call (5)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=doctor_command)


def doctor_command(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.doctor import report, run_checks

    cfg = load_cfg(args)
    checks = run_checks(cfg, timeout=args.timeout)
    print(report(cfg, checks, as_json=args.json), flush=True)
    return 1 if any(c.failed for c in checks) else 0
