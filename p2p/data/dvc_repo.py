"""DVC remotes and serialized access to a DVC repository, for `p2p.data.versioning`.

Remotes (see `.dvc/config`):
- `local` (default): `.dvc/storage` inside the repo; works with no server.
- `s3`: its URL and endpoint are per machine. Either export `P2P_DVC_REMOTE_URL=s3://bucket/prefix`
  (plus `AWS_ENDPOINT_URL` for MinIO/moto), which `env_config` applies in memory and then pushes
  to `s3` by default, or persist them with `configure_s3_remote` / `p2p data remote --s3 URL`,
  which writes `.dvc/config.local` (git-ignored). Credentials stay in the environment (boto3
  chain); nothing here writes them to a config file.

Concurrency: DVC's repo lock fails fast when another DVC command holds it. Calls into DVC are
serialized (`serialized`) by a process-wide lock plus a file lock in `.dvc/tmp/` (other
processes), and a remaining `LockError` (e.g. a `dvc repro` running in a shell) is retried with
backoff. DVC resolves some targets against the current directory, so each call runs with the
working directory set to the repo root (a no-op for the usual repo=".").
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from p2p.errors import P2PError

log = logging.getLogger("p2p.data.versioning")  # the logger name from before the split

T = TypeVar("T")

S3_REMOTE = "s3"  # the name of the S3 remote in .dvc/config
LOCK_TIMEOUT_S = 600.0  # how long a call waits for another p2p DVC call in this repo
DVC_LOCK_RETRY_S = 120.0  # how long a call retries DVC's own lock held by a foreign process


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

    serialized(root, f"configure remote {name}", write)
    log.info("DVC remote %s -> %s (endpoint %s), in .dvc/config.local", name, url, endpoint)
    return section


def list_remotes(repo: str | os.PathLike = ".") -> list[tuple[str, str, str | None, bool]]:
    """(name, url, endpoint, is_default) of each DVC remote as p2p uses them (env applied)."""
    from dvc.config import Config

    root = Path(repo).resolve()
    if not (root / ".dvc").is_dir():
        raise P2PError(f"{root}: not a DVC repository (no .dvc/); run `dvc init`")
    conf = Config(dvc_dir=str(root / ".dvc"), config=env_config() or None)
    default = default_remote_name(conf)
    return [
        (name, str(sec.get("url")), sec.get("endpointurl"), name == default)
        for name, sec in sorted(conf["remote"].items())
    ]


def env_config(url: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
    """In-memory DVC config for the `s3` remote: `url` (default P2P_DVC_REMOTE_URL) and
    `endpoint` (default AWS_ENDPOINT_URL); {} without a URL."""
    url = url or os.environ.get("P2P_DVC_REMOTE_URL")
    if not url:
        return {}
    remote: dict[str, str] = {"url": url}
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        remote["endpointurl"] = endpoint
    return {"remote": {S3_REMOTE: remote}}


def default_remote_name(config: Any, url: str | None = None) -> str | None:
    """The remote pushes and pulls use: `s3` when an S3 URL is set (`url`, default
    P2P_DVC_REMOTE_URL), else the config's `core.remote`; None if neither."""
    if url or os.environ.get("P2P_DVC_REMOTE_URL"):
        return S3_REMOTE
    return config["core"].get("remote") or None


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[Any]:
    from dvc.repo import Repo

    with Repo(str(root), config=env_config() or None) as r:
        yield r


def default_remote(r: Any) -> str:
    name = default_remote_name(r.config)
    if not name:
        raise P2PError(
            f"{r.root_dir}: no DVC remote configured; add one (`dvc remote add -d NAME URL`) "
            "or set P2P_DVC_REMOTE_URL"
        )
    return name


# One DVC operation at a time in this process: DVC resolves some targets against the current
# directory, so operations run with cwd = the repo root, and the cwd is process-wide.
_process_lock = threading.Lock()


def serialized(root: Path, what: str, fn: Callable[[], T]) -> T:
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
