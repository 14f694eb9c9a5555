"""Schedule retraining: serve `retrain_flow` as a Prefect deployment with a cron schedule.

Against a local Prefect server (run these from the project directory):

    prefect server start                                   # terminal 1: API + UI on :4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api       # terminal 2:
    python -m pipelines.deploy --cron "0 3 * * 1"          # create the deployment and serve it
    prefect deployment run retrain_flow/retrain            # terminal 3: trigger a run now

The serving process executes the scheduled runs itself, in its working directory (no work pool
needed); `--apply-only` just creates/updates the deployment. For a work pool and workers,
`prefect deploy --all` reads prefect.yaml instead.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_NAME = "retrain"
DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00
DEFAULT_TIMEZONE = "UTC"


def build_deployment(
    name: str = DEFAULT_NAME,
    cron: str = DEFAULT_CRON,
    params: str = "params.yaml",
    *,
    overrides: list[str] | None = None,
    address: str = "",
    refresh: bool = False,
    timezone: str = DEFAULT_TIMEZONE,
) -> Any:
    """The retrain deployment (not yet applied): retrain_flow on a cron schedule.

    At most one run at a time (a run that is due while one is going waits).

    Args:
        name: deployment name (`retrain_flow/<name>`).
        cron: cron expression, evaluated in `timezone`.
        params: params file, relative to the directory the runs execute in.
        overrides: dotted overrides passed to every run.
        address: Ray address for training ("" = resources.address / RAY_ADDRESS / local).
        refresh: re-import data.source before comparing data versions (see retrain_flow).
        timezone: IANA time zone of the schedule.

    Returns:
        A prefect RunnerDeployment: `.apply()` registers it, `prefect.serve(d)` serves it.
    """
    from prefect.schedules import Cron

    from pipelines.retrain_flow import retrain_flow

    parameters: dict[str, Any] = {"params": params, "refresh": refresh}
    if overrides:
        parameters["overrides"] = list(overrides)
    if address:
        parameters["address"] = address
    return retrain_flow.to_deployment(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        concurrency_limit=1,
        parameters=parameters,
        tags=["p2p", "retrain"],
        description="Retrain pix2pix when the DVC data version moves past the champion's.",
    )


def parser() -> argparse.ArgumentParser:
    """`python -m pipelines.deploy`: the flow CLI's --params/--set/--address + the schedule."""
    from pipelines import cli

    p = cli.flow_parser("pipelines.deploy", __doc__, address=True)
    p.add_argument("--name", default=DEFAULT_NAME, help=f"deployment name ({DEFAULT_NAME})")
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule ({DEFAULT_CRON!r})")
    p.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="time zone of the schedule")
    p.add_argument("--refresh", action="store_true", help="re-import data.source on every run")
    p.add_argument(
        "--apply-only", action="store_true", help="create/update the deployment and exit"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from pipelines import cli

    ap = parser()
    args = argparse.Namespace(**cli.parse(ap, argv))  # --params/--set checked here, as for flows
    if not os.environ.get("PREFECT_API_URL"):
        ap.error(
            "PREFECT_API_URL is not set: start `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (schedules need a server)"
        )
    deployment = build_deployment(
        args.name,
        args.cron,
        args.params,
        overrides=args.overrides,
        address=args.address or "",
        refresh=args.refresh,
        timezone=args.timezone,
    )
    if args.apply_only:
        deployment_id = deployment.apply()
        print(
            f"deployment retrain_flow/{args.name} ({deployment_id}): '{args.cron}' {args.timezone}"
        )
        return 0
    from prefect import serve

    serve(deployment)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
