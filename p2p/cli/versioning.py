"""`p2p data version | pull | remote`: DVC data versions of the canonical datasets.

`version` runs dvc add, stages the .dvc file and pushes the data (it prints the git commit that
records the version); `pull` fetches a tracked dataset (or everything) from a remote; `remote`
shows the DVC remotes or points the `s3` remote at a bucket (p2p.data.versioning does the work).
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
    """Add `version`, `pull` and `remote` to the `p2p data` group."""
    # the options every DVC command takes: the params ones, and the repository to work in
    dvc = argparse.ArgumentParser(add_help=False, parents=[common])
    dvc.add_argument("--repo", default=".", help="repository root (default: .)")

    ver = dsub.add_parser(
        "version", parents=[dvc], help="dvc add + git add the .dvc file + push; prints the md5"
    )
    ver.add_argument("path", help="dataset dir, e.g. data/raw/demo")
    ver.add_argument(
        "--remote", help="DVC remote (default: s3 if P2P_DVC_REMOTE_URL, else default)"
    )
    ver.set_defaults(func=version_cmd)

    pull = dsub.add_parser("pull", parents=[dvc], help="fetch DVC-tracked data from a remote")
    what = pull.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", help="a tracked dataset path (its .dvc file's version)")
    what.add_argument("--all", action="store_true", help="everything the workspace tracks")
    pull.add_argument("--remote", help="DVC remote (default: as for `version`)")
    pull.set_defaults(func=pull_cmd)

    rem = dsub.add_parser(
        "remote", parents=[dvc], help="show DVC remotes, or point the s3 remote at a bucket"
    )
    rem.add_argument("--s3", metavar="URL", help="s3://bucket/prefix for the `s3` remote")
    rem.add_argument("--endpoint", help="S3 endpoint (default: AWS_ENDPOINT_URL; unset = AWS)")
    rem.add_argument("--default", action="store_true", help="make `s3` the default remote here")
    rem.set_defaults(func=remote_cmd)


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
