"""`p2p data shard | version | pull | remote`: WebDataset shards and DVC data versions.

`shard` is the DVC stage of the same name: with no flags it reads data.raw_dir and writes
data.shards (a directory or s3://bucket/prefix) with the data.shard_max_* limits.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2p.data.versioning import DataVersion


def register_data_subcommands(
    dsub: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Add `shard`, `version`, `pull` and `remote` to the `p2p data` group."""
    sh = dsub.add_parser(
        "shard", parents=[common], help="DVC stage: write WebDataset shards (dir or s3://)"
    )
    sh.add_argument("--src", help="canonical raw dataset dir (default: data.raw_dir)")
    sh.add_argument("--out", help="shard dir or s3://bucket/prefix (default: data.shards)")
    sh.add_argument(
        "--max-count", type=int, help="samples per shard (default: data.shard_max_count)"
    )
    sh.add_argument("--max-size", type=int, help="bytes per shard (default: data.shard_max_size)")
    sh.set_defaults(func=shard_cmd)

    ver = dsub.add_parser(
        "version", parents=[common], help="dvc add + git add the .dvc file + push; prints the md5"
    )
    ver.add_argument("path", help="dataset dir, e.g. data/raw/demo")
    ver.add_argument(
        "--remote", help="DVC remote (default: s3 if P2P_DVC_REMOTE_URL, else default)"
    )
    ver.add_argument("--repo", default=".", help="repository root (default: .)")
    ver.set_defaults(func=version_cmd)

    pull = dsub.add_parser("pull", parents=[common], help="fetch DVC-tracked data from a remote")
    what = pull.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", help="a tracked dataset path (its .dvc file's version)")
    what.add_argument("--all", action="store_true", help="everything the workspace tracks")
    pull.add_argument("--remote", help="DVC remote (default: as for `version`)")
    pull.add_argument("--repo", default=".", help="repository root (default: .)")
    pull.set_defaults(func=pull_cmd)

    rem = dsub.add_parser(
        "remote", parents=[common], help="show DVC remotes, or point the s3 remote at a bucket"
    )
    rem.add_argument("--s3", metavar="URL", help="s3://bucket/prefix for the `s3` remote")
    rem.add_argument("--endpoint", help="S3 endpoint (default: AWS_ENDPOINT_URL; unset = AWS)")
    rem.add_argument("--default", action="store_true", help="make `s3` the default remote here")
    rem.add_argument("--repo", default=".", help="repository root (default: .)")
    rem.set_defaults(func=remote_cmd)


def shard_cmd(args: argparse.Namespace) -> int:
    from p2p.cli import load_cfg
    from p2p.data.shards import write_shards

    cfg = load_cfg(args)
    src = args.src or cfg.data.raw_dir
    out = args.out or cfg.data.shards
    print(f"sharding {src} -> {out} (direction {cfg.data.direction})", flush=True)
    index = write_shards(
        src,
        out,
        cfg.data,
        max_count=args.max_count,
        max_size=args.max_size,
        progress=lambda line: print(line, flush=True),
    )
    counts = ", ".join(f"{s} {v.samples}" for s, v in index.splits.items())
    version = index.data_version
    print(f"samples: {counts}; data version {version['dvc_md5'] or version['manifest_sha256']}")
    for skipped in index.skipped:
        print(f"skipped {skipped['file']}: {skipped['reason']}", file=sys.stderr)
    return 0


def version_cmd(args: argparse.Namespace) -> int:
    from p2p.data.versioning import version_dataset

    v = version_dataset(args.path, remote=args.remote, repo=args.repo)
    size = f"{v.size / 1e6:.1f} MB" if v.size is not None else "? MB"
    print(f"{v.md5}  {v.path}  ({v.nfiles} files, {size}, pushed to {v.remote})")
    print(f"git: record this version with: {commit_hint(v, args.repo)}", file=sys.stderr)
    return 0


def commit_hint(v: DataVersion, repo: str = ".") -> str:
    """The `git commit` command that records DataVersion `v`, quoted for a POSIX shell."""
    at_repo = ["-C", repo] if repo not in ("", ".") else []
    message = f"data: {v.path} {v.md5}"
    return shlex.join(["git", *at_repo, "commit", "-m", message, "--", v.dvc_file])


def pull_cmd(args: argparse.Namespace) -> int:
    from p2p.data.versioning import pull_all, pull_dataset

    if args.all:
        n = pull_all(repo=args.repo, remote=args.remote)
        print(f"pulled {n} file(s)")
        return 0
    v = pull_dataset(args.path, repo=args.repo, remote=args.remote)
    print(f"{v.md5}  {v.path}  pulled")
    return 0


def remote_cmd(args: argparse.Namespace) -> int:
    from p2p.data.versioning import configure_s3_remote, list_remotes

    if args.s3:
        section = configure_s3_remote(
            "s3", args.s3, endpoint=args.endpoint, repo=args.repo, default=args.default
        )
        ep = section.get("endpointurl", "AWS")
        print(f"s3 -> {section['url']} (endpoint {ep}), written to .dvc/config.local")
    elif args.endpoint or args.default:
        from p2p.errors import P2PError

        raise P2PError("--endpoint and --default need --s3 s3://bucket/prefix")
    for name, url, endpoint, default in list_remotes(repo=args.repo):
        mark = " (default)" if default else ""
        print(f"{name}\t{url}{f'  endpoint {endpoint}' if endpoint else ''}{mark}")
    return 0
