"""`p2p data download`: a local HTTP server (127.0.0.1, Range support) serves generated
tarballs in the published layout; resumed downloads, recorded checksums, unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from download_fixtures import Server, add_member, facades_tarball

from p2p.cli import main
from p2p.data.download import DATASETS, download_dataset, safe_extract
from p2p.data.manifest import load_manifest
from p2p.errors import DataError


@pytest.fixture
def server(monkeypatch):
    s = Server({"/datasets/facades.tar.gz": facades_tarball()})
    monkeypatch.setenv("P2P_DATASETS_URL", s.url)
    yield s
    s.close()


def test_registry_of_the_papers_datasets():
    assert set(DATASETS) == {
        "facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day",
    }  # fmt: skip
    assert DATASETS["facades"].direction == "BtoA" and DATASETS["cityscapes"].direction == "BtoA"
    assert DATASETS["edges2shoes"].direction == "AtoB"
    assert all(s.sha256 is None for s in DATASETS.values())  # none published, none invented


def test_download_imports_with_direction_and_records_checksum(server, tmp_path):
    d = download_dataset("facades", dest=tmp_path / "dl", out=tmp_path / "raw" / "facades")
    body = server.files["/datasets/facades.tar.gz"]
    assert d.size == len(body) and d.direction == "BtoA" and not d.cached
    assert d.counts["train"] == 4 and d.counts["val"] == 2
    assert len(load_manifest(d.raw_dir).pairs("train")) == 4
    side = json.loads((tmp_path / "dl" / "facades.tar.gz.json").read_text())
    assert side["size"] == len(body) and side["sha256"] == d.sha256 and side["direction"] == "BtoA"
    # the extracted folder stays: it is data.source of params/facades.yaml
    assert len(list((tmp_path / "dl" / "facades" / "train").iterdir())) == 4
    # again: the archive is re-used after checking it against the sidecar, no request made
    n = len(server.ranges)
    again = download_dataset("facades", dest=tmp_path / "dl", out=tmp_path / "raw" / "facades")
    assert again.cached and again.sha256 == d.sha256 and len(server.ranges) == n


def test_interrupted_download_resumes_with_range(server, tmp_path):
    body = server.files["/datasets/facades.tar.gz"]
    server.cut_after = len(body) // 3
    with pytest.raises(DataError, match="interrupted at .*run it again to resume"):
        download_dataset("facades", dest=tmp_path, import_=False)
    part = tmp_path / "facades.tar.gz.part"
    assert part.stat().st_size == len(body) // 3 and not (tmp_path / "facades.tar.gz").exists()
    d = download_dataset("facades", dest=tmp_path, import_=False)
    assert server.ranges[-1] == f"bytes={len(body) // 3}-"  # resumed, not restarted
    assert d.resumed_from == len(body) // 3 and d.size == len(body)
    assert (tmp_path / "facades.tar.gz").read_bytes() == body and not part.exists()


def test_redownload_is_verified_against_the_recorded_checksum(server, tmp_path):
    download_dataset("facades", dest=tmp_path, import_=False)
    (tmp_path / "facades.tar.gz").unlink()
    server.files["/datasets/facades.tar.gz"] = facades_tarball(n_train=5)  # changed upstream
    with pytest.raises(DataError, match="but the recorded download says"):
        download_dataset("facades", dest=tmp_path, import_=False)
    assert not (tmp_path / "facades.tar.gz").exists()  # the mismatching file is not kept


def test_unknown_and_missing_datasets(server, tmp_path):
    with pytest.raises(DataError, match="nope: not a published pix2pix dataset; one of facades"):
        download_dataset("nope", dest=tmp_path)
    with pytest.raises(DataError, match=r"cityscapes.tar.gz: HTTP 404.*cityscapes-dataset.com"):
        download_dataset("cityscapes", dest=tmp_path)


def _tar(tmp_path: Path, build) -> Path:
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        build(tar)
    return path


def test_malicious_archives_are_rejected(tmp_path):
    def traversal(tar):
        add_member(tar, "facades/train/1.png", b"x")
        add_member(tar, "../evil.txt", b"owned")

    def symlink(tar):
        info = tarfile.TarInfo("facades/train/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    def absolute(tar):
        add_member(tar, "/tmp/evil.txt", b"owned")

    def device(tar):
        info = tarfile.TarInfo("facades/dev")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)

    cases = {"traversal": (traversal, "outside"), "symlink": (symlink, "link"),
             "absolute": (absolute, "outside"), "device": (device, "special file")}  # fmt: skip
    for name, (build, why) in cases.items():
        out = tmp_path / name
        out.mkdir()
        with pytest.raises(DataError, match=f"unsafe member .*{why}"):
            safe_extract(_tar(out, build), out / "x")
        assert not (out / "x").exists() and not (tmp_path / "evil.txt").exists(), name


def test_malicious_download_writes_nothing(monkeypatch, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        add_member(tar, "facades/train/../../../evil.txt", b"owned")
    s = Server({"/datasets/facades.tar.gz": buf.getvalue()})
    monkeypatch.setenv("P2P_DATASETS_URL", s.url)
    try:
        with pytest.raises(DataError, match="unsafe member"):
            download_dataset("facades", dest=tmp_path / "dl", out=tmp_path / "raw")
    finally:
        s.close()
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_cli_download(server, tmp_path, capsys):
    out = tmp_path / "raw"
    rc = main(["data", "download", "facades", "--dest", str(tmp_path / "dl"), "--out", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "imported" in captured.out and "train 4" in captured.out
    assert "direction: BtoA" in captured.err and "params/facades.yaml" in captured.err
    with pytest.raises(SystemExit) as e:  # argparse choices
        main(["data", "download", "nope"])
    assert e.value.code == 2
