"""Doctor checks for where training runs: the Ray cluster (GCS, Ray Client or dashboard) and the
local GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from p2p.doctor.base import (
    FAIL,
    OK,
    SKIP,
    Check,
    Context,
    _http_get,
    _reachable,
    _short,
    _Unreachable,
)

# ----------------------------------------------------------------------------- ray

# Runs in a child process: a GCS client holds process-wide auth state and blocks on dead
# addresses, so a subprocess keeps doctor isolated and its timeout enforceable.
_GCS_PROBE = """
import json, sys
address, timeout, auto = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "auto"
if auto:  # like ray.init("auto"): a local cluster found automatically picks up a local token
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
try:
    from ray._raylet import GcsClient
    from ray._common.usage import usage_lib
    from ray.core.generated import gcs_pb2
    client = GcsClient(address=address)
    meta = usage_lib.get_cluster_metadata(client) or {}
    nodes = [n for n in client.get_all_node_info(timeout=timeout).values()
             if n.state == gcs_pb2.GcsNodeInfo.ALIVE]
    total = {}
    for n in nodes:
        for k, v in n.resources_total.items():
            total[k] = total.get(k, 0) + v
    out = {"ray_version": meta.get("ray_version"), "nodes": len(nodes),
           "cpus": total.get("CPU", 0), "gpus": total.get("GPU", 0)}
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e)}
print("P2P_PROBE " + json.dumps(out), flush=True)
"""


def probe_gcs(
    address: str, timeout: float, *, auto: bool = False, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Ask the Ray GCS at `address` (host:port) for its version and alive nodes.

    Runs in a child process with `env` (default this process's environment): RAY_AUTH_MODE and
    RAY_AUTH_TOKEN there decide how it authenticates.

    Returns:
        {"ray_version", "nodes", "cpus", "gpus"}, or {"error": kind, "message": ...}.
    """
    argv = [sys.executable, "-c", _GCS_PROBE, address, str(timeout), "auto" if auto else "-"]
    limit = timeout + 20  # a child interpreter importing ray, then the GCS calls
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=limit, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": "Timeout", "message": f"GCS did not answer within {limit:g}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("P2P_PROBE ")]
    if not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        return {"error": "ProbeCrashed", "message": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("P2P_PROBE ") :])


def _ray_token_source() -> str | None:
    """Where a Ray auth token would come from (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return path if Path(path).is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _ray_token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    source = _ray_token_source()
    return Path(source).read_text().strip() if source else None


def _probe_gcs(address: str, ctx: Context, auto: bool) -> Check:
    local = metadata.version("ray")
    mode = (os.environ.get("RAY_AUTH_MODE") or "").lower()
    if mode == "token" and not _ray_token_source():
        return Check(
            "ray",
            FAIL,
            address,
            "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "(or create ~/.ray/auth_token)",
        )
    try:
        _reachable(address, ctx.timeout, 6379)
    except _Unreachable as e:
        return Check("ray", FAIL, address, f"GCS {e}")
    out = probe_gcs(address, ctx.timeout, auto=auto)
    if "error" in out:
        msg = out["message"]
        if out["error"] == "AuthenticationError" or "InvalidAuthToken" in msg:
            if "currently 'disabled'" in msg or mode != "token":
                reason = (
                    "the cluster requires Ray token auth: set RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN (the cluster's token)"
                )
            else:
                reason = "the cluster rejected this Ray auth token (RAY_AUTH_TOKEN differs)"
            return Check("ray", FAIL, address, reason)
        return Check("ray", FAIL, address, f"{out['error']}: {' '.join(msg.split())[:200]}")
    version = out.get("ray_version")
    if version and version != local:
        return Check("ray", FAIL, address, f"cluster runs ray {version}, this client {local}")
    detail = f"ray {version or '?'}, {out['nodes']} nodes, {out['cpus']:g} CPU, {out['gpus']:g} GPU"
    if ctx.cfg.resources.use_gpu and not out["gpus"]:
        detail += "; no GPU yet (resources.use_gpu needs an autoscaling GPU group)"
    return Check("ray", OK, address, detail)


def _check_dashboard(address: str, ctx: Context) -> Check:
    base = address.rstrip("/")
    local = metadata.version("ray")
    try:
        _reachable(base, ctx.timeout)
        status, body = _http_get(f"{base}/api/authentication_mode", ctx.timeout)
        token = _ray_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        v_status, v_body = _http_get(f"{base}/api/version", ctx.timeout, headers)
    except _Unreachable as e:
        return Check("ray", FAIL, base, f"dashboard {e}")
    mode = ""
    if status == 200:
        try:
            mode = str(json.loads(body).get("authentication_mode", ""))
        except (ValueError, AttributeError):
            mode = ""
    if v_status == 401:
        return Check("ray", FAIL, base, "the cluster requires Ray token auth: set RAY_AUTH_TOKEN")
    if v_status == 403:
        return Check("ray", FAIL, base, "the cluster rejected this Ray auth token")
    if v_status == 404:
        return Check(
            "ray",
            FAIL,
            base,
            "no Jobs API at this address (is the head installed with ray[default]?)",
        )
    if v_status != 200:
        return Check("ray", FAIL, base, f"/api/version answered HTTP {v_status}: {_short(v_body)}")
    try:
        version = json.loads(v_body).get("ray_version", "?")
    except (ValueError, AttributeError):
        return Check("ray", FAIL, base, "/api/version did not answer JSON (not a Ray dashboard?)")
    if version != local:
        return Check("ray", FAIL, base, f"cluster runs ray {version}, this client {local}")
    auth = f", {mode} auth" if mode else ""
    return Check("ray", OK, base, f"Jobs API, ray {version}{auth}")


def check_ray(ctx: Context) -> Check:
    # Same precedence as `p2p train`: resources.address, else RAY_ADDRESS, else a local Ray.
    address = ctx.cfg.resources.address or ctx.settings.ray_address or ""
    if not address:
        return Check("ray", OK, "local Ray will be started", "no RAY_ADDRESS or resources.address")
    if address.startswith(("http://", "https://")):
        return _check_dashboard(address, ctx)
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  # Ray Client needs ray[client]
        except ImportError:
            return Check("ray", FAIL, address, "ray:// needs Ray Client: pip install 'ray[client]'")
        try:
            _reachable(address, ctx.timeout, 10001)
        except _Unreachable as e:
            return Check("ray", FAIL, address, f"Ray Client port {e}")
        return Check("ray", OK, address, "Ray Client port open")
    if address == "auto":
        from ray._private.utils import read_ray_address

        found = read_ray_address(None)
        if not found:
            return Check(
                "ray", FAIL, "auto", "no local Ray cluster found (start one: ray start --head)"
            )
        check = _probe_gcs(found, ctx, auto=True)
        return Check("ray", check.status, f"auto -> {found}", check.detail)
    return _probe_gcs(address, ctx, auto=False)


# ----------------------------------------------------------------------------- gpu


def check_gpu(ctx: Context) -> Check:
    import torch

    build = f"torch {torch.__version__}"
    remote = bool(ctx.cfg.resources.address or ctx.settings.ray_address)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return Check("gpu", OK, f"{n} x {name}", f"CUDA {torch.version.cuda}, {build}")
    if not ctx.cfg.resources.use_gpu:
        return Check(
            "gpu", SKIP, "no CUDA device", f"resources.use_gpu=false: CPU training, {build}"
        )
    if remote:
        return Check("gpu", SKIP, "no CUDA device here", "GPUs are expected on the Ray cluster")
    return Check(
        "gpu", FAIL, "no CUDA device", f"resources.use_gpu is true but torch sees none ({build})"
    )
