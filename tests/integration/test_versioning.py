"""DVC dataset versioning through p2p.data.versioning: real DVC, real git, temp repos, the
project's own .dvc/config (local default remote) and an S3 remote on the moto server."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from p2p.data import storage
from p2p.data.versioning import (
    DataVersion,
    code_changes,
    commit_stages,
    configure_s3_remote,
    current_version,
    pipeline_stage,
    pull_all,
    pull_dataset,
    version_dataset,
)
from p2p.errors import DataError

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A fresh git + DVC repo carrying the project's .dvc/config and .dvc/.gitignore."""
    from dvc.repo import Repo

    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    Repo.init(str(root)).close()
    for name in ("config", ".gitignore"):
        shutil.copyfile(PROJECT / ".dvc" / name, root / ".dvc" / name)
    return root


def _dataset(root: Path, name: str, seed: int = 0, n: int = 3) -> Path:
    d = root / "data" / "raw" / name
    for i in range(n):
        (d / "A" / "train").mkdir(parents=True, exist_ok=True)
        (d / "A" / "train" / f"k{i}.png").write_bytes(bytes([seed, i]) * 100)
    (d / "manifest.json").write_text(f'{{"name": "{name}", "seed": {seed}}}')
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
    }


def _forget_local(root: Path, d: Path) -> None:
    """Delete the data and DVC's cache: only the remote still has the bytes."""
    shutil.rmtree(d)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


def test_version_push_pull_local_remote(repo):
    d = _dataset(repo, "demo")
    before = _snapshot(d)
    v = version_dataset("data/raw/demo", repo=repo)
    assert v.md5.endswith(".dir") and len(v.md5) == 36
    assert (v.path, v.dvc_file, v.nfiles, v.remote) == (
        "data/raw/demo",
        "data/raw/demo.dvc",
        4,
        "local",
    )
    assert v.size == sum(len(b) for b in before.values())
    assert current_version("data/raw/demo", repo=repo).md5 == v.md5
    # the .dvc file and the .gitignore are staged; the data itself is ignored by git
    staged = _git(repo, "diff", "--cached", "--name-only").split()
    assert {"data/raw/demo.dvc", "data/raw/.gitignore"} <= set(staged)
    assert _git(repo, "check-ignore", "data/raw/demo/manifest.json").strip()
    # the default local remote lives in .dvc/storage, which git ignores
    assert any((repo / ".dvc" / "storage").rglob("*.dir"))
    assert _git(repo, "check-ignore", ".dvc/storage/files").strip()

    _forget_local(repo, d)
    assert pull_dataset(v, repo=repo) == v
    assert _snapshot(d) == before
    # pulling by path uses the version recorded in the .dvc file
    _forget_local(repo, d)
    assert pull_dataset("data/raw/demo", repo=repo).md5 == v.md5
    assert _snapshot(d) == before
    _forget_local(repo, d)
    assert pull_all(repo=repo) == 5  # 4 files + the directory listing
    assert _snapshot(d) == before


def test_pull_an_older_version(repo):
    d = _dataset(repo, "demo", seed=1)
    v1_files = _snapshot(d)
    v1 = version_dataset(d, repo=repo)  # absolute paths work too
    (d / "A" / "train" / "k0.png").write_bytes(b"changed")
    (d / "A" / "train" / "k9.png").write_bytes(b"new file")
    v2 = version_dataset("data/raw/demo", repo=repo)
    assert v2.md5 != v1.md5 and v2.nfiles == v1.nfiles + 1
    v2_files = _snapshot(d)

    pull_dataset(DataVersion.from_dict(v1.to_dict()), repo=repo)  # e.g. from an MLflow tag
    assert _snapshot(d) == v1_files
    assert current_version("data/raw/demo", repo=repo).md5 == v1.md5
    pull_dataset(v2, repo=repo)
    assert _snapshot(d) == v2_files


def test_pipeline_out_is_versioned_through_dvc_lock(repo):
    """data/raw/NAME as the out of a dvc.yaml stage (the `prepare` stage): `version_dataset`
    refuses it (a .dvc file would make `dvc repro` fail); `commit_stages` records the stage in
    dvc.lock, as `dvc repro` would after running it."""
    (repo / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: p2p data prepare\n    outs:\n      - data/raw/gen\n"
    )
    d = _dataset(repo, "gen", seed=4)
    before = _snapshot(d)
    with pytest.raises(DataError, match=r"output of stage 'prepare'.*dvc repro prepare"):
        version_dataset("data/raw/gen", repo=repo)
    assert not (repo / "data" / "raw" / "gen.dvc").exists()
    assert pipeline_stage("data/raw/gen", repo=repo) == "prepare"
    assert pipeline_stage("data/raw/other", repo=repo) is None
    pushed = commit_stages(["prepare"], repo=repo)
    v = pushed["data/raw/gen"]
    assert v.dvc_file == "dvc.lock" and v.md5.endswith(".dir") and v.nfiles == 4
    assert v.remote == "local"
    assert current_version("data/raw/gen", repo=repo) == DataVersion(
        "data/raw/gen", v.md5, 4, v.size, None, "dvc.lock"
    )
    assert {"dvc.lock", "data/raw/.gitignore"} <= set(
        _git(repo, "diff", "--cached", "--name-only").split()
    )
    status = subprocess.run(
        ["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert status.stdout.strip() == "{}"  # `dvc repro` would have nothing to do
    _forget_local(repo, d)
    pull_dataset(v, repo=repo)
    assert _snapshot(d) == before
    other = DataVersion.from_dict({**v.to_dict(), "md5": "0" * 32 + ".dir"})
    with pytest.raises(DataError, match="check out the dvc.lock of that version"):
        pull_dataset(other, repo=repo)


def test_code_changes_leave_out_what_the_pipeline_writes(repo):
    """git_dirty of a registered model: dvc.lock, .dvc files, outs and the .gitignore beside
    them are the pipeline's; any other tracked change is a code change."""
    _git(repo, "config", "user.email", "ci@example.com")
    _git(repo, "config", "user.name", "ci")
    (repo / "dvc.yaml").write_text(
        "stages:\n  prepare:\n    cmd: p2p data prepare\n    outs:\n      - data/raw/gen\n"
        "    metrics:\n      - reports/m.json:\n          cache: false\n"
    )
    (repo / "code.py").write_text("x = 1\n")
    (repo / "reports").mkdir()
    (repo / "reports" / "m.json").write_text("{}")
    _dataset(repo, "gen")
    commit_stages(["prepare"], repo=repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    assert code_changes(repo) == []
    (repo / "reports" / "m.json").write_text('{"psnr": 1}')
    (repo / "data" / "raw" / "gen" / "manifest.json").write_text("changed")
    commit_stages(["prepare"], repo=repo)  # dvc.lock changes
    assert {"dvc.lock", "reports/m.json"} <= set(_git(repo, "diff", "HEAD", "--name-only").split())
    assert code_changes(repo) == []
    (repo / "code.py").write_text("x = 2\n")
    assert code_changes(repo) == ["code.py"]


def test_bad_paths(repo, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        version_dataset("data/raw/missing", repo=repo)
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(DataError, match="must be inside the repository"):
        version_dataset(outside, repo=repo)
    assert current_version("data/raw/missing", repo=repo) is None
    with pytest.raises(DataError, match="not tracked by DVC"):
        pull_dataset("data/raw/missing", repo=repo)


def test_s3_remote_push_pull(repo, s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("P2P_DVC_REMOTE_URL", raising=False)
    section = configure_s3_remote("s3", f"s3://{s3_bucket}/dvc", repo=repo)
    assert section == {"url": f"s3://{s3_bucket}/dvc", "endpointurl": s3_server}
    local_cfg = (repo / ".dvc" / "config.local").read_text()
    assert s3_bucket in local_cfg and s3_server in local_cfg
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in local_cfg  # "testing": never written
    assert "access_key" not in local_cfg and "secret" not in local_cfg
    assert s3_bucket not in (repo / ".dvc" / "config").read_text()  # per-machine only

    d = _dataset(repo, "facades", seed=2)
    before = _snapshot(d)
    v = version_dataset("data/raw/facades", remote="s3", repo=repo)
    assert v.remote == "s3"
    objects = storage.list_urls(f"s3://{s3_bucket}/dvc")
    assert any(u.endswith(v.md5.replace(".dir", "")[2:] + ".dir") for u in objects)
    assert len(objects) == 5  # 4 files + the .dir listing
    _forget_local(repo, d)
    pull_dataset(v, repo=repo)
    assert _snapshot(d) == before


def test_s3_remote_from_environment(repo, s3_bucket, monkeypatch):
    """P2P_DVC_REMOTE_URL alone routes pushes to S3, with nothing written to config files."""
    monkeypatch.setenv("P2P_DVC_REMOTE_URL", f"s3://{s3_bucket}/env-dvc")
    d = _dataset(repo, "maps", seed=3)
    before = _snapshot(d)
    v = version_dataset("data/raw/maps", repo=repo)
    assert v.remote == "s3"
    assert len(storage.list_urls(f"s3://{s3_bucket}/env-dvc")) == 5
    assert not (repo / ".dvc" / "config.local").exists()
    _forget_local(repo, d)
    pull_dataset(v, repo=repo)
    assert _snapshot(d) == before


def test_concurrent_calls_in_threads(repo):
    names = ["ds0", "ds1", "ds2"]
    for i, n in enumerate(names):
        _dataset(repo, n, seed=10 + i)
    results: dict[str, DataVersion] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            results[name] = version_dataset(f"data/raw/{name}", repo=repo)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == names and len({v.md5 for v in results.values()}) == 3
    staged = set(_git(repo, "diff", "--cached", "--name-only").split())
    assert {f"data/raw/{n}.dvc" for n in names} <= staged
    ignored = (repo / "data" / "raw" / ".gitignore").read_text().split()
    assert sorted(ignored) == [f"/{n}" for n in names]  # no lost update of the shared .gitignore


_VERSION_SCRIPT = textwrap.dedent(
    """
    import sys
    from p2p.data.versioning import version_dataset
    v = version_dataset(sys.argv[2], repo=sys.argv[1])
    print(v.md5)
    """
)


def test_concurrent_calls_in_processes(repo):
    for i in range(2):
        _dataset(repo, f"p{i}", seed=20 + i)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _VERSION_SCRIPT, str(repo), f"data/raw/p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    for i, (out, _) in enumerate(outs):
        assert current_version(f"data/raw/p{i}", repo=repo).md5 == out.strip()


_HOLD_DVC_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dvc.lock import make_lock
    lock = make_lock(str(Path(sys.argv[1]) / ".dvc" / "tmp" / "lock"))
    lock.lock()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    lock.unlock()
    """
)


def test_waits_for_a_foreign_dvc_lock(repo, caplog):
    """A `dvc` command elsewhere holds the repo lock longer than DVC's own 3 s wait: the call
    retries instead of failing with "Unable to acquire lock"."""
    _dataset(repo, "locked")
    (repo / ".dvc" / "tmp").mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_DVC_LOCK, str(repo), "6"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.INFO, logger="p2p.data.versioning"):
            v = version_dataset("data/raw/locked", repo=repo)
        assert holder.poll() is not None  # it could only finish after the holder let go
        assert "locked by another command; retry" in caplog.text
        assert v.md5.endswith(".dir")
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
