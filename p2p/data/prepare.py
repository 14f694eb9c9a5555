"""The `prepare` stage: data.source -> the canonical dataset at data.raw_dir.

Shared by `p2p data prepare` (the DVC stage) and the Prefect `prepare` task. Driven only by
params: data.source ("demo" or a folder), data.source_format (aligned | folders | photos),
data.on_error, data.raw_dir and build.*.
"""

from __future__ import annotations

from pathlib import Path

from p2p.config import ExperimentConfig
from p2p.data.reports import ImportReport
from p2p.errors import DataError


def prepare_dataset(cfg: ExperimentConfig) -> ImportReport:
    """Build or import data.source into data.raw_dir (validated, atomic)."""
    d, out = cfg.data, Path(cfg.data.raw_dir)
    if d.source == "demo":
        from p2p.data.build import build_demo

        return build_demo(out, cfg.build, d)
    if not Path(d.source).is_dir():
        raise DataError(f"{d.source}: data.source is neither 'demo' nor an existing folder")
    if d.source_format == "photos":
        from p2p.data.build import build_pairs

        return build_pairs(d.source, out, build=cfg.build, data=d, on_error=d.on_error)
    from p2p.data.importer import import_pairs

    return import_pairs(
        d.source,
        out,
        fmt=d.source_format,
        on_error=d.on_error,
        data=d,
        name=d.name,
        val_fraction=cfg.build.val_fraction,
        test_fraction=cfg.build.test_fraction,
        seed=cfg.build.seed,
    )
