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

Pipeline outs: a path that a dvc.yaml stage outputs (data/raw/NAME from `prepare`) belongs to
the pipeline: its version lives in dvc.lock, written by `dvc repro` or, when a Prefect flow ran
the stage itself, by `commit_stages` (`dvc commit` of the stage: the same cmd, deps, params and
outs as `dvc repro` records). `version_dataset` refuses such a path (a `.dvc` file for it would
make `dvc repro` fail with "output is specified in: NAME.dvc, prepare").

This module is the one reader of DVC's files (`.dvc`, dvc.lock, the remote rule): shards,
training tags, evaluation and `p2p doctor` ask it. A data version has one type, `DataVersion`:
`.full` is what lineage tags and flow results carry (`<md5>.dir`, or `manifest-sha256:<hex>`
for data DVC has not recorded), `.short` the 12 characters for run names and MLflow run tags.

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from p2p.atomic import write_text_atomic
from p2p.errors import DataError, P2PError

if TYPE_CHECKING:
    from p2p.data.shards import ShardIndex

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFEST_PREFIX = "manifest-sha256:"  # a data version DVC has not recorded: the manifest's hash
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
            stage = _pipeline_stage(r, target)
            if stage is not None:  # `dvc add` would refuse it, or make `dvc repro` fail later
                rel = target.relative_to(root).as_posix()
                raise DataError(
                    f"{rel}: is the output of stage {stage.name!r} in dvc.yaml (data.raw_dir); "
                    f"`dvc repro {stage.name}` versions it in dvc.lock, `p2p data version` is "
                    "for datasets outside the pipeline"
                )
            r.scm_context.autostage = True  # `git add` the .dvc file and .gitignore
            stage = r.add([str(target)])[0]
            out = stage.outs[0]
            r.push(targets=[stage.path], remote=push_to)
            version = _version_of(root, out, Path(stage.path), push_to)
        log.info("versioned %s: %s (pushed to %s)", version.path, version.md5, push_to)
        return version

    return _serialized(root, f"version {target}", add_and_push)


def commit_stages(
    stages: list[str], *, remote: str | None = None, repo: str | os.PathLike = "."
) -> dict[str, DataVersion]:
    """Record dvc.yaml stages that were run outside `dvc repro` (by a Prefect flow) in dvc.lock.

    `dvc commit` of each stage: DVC hashes the stage's deps, params and outs as dvc.yaml
    declares them and writes dvc.lock exactly as `dvc repro` would have, so a later `dvc repro`
    finds them up to date. Only call it after running the stage with the same params as
    params.yaml. Stages dvc.lock and the .gitignore files with git (committing is the caller's
    decision) and pushes the cached outs, like `dvc repro && dvc push`.

    Returns:
        {out path: DataVersion} of each cached directory or file out of the stages.
    """
    root = Path(repo).resolve()
    if not (root / ".dvc").is_dir():
        raise P2PError(f"{root}: not a DVC repository (no .dvc/); run `dvc init`")

    def commit_and_push() -> dict[str, DataVersion]:
        with _open_repo(root) as r:
            push_to = remote or _default_remote(r)
            r.scm_context.autostage = True
            versions: dict[str, DataVersion] = {}
            for name in stages:
                for stage in r.commit(name, force=True):
                    for out in stage.outs:
                        if out.use_cache and out.hash_info and out.hash_info.value:
                            v = _version_of(root, out, root / "dvc.lock", push_to)
                            versions[v.path] = v
            r.scm_context.track_file(str(root / "dvc.lock"))
            r.scm_context.track_changed_files()
            r.push(targets=list(stages), remote=push_to)
        return versions

    versions = _serialized(root, f"commit {', '.join(stages)}", commit_and_push)
    log.info("dvc.lock records stages %s", ", ".join(stages))
    return versions


def pipeline_stage(path: str | os.PathLike, repo: str | os.PathLike = ".") -> str | None:
    """The name of the dvc.yaml stage that outputs `path`; None if no stage does."""
    root, target = _resolve(repo, path)
    if not (root / "dvc.yaml").is_file():
        return None

    def find() -> str | None:
        with _open_repo(root) as r:
            stage = _pipeline_stage(r, target)
            return None if stage is None else stage.name

    return _serialized(root, f"stages of {target}", find)


def stage_params(repo: str | os.PathLike = ".") -> dict[str, dict[str, Any]]:
    """{stage: {"params": [params.yaml keys or groups], "outs": [paths], "deps": [paths]}} of
    dvc.yaml, `${...}` resolved from params.yaml; {} without dvc.yaml. Outs include metrics
    and plots."""
    root = Path(repo).resolve()
    if not (root / "dvc.yaml").is_file():
        return {}
    from dvc.dependency.param import ParamsDependency

    def read() -> dict[str, dict[str, Any]]:
        with _open_repo(root) as r:
            return {
                s.name: {
                    "params": [
                        k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params
                    ],
                    "outs": [str(o.def_path) for o in s.outs],
                    "deps": [
                        str(d.def_path) for d in s.deps if not isinstance(d, ParamsDependency)
                    ],
                }
                for s in r.index.stages
                if getattr(s, "cmd", None)
            }

    return _serialized(root, "read dvc.yaml", read)


def pipeline_owned(path: str, outs: list[str]) -> bool:
    """True for a repo-relative path the pipeline writes: dvc.lock, `.dvc` files, an out (or a
    file under one) and the `.gitignore` DVC keeps beside each out."""
    if path == "dvc.lock" or path.endswith(".dvc"):
        return True
    for out in outs:
        out = out.rstrip("/")
        if path == out or path.startswith(out + "/"):
            return True
        parent = out.rsplit("/", 1)[0] if "/" in out else ""
        if path == (f"{parent}/.gitignore" if parent else ".gitignore"):
            return True
    return False


def code_changes(where: str | os.PathLike) -> list[str]:
    """Uncommitted changes to git-tracked files of the checkout at `where` (repo-relative
    paths), leaving out what the pipeline itself writes (see `pipeline_owned`): a demo or a
    `dvc repro` in a fresh clone does not make its own code version "dirty"."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    top = Path(git("rev-parse", "--show-toplevel").strip())
    status = git("status", "--porcelain", "-z", "--untracked-files=no").split("\0")
    changed, i = [], 0
    while i < len(status):
        entry = status[i]
        i += 1
        if len(entry) < 4:
            continue
        changed.append(entry[3:])
        if entry[0] in "RC":  # a rename/copy: the next field is its source path
            changed.append(status[i])
            i += 1
    if not changed or not (top / ".dvc").is_dir():
        return changed
    outs: list[str] = []
    try:
        for stage in stage_params(top).values():
            outs.extend(stage["outs"])
    except P2PError as e:  # a dvc.yaml DVC cannot read: only dvc.lock and .dvc files are known
        log.warning("%s: cannot list the pipeline's outs (%s)", top, e)
    outs.extend(p[: -len(".dvc")] for p in changed if p.endswith(".dvc"))
    return [p for p in changed if not pipeline_owned(p, outs)]


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


def recorded_version(path: str | os.PathLike) -> DataVersion | None:
    """`current_version` of `path` in the DVC repository above it; None outside one."""
    target = Path(path).resolve()
    root = next((p for p in target.parents if (p / ".dvc").is_dir()), None)
    return None if root is None else current_version(target, repo=root)


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
    conf = Config(dvc_dir=str(root / ".dvc"), config=env_config() or None)
    default = default_remote_name(conf)
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


def _version_of(root: Path, out: Any, dvc_file: Path, remote: str | None) -> DataVersion:
    """The DataVersion of a DVC Output just added or committed."""
    return DataVersion(
        path=Path(out.fs_path).relative_to(root).as_posix(),
        md5=out.hash_info.value,
        nfiles=out.meta.nfiles,
        size=out.meta.size,
        remote=remote,
        dvc_file=dvc_file.relative_to(root).as_posix(),
    )


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
def _open_repo(root: Path) -> Iterator[Any]:
    from dvc.repo import Repo

    with Repo(str(root), config=env_config() or None) as r:
        yield r


def _default_remote(r: Any) -> str:
    name = default_remote_name(r.config)
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
