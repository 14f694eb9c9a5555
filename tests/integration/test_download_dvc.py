"""`p2p data download NAME --version`: the downloaded, imported dataset is DVC-versioned through
`p2p data version`'s code path (real git + DVC repo, local HTTP server)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from download_fixtures import Server, facades_tarball

from p2p.cli import main
from p2p.data.versioning import current_version

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    from dvc.repo import Repo

    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    Repo.init(str(root)).close()
    for name in ("config", ".gitignore"):
        shutil.copyfile(PROJECT / ".dvc" / name, root / ".dvc" / name)
    monkeypatch.chdir(root)
    return root


def test_download_and_version(repo, monkeypatch, capsys):
    server = Server({"/datasets/facades.tar.gz": facades_tarball()})
    monkeypatch.setenv("P2P_DATASETS_URL", server.url)
    try:
        assert main(["data", "download", "facades", "--version"]) == 0
    finally:
        server.close()
    out = capsys.readouterr().out
    v = current_version("data/raw/facades", repo=repo)
    assert v is not None and v.md5.endswith(".dir") and f"data version {v.md5}" in out
    assert (repo / "data" / "raw" / "facades.dvc").exists()
    assert (repo / "data" / "downloads" / "facades" / "train").is_dir()
