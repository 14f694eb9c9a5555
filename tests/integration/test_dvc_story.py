"""`dvc repro` and the Prefect flows tell one story, in a fresh clone of this project.

One module-wide clone (the project's tracked files, a tiny params.yaml, its own git history,
MLflow database and DVC cache): `python -m p2p demo` (what `make demo` runs), then `dvc repro`
must have nothing to do and the registered version must not call its own code dirty; a tiny
`dvc exp run` must be comparable with `dvc exp show`; and the own-data route (params, then
`dvc repro`) must work with DVC and the retrain flow. The tests run in file order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_flows import start_prefect_harness

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
MODEL = "p2p-story"

# test_flows' tiny config: 30 demo pairs at 72 px, a thin U-Net, one epoch on one Ray worker.
TINY: dict[str, dict[str, Any]] = {
    "data": {"loader_workers": 0, "shard_max_count": 8},
    "build": {"num_pairs": 30, "size": 72},
    "model": {"num_downs": 6, "base_channels": 8, "disc_channels": 8},
    "train": {"batch_size": 2, "epochs": 1, "val_batches": 1, "log_every": 4},
    "resources": {"num_workers": 1, "max_failures": 0},
    "eval": {"batch_size": 4, "num_samples": 2, "model_name": MODEL},
}

TIMES: list[tuple[str, float]] = []  # (command, seconds), printed at the end


@pytest.fixture(scope="module")
def prefect_api(pytestconfig) -> str:
    return start_prefect_harness(pytestconfig)  # the same harness as test_flows.py


def _run(root: Path, *cmd: str, env: dict[str, str], timeout: int = 900) -> str:
    """Run a command in the clone; fail the test with its output if it fails."""
    t0 = time.perf_counter()
    p = subprocess.run(
        list(cmd), cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    TIMES.append(
        (
            " ".join(Path(c).name if c == sys.executable else c for c in cmd),
            time.perf_counter() - t0,
        )
    )
    assert p.returncode == 0, f"{cmd}: rc {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True, timeout=60
    ).stdout


def _set_params(root: Path, changes: dict[str, dict[str, Any]]) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for group, values in changes.items():
        params[group].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def clone(tmp_path_factory, prefect_api) -> dict[str, Any]:
    """A fresh clone of the project (its tracked files as they are in this checkout, one
    commit) with a tiny params.yaml; the environment its commands run with: this clone's code
    first on the path, an MLflow database in tmp, the session's Prefect test API."""
    tmp = tmp_path_factory.mktemp("story")
    root = tmp / "clone"
    files = _git(PROJECT, "ls-files", "-z").split("\0")
    for rel in filter(None, files):
        src = PROJECT / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(src.read_bytes())
    _set_params(root, TINY)
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "clone")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(root),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",
        PREFECT_API_URL=prefect_api,
    )
    yield {"root": root, "env": env}
    print("\ntimes:")
    for what, secs in TIMES:
        print(f"  {secs:6.1f} s  {what}")


@pytest.fixture(scope="module")
def demo(clone) -> str:
    """`python -m p2p demo` (what `make demo` runs) in the fresh clone."""
    return _run(clone["root"], sys.executable, "-m", "p2p", "demo", env=clone["env"])


def _dvc_status(root: Path, env: dict[str, str]) -> dict[str, Any]:
    return json.loads(_run(root, "dvc", "status", "--json", env=env).strip().splitlines()[-1])


def test_after_demo_dvc_repro_has_nothing_to_do(clone, demo):
    root, env = clone["root"], clone["env"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "shard", "train", "evaluate"}
    assert _dvc_status(root, env) == {}
    out = _run(root, "dvc", "repro", env=env)
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_demo_lineage_is_not_dirty_from_its_own_outputs(clone, demo, monkeypatch):
    from p2p.registry import get_version

    root = clone["root"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", clone["env"]["MLFLOW_TRACKING_URI"])
    champ = get_version(MODEL, "champion")
    assert champ.tags["lineage.git_commit"] == _git(root, "rev-parse", "HEAD").strip()
    # the pipeline changed dvc.lock and the .gitignore files beside its outs, nothing else
    changed = set(_git(root, "diff", "HEAD", "--name-only").split())
    assert "dvc.lock" in changed and not {p for p in changed if p.startswith("p2p/")}
    assert champ.tags["lineage.git_dirty"] == "false"
    # a real code change is still dirty
    from p2p.data.versioning import code_changes

    assert code_changes(root) == []
    (root / "p2p" / "losses.py").write_text((root / "p2p" / "losses.py").read_text() + "\n")
    try:
        assert code_changes(root) == ["p2p/losses.py"]
    finally:
        _git(root, "checkout", "--", "p2p/losses.py")


def _metric_rows(node: Any, key: str = "psnr") -> list[float]:
    """Every number under `key` in `dvc exp show --json` (one per commit/experiment row)."""
    found: list[float] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, int | float):
                found.append(float(v))
            else:
                found.extend(_metric_rows(v, key))
    elif isinstance(node, list):
        for v in node:
            found.extend(_metric_rows(v, key))
    return found


def test_experiments_are_comparable_in_dvc(clone, demo):
    root, env = clone["root"], clone["env"]
    # what a user commits after the demo: dvc.lock, the .gitignore files, the metrics
    _git(root, "add", "-A")
    status = _git(root, "status", "--porcelain")
    assert "reports/metrics.json" in status and "models/train_metrics.json" in status
    assert "generator.pt" not in status and "samples.png" not in status  # DVC's cache
    _git(root, "commit", "-q", "-m", "demo results")
    shown = json.loads(_run(root, "dvc", "metrics", "show", "--json", env=env))
    assert _metric_rows(shown), shown
    _run(root, "dvc", "exp", "run", "-S", "eval.num_samples=1", env=env)
    table = json.loads(_run(root, "dvc", "exp", "show", "--json", env=env))
    rows = _metric_rows(table)
    # the committed baseline (workspace and HEAD) and the experiment all have PSNR values
    assert len(rows) >= 3, json.dumps(table)[:3000]
    _git(root, "checkout", "-q", "--", ".")  # back to the committed demo results
    _run(root, "dvc", "checkout", env=env)


def test_own_data_route_works_with_dvc_repro_and_the_retrain_flow(clone, demo, monkeypatch):
    from data_fixtures import make_aligned

    from pipelines import tasks

    root, env = clone["root"], clone["env"]
    make_aligned(root / "incoming" / "pairs", {"train": 8, "val": 2, "test": 2}, size=32)
    # the route: point data.* at the folder in params.yaml, then `dvc repro`
    _set_params(
        root,
        {
            "data": {
                "name": "mine",
                "source": "incoming/pairs",
                "source_format": "aligned",
                "raw_dir": "data/raw/mine",
                "shards": "data/shards/mine",
            }
        },
    )
    out = _run(root, "dvc", "repro", env=env)
    assert "Running stage 'prepare'" in out and "Running stage 'train'" in out
    assert "Data and pipelines are up to date" in _run(root, "dvc", "repro", env=env)
    assert _dvc_status(root, env) == {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (raw,) = [o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/raw/mine"]
    index = json.loads((root / "data" / "shards" / "mine" / "index.json").read_text())
    assert index["data_version"]["dvc_md5"] == raw["md5"]
    # `p2p data version` of a pipeline output refuses, naming the stage (no .dvc file that
    # would make `dvc repro` fail with "output is specified in: data/raw/mine.dvc, prepare")
    p = subprocess.run(
        [sys.executable, "-m", "p2p", "data", "version", "data/raw/mine"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2 and "output of stage 'prepare'" in p.stderr, p.stderr
    assert not (root / "data" / "raw" / "mine.dvc").exists()
    # the retrain flow sees the new data version (dvc.lock's) and that the champion's differs
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    cfg = tasks.load("params.yaml", None)
    assert tasks.latest_data_version(cfg) == raw["md5"]
    _, champion_data = tasks.champion_data_version(MODEL)
    assert champion_data and champion_data != raw["md5"]
