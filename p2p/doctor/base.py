"""What every doctor check shares: the result type, the context, OK/SKIP/FAIL and the network
helpers (TCP reachability, a bounded HTTP GET, short error bodies)."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from p2p.config import ExperimentConfig
from p2p.settings import Settings, redact_uri

OK, SKIP, FAIL = "OK", "SKIP", "FAIL"
DEFAULT_TIMEOUT = 5.0  # seconds per network call


@dataclass(frozen=True)
class Check:
    """The outcome of one check: status OK | SKIP | FAIL, what was checked, and why."""

    name: str
    status: str
    target: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        """`OK   s3        http://127.0.0.1:5000 (3 buckets)` / `FAIL mlflow    URL: reason`."""
        head = f"{self.status:<4} {self.name:<9} {self.target}"
        if not self.detail:
            return head
        return f"{head}: {self.detail}" if self.failed else f"{head} ({self.detail})"


@dataclass(frozen=True)
class Context:
    """What every check reads: the environment settings, the resolved params, the limits."""

    settings: Settings
    cfg: ExperimentConfig
    timeout: float
    cwd: Path


class _Unreachable(Exception):
    """An endpoint did not answer; the message is the specific reason."""


# ----------------------------------------------------------------------------- network helpers


def _tcp(host: str, port: int, timeout: float) -> None:
    """Raise _Unreachable with a specific reason unless host:port accepts a TCP connection."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        raise _Unreachable("connection refused") from None
    except TimeoutError:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except socket.gaierror:
        raise _Unreachable(f"cannot resolve host {host!r}") from None
    except OSError as e:
        raise _Unreachable(e.strerror or str(e)) from None


def _host_port(url: str, default_port: int | None = None) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url if "://" in url else f"tcp://{url}")
    if not u.hostname:
        raise _Unreachable(f"no host in {redact_uri(url)!r}")
    try:
        port = u.port
    except ValueError:
        raise _Unreachable(f"bad port in {redact_uri(url)!r}") from None
    port = port or default_port or (443 if u.scheme == "https" else 80)
    return u.hostname, port


def _http_get(url: str, timeout: float, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET url -> (status, body); HTTP errors are returned, network errors raise _Unreachable."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(65536)
    except urllib.error.HTTPError as e:
        return e.code, e.read(65536)
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise _Unreachable("connection refused") from None
        if isinstance(reason, TimeoutError | socket.timeout):
            raise _Unreachable(f"no answer within {timeout:g}s") from None
        raise _Unreachable(str(reason)) from None
    except TimeoutError:
        raise _Unreachable(f"no answer within {timeout:g}s") from None
    except OSError as e:
        raise _Unreachable(e.strerror or str(e)) from None


def _reachable(url: str, timeout: float, default_port: int | None = None) -> None:
    host, port = _host_port(url, default_port)
    _tcp(host, port, timeout)


def _short(body: bytes, n: int = 160) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:  # MLflow / Prefect errors are JSON with a message
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("detail") or data)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
