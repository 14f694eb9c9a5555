"""A local dataset server for `p2p data download` tests: 127.0.0.1, HTTP Range support, and
tarballs in the published pix2pix layout."""

from __future__ import annotations

import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from data_fixtures import noise
from PIL import Image


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
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
                add_member(
                    tar, f"facades/{split}/{i + 1}.png", _png(np.concatenate([a, 255 - a], 1))
                )
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
