"""Dataset versions with DVC: `dvc add` + git-staged `.dvc` file + push, from Python.

A dataset version is DVC's content hash of the directory (`<md5>.dir`), recorded in
`<path>.dvc` next to the data; git tracks the `.dvc` file, the DVC remote holds the bytes.
`version_dataset` is what a Prefect task calls; `pull_dataset` brings any recorded version back.

Remotes (see `.dvc/config`):
- `local` (default): `.dvc/storage` inside the repo; works with no server.
- `s3`: its URL and endpoint are per machine. Either export `P2P_DVC_REMOTE_URL=s3://bucket/prefix`
  (plus `AWS_ENDPOINT_URL` for MinIO/moto), which this module applies in memory and then pushes
  to `s3` by default, or persist them with `configure_s3_remote` / `p2p data remote --s3 URL`,
  which writes `.dvc/config.local` (git-ignored). Credentials stay in the environment (boto3
  chain); nothing here writes them to a config file.

Pipeline outs: a path that a dvc.yaml stage outputs (data/raw/NAME from `prepare`) cannot be
`dvc add`ed; `version_dataset` then commits the workspace content to dvc.lock (`dvc commit`)
and pushes it, and the version lives in dvc.lock instead of a `.dvc` file.

Concurrency: DVC's repo lock fails fast when another DVC command holds it. Calls into DVC from
this module are serialized by a process-wide lock plus a file lock in `.dvc/tmp/` (other
processes), and a remaining `LockError` (e.g. a `dvc repro` running in a shell) is retried with
backoff. DVC resolves some targets against the current directory, so each call runs with the
working directory set to the repo root (a no-op for the usual repo=".").
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from p2p.atomic import write_text_atomic
from p2p.errors import DataError, P2PError

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_REMOTE = "s3"  # the name of the S3 remote in .dvc/config
LOCK_TIMEOUT_S = 600.0  # how long a call waits for another p2p DVC call in this repo
DVC_LOCK_RETRY_S = 120.0  # how long a call retries DVC's own lock held by a foreign process


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataVersion:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------- public API


def version_dataset(
    path: str | os.PathLike, *, remote: str | None = None, repo: str | os.PathLike = "."
) -> DataVersion:
    """Record the current content of `path` as a DVC version and push it.

    Runs `dvc add` (hashes, caches, writes `<path>.dvc`, git-ignores the data), stages the
    `.dvc` file and the `.gitignore` with git (committing is the caller's decision), and pushes
    the data to `remote`, else to `s3` when P2P_DVC_REMOTE_URL is set, else to the default remote.

    Args:
        path: dataset directory or file; relative paths are relative to the repo root.
        remote: DVC remote name to push to.
        repo: the DVC/git repository root.

    Returns:
        The DataVersion; `.md5` is the content hash to record (MLflow tags, flow results).
    """
    root, target = _resolve(repo, path)
    if not target.exists():
        raise DataError(f"{target}: dataset path does not exist")

    def add_and_push() -> DataVersion:
        with _open_repo(root) as r:
            push_to = remote or _default_remote(r)
            r.scm_context.autostage = True  # `git add` the .dvc/.lock file and .gitignore
            if _pipeline_stage(r, target) is not None:
                # an out of a dvc.yaml stage (e.g. `prepare`): `dvc add` would refuse it;
                # commit the workspace content to dvc.lock instead
                stage = r.commit(str(target), force=True)[0]
                out = next(o for o in stage.outs if Path(o.fs_path) == target)
                dvc_file = root / "dvc.lock"
                r.scm_context.track_file(str(dvc_file))
                r.scm_context.track_changed_files()
                r.push(targets=[str(target)], remote=push_to)
            else:
                stage = r.add([str(target)])[0]
                out = stage.outs[0]
                dvc_file = Path(stage.path)
                r.push(targets=[stage.path], remote=push_to)
            version = DataVersion(
                path=target.relative_to(root).as_posix(),
                md5=out.hash_info.value,
                nfiles=out.meta.nfiles,
                size=out.meta.size,
                remote=push_to,
                dvc_file=dvc_file.relative_to(root).as_posix(),
            )
        log.info("versioned %s: %s (pushed to %s)", version.path, version.md5, push_to)
        return version

    return _serialized(root, f"version {target}", add_and_push)


def pull_dataset(
    version: DataVersion | str | os.PathLike,
    *,
    repo: str | os.PathLike = ".",
    remote: str | None = None,
) -> DataVersion:
    """Bring a recorded dataset version into the workspace from a DVC remote.

    If `version` is a DataVersion whose hash differs from the `.dvc` file in the workspace (an
    older or newer version, e.g. from an MLflow run's tags), the `.dvc` file is first rewritten
    to that version (what `git checkout REV -- path.dvc` would do), then pulled.

    Args:
        version: a DataVersion, or a tracked path (pulls the version its `.dvc` file records).
        repo: the DVC/git repository root.
        remote: remote to pull from (default: the version's remote, else as for push).
    """
    root = Path(repo).resolve()
    if not isinstance(version, DataVersion):
        current = current_version(version, repo=root)
        if current is None:
            raise DataError(f"{version}: not tracked by DVC (no {version}.dvc); version it first")
        version = current
    dvc_file = root / version.dvc_file
    in_lock = dvc_file.name == "dvc.lock"

    def pull() -> None:
        if in_lock:  # a pipeline out: its version is whatever dvc.lock records
            current = current_version(version.path, repo=root)
            if current is None or current.md5 != version.md5:
                raise DataError(
                    f"{version.path}: dvc.lock records {current.md5 if current else 'nothing'}, "
                    f"not {version.md5}; check out the dvc.lock of that version first "
                    "(git checkout REV -- dvc.lock)"
                )
        else:
            _record(dvc_file, version)
        with _open_repo(root) as r:
            pull_from = remote or version.remote or _default_remote(r)
            target = root / version.path if in_lock else dvc_file
            r.pull(targets=[str(target)], remote=pull_from)

    _serialized(root, f"pull {version.path}", pull)
    got = current_version(version.path, repo=root)
    if got is None or got.md5 != version.md5:  # pragma: no cover - DVC checks hashes itself
        raise DataError(f"{version.path}: pulled content does not match {version.md5}")
    return version


def pull_all(*, repo: str | os.PathLike = ".", remote: str | None = None) -> int:
    """`dvc pull` of everything the workspace tracks; returns the number of files fetched
    from the remote (0 when the local cache already had them)."""
    root = Path(repo).resolve()

    def pull() -> int:
        with _open_repo(root) as r:
            result = r.pull(remote=remote or _default_remote(r))
        stats = result.get("stats", {}) if isinstance(result, dict) else {}
        return int(stats.get("fetched", 0))

    return _serialized(root, "pull --all", pull)


def current_version(path: str | os.PathLike, repo: str | os.PathLike = ".") -> DataVersion | None:
    """The version the workspace records for `path`: its `<path>.dvc` file, or the dvc.lock
    entry of the pipeline stage that outputs it. None if the path is not tracked."""
    root, target = _resolve(repo, path)
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


def configure_s3_remote(
    name: str = S3_REMOTE,
    url: str | None = None,
    endpoint: str | None = None,
    repo: str | os.PathLike = ".",
    *,
    default: bool = False,
) -> dict[str, str]:
    """Point DVC remote `name` at an S3 bucket/prefix for this machine (`.dvc/config.local`).

    Args:
        name: remote name (default "s3", the one `.dvc/config` declares).
        url: `s3://bucket/prefix`; default P2P_DVC_REMOTE_URL.
        endpoint: S3 endpoint for MinIO/moto; default AWS_ENDPOINT_URL (unset = AWS).
        repo: the DVC repository root.
        default: also make it the default remote (on this machine).

    Returns:
        The remote section written (url, endpointurl): never credentials.
    """
    from p2p.data.storage import split_s3_url

    url = url or os.environ.get("P2P_DVC_REMOTE_URL")
    if not url:
        raise P2PError("no S3 remote URL: pass s3://bucket/prefix or set P2P_DVC_REMOTE_URL")
    split_s3_url(url)  # validates the form
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    section = {"url": url, **({"endpointurl": endpoint} if endpoint else {})}
    root = Path(repo).resolve()

    def write() -> None:
        from dvc.config import Config

        config = Config(dvc_dir=str(root / ".dvc"))
        with config.edit("local") as conf:
            conf.setdefault("remote", {})[name] = dict(section)
            if default:
                conf.setdefault("core", {})["remote"] = name

    _serialized(root, f"configure remote {name}", write)
    log.info("DVC remote %s -> %s (endpoint %s), in .dvc/config.local", name, url, endpoint)
    return section


def list_remotes(repo: str | os.PathLike = ".") -> list[tuple[str, str, str | None, bool]]:
    """(name, url, endpoint, is_default) of each DVC remote as p2p uses them (env applied)."""
    from dvc.config import Config

    root = Path(repo).resolve()
    if not (root / ".dvc").is_dir():
        raise P2PError(f"{root}: not a DVC repository (no .dvc/); run `dvc init`")
    conf = Config(dvc_dir=str(root / ".dvc"), config=_env_config() or None)
    default = S3_REMOTE if os.environ.get("P2P_DVC_REMOTE_URL") else conf["core"].get("remote")
    return [
        (name, str(sec.get("url")), sec.get("endpointurl"), name == default)
        for name, sec in sorted(conf["remote"].items())
    ]


# ----------------------------------------------------------------------------- internals


def _resolve(repo: str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
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


def _pipeline_stage(r: Any, target: Path) -> Any:
    """The dvc.yaml stage that outputs `target`, if any."""
    for stage in r.index.stages:
        if getattr(stage, "cmd", None) and any(Path(o.fs_path) == target for o in stage.outs):
            return stage
    return None


def _env_config() -> dict[str, Any]:
    """In-memory DVC config from the environment: the `s3` remote's URL and endpoint."""
    url = os.environ.get("P2P_DVC_REMOTE_URL")
    if not url:
        return {}
    remote: dict[str, str] = {"url": url}
    if os.environ.get("AWS_ENDPOINT_URL"):
        remote["endpointurl"] = os.environ["AWS_ENDPOINT_URL"]
    return {"remote": {S3_REMOTE: remote}}


@contextlib.contextmanager
def _open_repo(root: Path) -> Iterator[Any]:
    from dvc.repo import Repo

    with Repo(str(root), config=_env_config() or None) as r:
        yield r


def _default_remote(r: Any) -> str:
    if os.environ.get("P2P_DVC_REMOTE_URL"):
        return S3_REMOTE
    name = r.config["core"].get("remote")
    if not name:
        raise P2PError(
            f"{r.root_dir}: no DVC remote configured; add one (`dvc remote add -d NAME URL`) "
            "or set P2P_DVC_REMOTE_URL"
        )
    return name


def _record(dvc_file: Path, version: DataVersion) -> None:
    """Make `dvc_file` record `version` (atomic rewrite; no-op if it already does)."""
    target = Path(version.path).name
    current = None
    if dvc_file.is_file():
        current = yaml.safe_load(dvc_file.read_text()) or {}
        outs = current.get("outs") or [{}]
        if outs[0].get("md5") == version.md5:
            return
    out: dict[str, Any] = {"md5": version.md5}
    if version.size is not None:
        out["size"] = version.size
    if version.nfiles is not None:
        out["nfiles"] = version.nfiles
    out.update(hash="md5", path=target)
    doc = dict(current or {})
    doc["outs"] = [out]
    write_text_atomic(dvc_file, yaml.safe_dump(doc, sort_keys=False))
    log.info("%s now records %s", dvc_file, version.md5)


# One DVC operation at a time in this process: DVC resolves some targets against the current
# directory, so operations run with cwd = the repo root, and the cwd is process-wide.
_process_lock = threading.Lock()


def _serialized(root: Path, what: str, fn: Callable[[], T]) -> T:
    """Run one DVC operation at a time (threads and processes), in the repo root, retrying
    DVC's own lock."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from filelock import FileLock, Timeout

    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    if not _process_lock.acquire(timeout=LOCK_TIMEOUT_S):
        raise P2PError(f"{what}: another DVC call in this process held {root} too long")
    try:
        with FileLock(str(lock_dir / "p2p-versioning.lock"), timeout=LOCK_TIMEOUT_S):
            deadline = time.monotonic() + DVC_LOCK_RETRY_S
            delay = 0.5
            while True:
                try:
                    with contextlib.chdir(root):
                        return fn()
                except LockError:
                    if time.monotonic() > deadline:
                        raise P2PError(
                            f"{what}: the DVC repository {root} stayed locked for "
                            f"{DVC_LOCK_RETRY_S:.0f}s (another dvc command is running)"
                        ) from None
                    log.info(
                        "%s: DVC repo is locked by another command; retry in %.1fs", what, delay
                    )
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 8.0)
                except DvcException as e:
                    raise P2PError(f"{what}: {e}") from e
    except Timeout:
        raise P2PError(f"{what}: waited {LOCK_TIMEOUT_S:.0f}s for another p2p DVC call") from None
    finally:
        _process_lock.release()
