"""retrain_flow: retrain only when the data changed.

Compares the latest DVC data version of data.raw_dir (what its .dvc file or dvc.lock records in
the working directory's repository) with the champion's `lineage.data_version` tag. Unchanged:
says so and stops, without touching data, Ray or the registry. Changed (or no champion, or
nothing recorded yet): runs data_flow, then training_flow (which is itself idempotent per data
version + params hash). With `refresh`, data_flow runs first (re-importing data.source, a no-op
version when nothing changed) and its version is the one compared.

Scheduled by pipelines/deploy.py (cron) against a Prefect server.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from pipelines import cli, tasks
from pipelines.data_flow import data_flow
from pipelines.training_flow import training_flow


@flow(name="retrain_flow", log_prints=True)
def retrain_flow(
    params: str = "params.yaml",
    overrides: list[str] | None = None,
    address: str | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """Retrain, evaluate, register and gate if the data version moved past the champion's.

    Args:
        params: params file.
        overrides: dotted overrides, e.g. ["data.shards=s3://bucket/shards/demo"].
        address: Ray address for training (default: resources.address, RAY_ADDRESS, local).
        refresh: run data_flow (prepare, validate, version, shard) before comparing, so that
            new files in data.source become a new data version.

    Returns:
        {"skipped": True, "data_version", "champion_version"} or
        {"skipped": False, "data_version", "data": data_flow result, "training": training_flow
        result}
    """
    cfg = tasks.load(params, overrides)
    name = tasks.cfg_of(cfg).eval.model_name
    raw_dir = tasks.cfg_of(cfg).data.raw_dir
    data = data_flow(params=params, overrides=overrides) if refresh else None
    latest = data["data_version"]["md5"] if data else tasks.latest_data_version(cfg)
    champ_version, champ_data = tasks.champion_data_version(name)
    if latest is not None and champ_data == latest:
        print(
            f"data {raw_dir} is unchanged at version {latest}, the data champion "
            f"{name} v{champ_version} was trained on: skipping retraining"
        )
        return {"skipped": True, "data_version": latest, "champion_version": champ_version}
    if champ_version is None:
        why = f"{name} has no champion yet"
    else:
        why = f"the champion {name} v{champ_version} was trained on {champ_data or '(unknown)'}"
    print(f"data {raw_dir} is at version {latest or '(not versioned yet)'} and {why}: retraining")
    if data is None:
        data = data_flow(params=params, overrides=overrides)
    md5 = data["data_version"]["md5"]
    training = training_flow(params=params, overrides=overrides, data_version=md5, address=address)
    return {"skipped": False, "data_version": md5, "data": data, "training": training}


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """`python -m pipelines.retrain_flow`: one option per parameter of retrain_flow."""
    p = cli.flow_parser("pipelines.retrain_flow", __doc__, address=True)
    p.add_argument(
        "--refresh",
        action="store_true",
        help="run data_flow first (re-import data.source) before comparing data versions",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(parser(), retrain_flow, argv)


if __name__ == "__main__":
    raise SystemExit(main())
