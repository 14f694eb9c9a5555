"""`p2p doctor`: what the settings point at, and whether each endpoint answers.

One check per service, run concurrently, each bounded by a short timeout:

| check   | what is tried                                                               |
|---------|-----------------------------------------------------------------------------|
| s3      | list buckets at AWS_ENDPOINT_URL; head every bucket the settings/params use |
| mlflow  | sqlite: the file (or its directory) is writable, tables present;           |
|         | http(s): `/health`, the registry API and the proxied artifact store        |
| prefect | PREFECT_API_URL `/health` and server version, or "ephemeral mode"          |
| ray     | RAY_ADDRESS / resources.address: GCS (nodes, version, token auth), Ray      |
|         | Client port, or dashboard `/api/version`; or "local Ray will be started"   |
| dvc     | the remote pushes go to (P2P_DVC_REMOTE_URL, else the default) answers     |
| gpu     | torch.cuda: devices here, against resources.use_gpu                        |

A check ends OK (verified), SKIP (not used by these settings) or FAIL (with the reason: connection
refused, timed out, bucket missing, auth required, version mismatch...). Secrets are never
printed: credentials show as `***`, tokens as set/unset.

Layout: `base` (Check, Context, OK/SKIP/FAIL, network helpers), `storage` (s3, dvc), `services`
(mlflow, prefect), `compute` (ray, gpu); this module holds the registry, the runner and the report
and re-exports the public names (`from p2p.doctor import run_checks, report, probe_gcs, ...`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from p2p.config import ExperimentConfig
from p2p.doctor.base import DEFAULT_TIMEOUT, FAIL, OK, SKIP, Check, Context
from p2p.doctor.compute import _ray_token_source, check_gpu, check_ray, probe_gcs
from p2p.doctor.services import check_mlflow, check_prefect
from p2p.doctor.storage import check_dvc, check_s3
from p2p.settings import ENV_VARS, Settings, redact, redact_uri

__all__ = [
    "CHECKS",
    "DEFAULT_TIMEOUT",
    "FAIL",
    "OK",
    "SKIP",
    "Check",
    "Context",
    "check_dvc",
    "check_gpu",
    "check_mlflow",
    "check_prefect",
    "check_ray",
    "check_s3",
    "probe_gcs",
    "report",
    "run_checks",
    "settings_report",
]

# ----------------------------------------------------------------------------- runner

# The explicit registry, in output order.
CHECKS: dict[str, Callable[[Context], Check]] = {
    "s3": check_s3,
    "mlflow": check_mlflow,
    "prefect": check_prefect,
    "ray": check_ray,
    "dvc": check_dvc,
    "gpu": check_gpu,
}


def _deadline(timeout: float) -> float:
    """Wall time one check may take: a few network calls plus a child interpreter."""
    return 3 * timeout + 30


def run_checks(
    cfg: ExperimentConfig,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    settings: Settings | None = None,
    cwd: str | os.PathLike | None = None,
    names: tuple[str, ...] | None = None,
) -> list[Check]:
    """Run the checks concurrently (daemon threads, so a hung call cannot block exit).

    Args:
        cfg: the resolved params (shards, storage path, Ray address, use_gpu).
        timeout: seconds per network call.
        settings: default `Settings.from_env()`.
        cwd: where relative paths (sqlite file, DVC repo) are resolved; default the CWD.
        names: a subset of CHECKS to run, default all.
    """
    ctx = Context(
        settings or Settings.from_env(), cfg, float(timeout), Path(cwd or os.getcwd()).resolve()
    )
    selected = names or tuple(CHECKS)
    results: dict[str, Check] = {}

    def run(name: str) -> None:
        try:
            results[name] = CHECKS[name](ctx)
        except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
            results[name] = Check(name, FAIL, "?", f"{type(e).__name__}: {e}")

    threads = {n: threading.Thread(target=run, args=(n,), daemon=True) for n in selected}
    for t in threads.values():
        t.start()
    limit = _deadline(ctx.timeout)
    end = time.monotonic() + limit  # one deadline for all: they run concurrently
    for t in threads.values():
        t.join(max(0.0, end - time.monotonic()))
    out = []
    for n in selected:
        out.append(results.get(n) or Check(n, FAIL, "?", f"no result within {limit:g}s"))
    return out


def settings_report(cfg: ExperimentConfig) -> dict[str, str]:
    """What doctor prints before the checks: env settings (secrets redacted), Ray auth, params."""
    env = os.environ
    effective = Settings.from_env()
    defaults = {
        "AWS_DEFAULT_REGION": effective.aws_region,
        "MLFLOW_TRACKING_URI": effective.mlflow_tracking_uri,
    }
    out = {}
    for name in ENV_VARS:
        value = env.get(name) or None
        if value is None and name in defaults:
            out[name] = f"{defaults[name]} (default)"
        else:
            out[name] = redact(name, value)
        if "://" in out[name]:
            out[name] = redact_uri(out[name])  # a password inside a URL
    out["RAY_AUTH_MODE"] = env.get("RAY_AUTH_MODE") or "(unset)"
    source = _ray_token_source()
    where = "env" if source == "RAY_AUTH_TOKEN" else source
    out["ray auth token"] = f"set ({where})" if source else "(none)"
    out["data.shards"] = cfg.data.shards
    out["train.storage_path"] = cfg.train.storage_path
    out["resources.address"] = cfg.resources.address or '""'
    return out


def report(cfg: ExperimentConfig, checks: list[Check], *, as_json: bool = False) -> str:
    """The text (or JSON) doctor prints."""
    settings = settings_report(cfg)
    if as_json:
        return json.dumps(
            {
                "ok": not any(c.failed for c in checks),
                "settings": settings,
                "checks": [asdict(c) for c in checks],
            },
            indent=2,
        )
    width = max(len(k) for k in settings)
    lines = ["settings:"] + [f"  {k:<{width}}  {v}" for k, v in settings.items()]
    lines += ["", "checks:"] + [c.line() for c in checks]
    failed = [c.name for c in checks if c.failed]
    lines += ["", f"{len(failed)} failed: {', '.join(failed)}" if failed else "all reachable"]
    return "\n".join(lines)
