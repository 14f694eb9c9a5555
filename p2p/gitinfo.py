"""The code version of a run or a registered model: the git commit p2p runs from.

One implementation for the registry (lineage.git_commit / lineage.git_dirty) and training
(git.commit): p2p.training.tracking can import `git_commit` from here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(repo: str | Path | None = None) -> tuple[str, bool]:
    """(HEAD sha, has uncommitted changes) of the code: the checkout p2p is imported from
    (editable install), else `repo` (default: the working directory); ("unknown", False)
    outside git."""
    for where in (Path(__file__).resolve().parents[1], Path(repo or ".")):
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
            )
            if sha.returncode != 0 or not sha.stdout.strip():
                continue
            from p2p.data.versioning import code_changes  # what dvc.lock/outs do not count

            return sha.stdout.strip(), bool(code_changes(where))
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown", False
