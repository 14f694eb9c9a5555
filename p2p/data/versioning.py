"""Dataset versions with DVC: `dvc add` + git-staged `.dvc` file + push, from Python.

A dataset version is DVC's content hash of the directory (`<md5>.dir`), recorded in
`<path>.dvc` next to the data; git tracks the `.dvc` file, the DVC remote holds the bytes.
`version_dataset` is what a Prefect task calls; `pull_dataset` brings any recorded version back.

Pipeline outs: a path that a dvc.yaml stage outputs (data/raw/NAME from `prepare`) belongs to
the pipeline: its version lives in dvc.lock, written by `dvc repro` or, when a Prefect flow ran
the stage itself, by `commit_stages` (`dvc commit` of the stage: the same cmd, deps, params and
outs as `dvc repro` records). `version_dataset` refuses such a path (a `.dvc` file for it would
make `dvc repro` fail with "output is specified in: NAME.dvc, prepare").

Modules: `p2p.data.data_version` (the one reader of DVC's files: `.dvc`, dvc.lock, and the
`DataVersion` type; no DVC import), `p2p.data.dvc_repo` (remotes, the S3 remote rule, serialized
repository access); this module writes versions. Their public names are re-exported here, so
`from p2p.data.versioning import DataVersion, current_version, ...` keeps working.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from p2p.atomic import write_text_atomic
from p2p.data.data_version import (
    MANIFEST_PREFIX,
    DataVersion,
    current_version,
    recorded_version,
    resolve_target,
    short_version,
)
from p2p.data.dvc_repo import (
    DVC_LOCK_RETRY_S,
    LOCK_TIMEOUT_S,
    S3_REMOTE,
    configure_s3_remote,
    default_remote,
    default_remote_name,
    env_config,
    list_remotes,
    open_repo,
    serialized,
)
from p2p.errors import DataError, P2PError

__all__ = [
    "DVC_LOCK_RETRY_S",
    "LOCK_TIMEOUT_S",
    "MANIFEST_PREFIX",
    "S3_REMOTE",
    "DataVersion",
    "code_changes",
    "commit_stages",
    "configure_s3_remote",
    "current_version",
    "default_remote_name",
    "env_config",
    "list_remotes",
    "pipeline_owned",
    "pipeline_stage",
    "pull_all",
    "pull_dataset",
    "recorded_version",
    "short_version",
    "stage_params",
    "version_dataset",
]

log = logging.getLogger(__name__)


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
    root, target = resolve_target(repo, path)
    if not target.exists():
        raise DataError(f"{target}: dataset path does not exist")

    def add_and_push() -> DataVersion:
        with open_repo(root) as r:
            push_to = remote or default_remote(r)
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

    return serialized(root, f"version {target}", add_and_push)


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
        with open_repo(root) as r:
            push_to = remote or default_remote(r)
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

    versions = serialized(root, f"commit {', '.join(stages)}", commit_and_push)
    log.info("dvc.lock records stages %s", ", ".join(stages))
    return versions


def pipeline_stage(path: str | os.PathLike, repo: str | os.PathLike = ".") -> str | None:
    """The name of the dvc.yaml stage that outputs `path`; None if no stage does."""
    root, target = resolve_target(repo, path)
    if not (root / "dvc.yaml").is_file():
        return None

    def find() -> str | None:
        with open_repo(root) as r:
            stage = _pipeline_stage(r, target)
            return None if stage is None else stage.name

    return serialized(root, f"stages of {target}", find)


def stage_params(repo: str | os.PathLike = ".") -> dict[str, dict[str, Any]]:
    """{stage: {"params": [params.yaml keys or groups], "outs": [paths], "deps": [paths]}} of
    dvc.yaml, `${...}` resolved from params.yaml; {} without dvc.yaml. Outs include metrics
    and plots."""
    root = Path(repo).resolve()
    if not (root / "dvc.yaml").is_file():
        return {}
    from dvc.dependency.param import ParamsDependency

    def read() -> dict[str, dict[str, Any]]:
        with open_repo(root) as r:
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

    return serialized(root, "read dvc.yaml", read)


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
        with open_repo(root) as r:
            pull_from = remote or version.remote or default_remote(r)
            target = root / version.path if in_lock else dvc_file
            r.pull(targets=[str(target)], remote=pull_from)

    serialized(root, f"pull {version.path}", pull)
    got = current_version(version.path, repo=root)
    if got is None or got.md5 != version.md5:  # pragma: no cover - DVC checks hashes itself
        raise DataError(f"{version.path}: pulled content does not match {version.md5}")
    return version


def pull_all(*, repo: str | os.PathLike = ".", remote: str | None = None) -> int:
    """`dvc pull` of everything the workspace tracks; returns the number of files fetched
    from the remote (0 when the local cache already had them)."""
    root = Path(repo).resolve()

    def pull() -> int:
        with open_repo(root) as r:
            result = r.pull(remote=remote or default_remote(r))
        stats = result.get("stats", {}) if isinstance(result, dict) else {}
        return int(stats.get("fetched", 0))

    return serialized(root, "pull --all", pull)


# ----------------------------------------------------------------------------- internals


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


def _pipeline_stage(r: Any, target: Path) -> Any:
    """The dvc.yaml stage that outputs `target`, if any."""
    for stage in r.index.stages:
        if getattr(stage, "cmd", None) and any(Path(o.fs_path) == target for o in stage.outs):
            return stage
    return None


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
