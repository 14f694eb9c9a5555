"""data_flow: prepare -> validate -> version with DVC (and push) -> shard -> the data version.

When data.raw_dir is the out of the dvc.yaml stage `prepare` and the run uses params.yaml's
values, the stages it ran (prepare, shard) are recorded in dvc.lock as `dvc repro` records them.

Runs in the project directory (the git + DVC repository), like `dvc repro`: paths in params
are relative to it. Without PREFECT_API_URL it runs on Prefect's temporary local API.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from p2p.errors import P2PError
from pipelines import cli, tasks


@flow(name="data_flow", log_prints=True)
def data_flow(params: str = "params.yaml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Turn data.source into validated, DVC-versioned shards.

    Args:
        params: params file.
        overrides: dotted overrides, e.g. ["data.shards=s3://bucket/shards/demo"].

    Returns:
        {"data_version": DataVersion dict (md5, path, nfiles, size, remote, dvc_file),
         "shards": url, "totals": {...}, "counts": {split: pairs}}
    """
    cfg = tasks.load(params, overrides)
    # the dvc.yaml stages this run is (prepare, shard): recorded in dvc.lock as `dvc repro`
    # would, so that a `dvc repro` afterwards has nothing to do
    stages = tasks.recordable_stages(cfg, ("prepare", "shard"))
    tasks.prepare(cfg)
    counts = tasks.validate(cfg)
    version = tasks.version(cfg, in_pipeline="prepare" in stages)
    sharded = tasks.shard(cfg)
    if sharded["data_version"] != version["md5"]:  # the index records what DVC recorded
        raise P2PError(
            f"{sharded['shards']}: the shard index records data version "
            f"{sharded['data_version']}, DVC recorded {version['md5']} for {version['path']}"
        )
    if "shard" in stages:
        tasks.record(["shard"])
    print(
        f"data version {version['md5']}: {sum(counts.values())} pairs, "
        f"{sharded['totals']['shards']} shards in {sharded['shards']}"
    )
    return {
        "data_version": version,
        "shards": sharded["shards"],
        "totals": sharded["totals"],
        "counts": counts,
    }


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    """`python -m pipelines.data_flow`: --params and --set, the parameters of data_flow."""
    return cli.flow_parser("pipelines.data_flow", __doc__)


def main(argv: list[str] | None = None) -> int:
    return cli.run(parser(), data_flow, argv)


if __name__ == "__main__":
    raise SystemExit(main())
