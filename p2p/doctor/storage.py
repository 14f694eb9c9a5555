"""Doctor checks for where data lives: the S3 endpoint and buckets in use, and the DVC remote."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from p2p.doctor.base import FAIL, OK, SKIP, Check, Context, _reachable, _Unreachable

# ----------------------------------------------------------------------------- s3


def _s3_urls(ctx: Context) -> dict[str, str]:
    """Where the settings and params use S3: {setting name: s3:// URL}."""
    candidates = {
        "P2P_DVC_REMOTE_URL": ctx.settings.dvc_remote_url or "",
        "data.shards": ctx.cfg.data.shards,
        "train.storage_path": ctx.cfg.train.storage_path,
    }
    from p2p.data.storage import is_s3_url

    return {k: v for k, v in candidates.items() if is_s3_url(v)}


def _bucket(url: str) -> str:
    return url[len("s3://") :].split("/", 1)[0]


def _s3_error(e: Exception) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"):
            return f"credentials rejected ({code})"
        if code in ("AccessDenied", "403"):
            return "access denied"
        return f"{code or 'error'}: {err.get('Message') or e}"
    return " ".join(str(e).split())


def _head_buckets(client: Any, urls: dict[str, str]) -> tuple[list[str], list[str]]:
    """-> (ok descriptions, failure reasons) for the buckets behind `urls`."""
    from botocore.exceptions import ClientError

    ok, bad = [], []
    by_bucket: dict[str, list[str]] = {}
    for what, url in urls.items():
        by_bucket.setdefault(_bucket(url), []).append(what)
    for bucket, users in sorted(by_bucket.items()):
        try:
            client.head_bucket(Bucket=bucket)
            ok.append(f"{bucket} ok")
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                bad.append(f"bucket {bucket!r} ({', '.join(users)}) does not exist")
            else:
                bad.append(f"bucket {bucket!r} ({', '.join(users)}): {_s3_error(e)}")
        except Exception as e:  # noqa: BLE001 - report any client failure as the reason
            bad.append(f"bucket {bucket!r}: {_s3_error(e)}")
    return ok, bad


def check_s3(ctx: Context) -> Check:
    endpoint = ctx.settings.s3_endpoint
    urls = _s3_urls(ctx)
    target = endpoint or "AWS S3"
    if not endpoint and not urls:
        return Check("s3", SKIP, "not used", "no AWS_ENDPOINT_URL and no s3:// URL in use")
    try:
        if endpoint:
            _reachable(endpoint, ctx.timeout)
    except _Unreachable as e:
        return Check("s3", FAIL, target, str(e))
    from p2p.data.storage import s3_client

    client = s3_client(max_attempts=1)
    parts = []
    try:
        n = len(client.list_buckets().get("Buckets", []))
        parts.append(f"{n} bucket{'s' if n != 1 else ''}")
    except Exception as e:  # noqa: BLE001
        reason = _s3_error(e)
        if reason != "access denied" or not urls:  # a scoped key may not list, yet use buckets
            return Check("s3", FAIL, target, f"list buckets: {reason}")
        parts.append("listing denied")
    ok, bad = _head_buckets(client, urls)
    if bad:
        return Check("s3", FAIL, target, "; ".join(bad))
    return Check("s3", OK, target, ", ".join(parts + ok))


# ----------------------------------------------------------------------------- dvc


def _find_dvc_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def _check_remote(name: str, config: dict[str, Any], timeout: float) -> str | None:
    """None if DVC remote `name` is reachable, else the reason."""
    from dvc.fs import get_cloud_fs

    cls, conf, path = get_cloud_fs(config, name=name)
    if cls.protocol == "local":
        p = Path(path)
        probe = p if p.exists() else p.parent
        if not probe.is_dir():
            return f"{p} does not exist"
        return None if os.access(probe, os.W_OK) else f"{probe} is not writable"
    if conf.get("endpointurl"):
        try:
            _reachable(conf["endpointurl"], timeout)
        except _Unreachable as e:
            return f"{conf['endpointurl']}: {e}"
    bucket = path.split("/", 1)[0]
    try:  # the filesystem DVC itself pushes with (same endpoint, credentials, options)
        cls(**conf).fs.info(bucket)
    except FileNotFoundError:
        return f"bucket {bucket!r} does not exist"
    except Exception as e:  # noqa: BLE001
        return _s3_error(e)
    return None


def check_dvc(ctx: Context) -> Check:
    root = _find_dvc_root(ctx.cwd)
    if root is None:
        if ctx.settings.dvc_remote_url:
            return Check(
                "dvc",
                SKIP,
                ctx.settings.dvc_remote_url,
                f"no DVC repository at {ctx.cwd}; the bucket is checked under s3",
            )
        return Check("dvc", SKIP, "no DVC repository", f"none at or above {ctx.cwd}")
    from dvc.repo import Repo

    from p2p.data.versioning import default_remote_name, env_config

    # the same in-memory remote and default rule as p2p.data.versioning
    url = ctx.settings.dvc_remote_url
    overrides = env_config(url, ctx.settings.s3_endpoint) if url else {}
    with Repo(str(root), config=overrides or None) as repo:
        config = repo.config
        remotes = {n: s for n, s in config.get("remote", {}).items() if s.get("url")}
        default = default_remote_name(config, url)
        if not remotes:
            return Check(
                "dvc", FAIL, str(root), "no DVC remote configured (set P2P_DVC_REMOTE_URL)"
            )
        if not default:
            return Check("dvc", FAIL, str(root), "no default DVC remote (dvc remote default NAME)")
        if default not in remotes:
            return Check("dvc", FAIL, str(root), f"default remote {default!r} is not configured")
        # The remote pushes and pulls go to must answer; others are listed, not contacted.
        url = remotes[default]["url"]
        try:
            reason = _check_remote(default, config, ctx.timeout)
        except Exception as e:  # noqa: BLE001
            reason = " ".join(str(e).split())[:200] or type(e).__name__
    if reason:
        return Check("dvc", FAIL, str(root), f"remote {default} {url}: {reason}")
    others = ", ".join(f"{n} {s['url']}" for n, s in sorted(remotes.items()) if n != default)
    detail = f"remote {default} {url}" + (f"; also configured: {others}" if others else "")
    return Check("dvc", OK, str(root), detail)
