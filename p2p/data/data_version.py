"""Data versions as DVC records them: `DataVersion` and the reading of `.dvc` files and
dvc.lock (no DVC import: YAML only), so that shards, training tags, evaluation and `p2p doctor`
can ask for a version without loading DVC.

A data version has one type, `DataVersion`: `.full` is what lineage tags and flow results carry
(`<md5>.dir`, or `manifest-sha256:<hex>` for data DVC has not recorded), `.short` the 12
characters for run names and MLflow run tags. `p2p.data.versioning` writes versions (dvc add,
commit, push, pull) and re-exports these names.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from p2p.errors import DataError, P2PError

if TYPE_CHECKING:
    from p2p.data.shards import ShardIndex

MANIFEST_PREFIX = "manifest-sha256:"  # a data version DVC has not recorded: the manifest's hash


@dataclass(frozen=True)
class DataVersion:
    """One recorded version of a dataset directory (or file).

    Attributes:
        path: the data, relative to the repo root (posix).
        md5: DVC content hash; directories end in ".dir".
        nfiles: files in the directory (None for a single file).
        size: total bytes.
        remote: the DVC remote it was pushed to (None if not pushed).
        dvc_file: the `.dvc` file, relative to the repo root.
    """

    path: str
    md5: str
    nfiles: int | None
    size: int | None
    remote: str | None
    dvc_file: str

    @property
    def full(self) -> str:
        """The whole identifier: lineage tags, flow results, the retrain comparison."""
        return self.md5

    @property
    def short(self) -> str:
        """12 hex characters (no `.dir`, no `manifest-sha256:`): run names, run tags."""
        return short_version(self.md5)

    @property
    def dvc_recorded(self) -> bool:
        """DVC's hash (not the `manifest-sha256:` fallback)."""
        return not self.md5.startswith(MANIFEST_PREFIX)

    @classmethod
    def of_index(cls, index: ShardIndex) -> DataVersion:
        """The version a shard index records: DVC's md5 of the raw data it was cut from when
        DVC had recorded one, else the sha256 of the raw manifest (`manifest-sha256:<hex>`)."""
        dv = index.data_version or {}
        if dv.get("dvc_md5"):
            md5, dvc_file = str(dv["dvc_md5"]), str(dv.get("dvc_source") or "")
        else:
            md5 = f"{MANIFEST_PREFIX}{dv.get('manifest_sha256') or 'unknown'}"
            dvc_file = ""
        return cls(index.name, md5, None, None, None, dvc_file)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataVersion:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def short_version(full: str) -> str:
    """The 12-character form of a data version: `ab12...ef.dir` -> `ab12...` (12 hex)."""
    return full.removeprefix(MANIFEST_PREFIX).split(".")[0][:12]


def current_version(path: str | os.PathLike, repo: str | os.PathLike = ".") -> DataVersion | None:
    """The version the workspace records for `path`: its `<path>.dvc` file, or the dvc.lock
    entry of the pipeline stage that outputs it. None if the path is not tracked."""
    root, target = resolve_target(repo, path)
    dvc_file = target.with_name(target.name + ".dvc")
    if not dvc_file.is_file():
        return _lock_version(root, target)
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        out = outs[0]
        return DataVersion(
            path=target.relative_to(root).as_posix(),
            md5=str(out["md5"]),
            nfiles=out.get("nfiles"),
            size=out.get("size"),
            remote=out.get("remote"),
            dvc_file=dvc_file.relative_to(root).as_posix(),
        )
    except (yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError) as e:
        raise DataError(f"{dvc_file}: not a valid .dvc file ({e})") from None


def recorded_version(path: str | os.PathLike) -> DataVersion | None:
    """`current_version` of `path` in the DVC repository above it; None outside one."""
    target = Path(path).resolve()
    root = next((p for p in target.parents if (p / ".dvc").is_dir()), None)
    return None if root is None else current_version(target, repo=root)


def resolve_target(repo: str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
    """(repo root, `path` resolved against it); P2PError/DataError if the root is no DVC
    repository or the path is not inside it."""
    root = Path(repo).resolve()
    target = Path(path)
    target = (target if target.is_absolute() else root / target).resolve()
    if not (root / ".dvc").is_dir():
        raise P2PError(f"{root}: not a DVC repository (no .dvc/); run `dvc init`")
    if not target.is_relative_to(root) or target == root:
        raise DataError(f"{target}: must be inside the repository {root}")
    return root, target


def _lock_version(root: Path, target: Path) -> DataVersion | None:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    rel = target.relative_to(root).as_posix()
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
        for stage in stages.values():
            for out in stage.get("outs") or []:
                if str(out.get("path", "")).rstrip("/") == rel and out.get("md5"):
                    return DataVersion(
                        path=rel,
                        md5=str(out["md5"]),
                        nfiles=out.get("nfiles"),
                        size=out.get("size"),
                        remote=None,
                        dvc_file="dvc.lock",
                    )
    except (yaml.YAMLError, AttributeError, TypeError) as e:
        raise DataError(f"{lock}: not a valid dvc.lock ({e})") from None
    return None
