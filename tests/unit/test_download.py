"""`p2p data download`: a local HTTP server (127.0.0.1, Range support) serves generated
tarballs in the published layout; resumed downloads, recorded checksums, unsafe archives."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import noise
from PIL import Image

from p2p.cli import main
from p2p.data.download import DATASETS, download_dataset, safe_extract
from p2p.data.pairs import load_manifest
from p2p.errors import DataError


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def facades_tarball(n_train: int = 4, n_val: int = 2) -> bytes:
    """facades.tar.gz as published: facades/{train,val}/N.jpg (here PNG), A|B side by side."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                a = noise(32, 32, seed=100 * len(split) + i)
                _add(tar, f"facades/{split}/{i + 1}.png", _png(np.concatenate([a, 255 - a], 1)))
    return buf.getvalue()


class Server:
    """Files by URL path; honours `Range: bytes=N-`; `cut_after` truncates the next
    full response after that many bytes (a dropped connection)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut_after, self.ranges = files, None, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                part = body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if outer.cut_after is not None:
                    part, outer.cut_after = part[: outer.cut_after], None
                    self.wfile.write(part)
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
        _add(tar, "facades/train/1.png", b"x")
        _add(tar, "../evil.txt", b"owned")

    def symlink(tar):
        info = tarfile.TarInfo("facades/train/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)

    def absolute(tar):
        _add(tar, "/tmp/evil.txt", b"owned")

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
        _add(tar, "facades/train/../../../evil.txt", b"owned")
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
