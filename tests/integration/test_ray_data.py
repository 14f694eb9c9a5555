"""`p2p data import|build --address`: the per-pair work as Ray tasks on a real 2-node local
cluster; the output is byte-identical to the local (thread pool) run, and the tasks ran on both
nodes. Without --address no Ray is started."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from data_fixtures import make_aligned, make_folders, noise, save, tree_hashes

pytestmark = pytest.mark.slow


@pytest.fixture
def connected(cluster):
    """This process as the cluster's driver (for the library-level tests)."""
    import ray

    ray.init(address=cluster.address)
    yield
    ray.shutdown()


def _aligned_source(root: Path) -> Path:
    make_aligned(root, {"train": 30, "val": 3, "test": 3}, size=32)
    (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt
    save(root / "val" / "odd.png", noise(32, 63, seed=5))  # odd width: no A|B halves
    return root


def _nodes_line(err: str) -> int:
    m = re.search(r"ray: (\d+) tasks on (\d+) node\(s\)", err)
    assert m, err
    return int(m.group(2))


def test_import_cli_on_ray_is_byte_identical_to_local(cluster, tmp_path, capsys):
    import ray

    from p2p.cli import main

    src = _aligned_source(tmp_path / "src")
    cmd = ["data", "import", "--format", "aligned", "--src", str(src), "--on-error", "skip"]

    assert main([*cmd, "--out", str(tmp_path / "local" / "ds")]) == 0
    assert not ray.is_initialized()  # no --address: threads only, no Ray
    assert "ray:" not in capsys.readouterr().err

    out = tmp_path / "ray" / "ds"
    assert main([*cmd, "--out", str(out), "--address", cluster.address]) == 0
    assert _nodes_line(capsys.readouterr().err) == 2  # the pairs were decoded on both nodes
    assert not ray.is_initialized()  # the CLI disconnects when done

    local = tree_hashes(tmp_path / "local" / "ds")
    assert tree_hashes(out) == local  # manifest.jsonl, every PNG, report.json
    assert len([k for k in local if k.endswith(".png")]) == 2 * 36
    report = (out / "report.json").read_text()
    assert "broken.png" in report and "odd width 63" in report


def test_import_folders_on_ray_executor(connected, tmp_path):
    """Folders layout through the library: file bytes are shipped to the tasks (no shared
    filesystem needed); problems are the same as locally."""
    from p2p.config import DataConfig
    from p2p.data.importer import import_pairs
    from p2p.raycluster import RayExecutor

    src = tmp_path / "src"
    make_folders(src, {"train": 6, "val": 2}, size=32)
    (src / "A" / "train" / "train0.jpg").write_bytes(b"")  # empty file
    save(src / "B" / "val" / "val1.png", noise(16, 16, seed=1))  # size mismatch
    data = DataConfig(crop_size=16, load_size=16)
    kw = {"fmt": "folders", "on_error": "skip", "data": data}

    local = import_pairs(src, tmp_path / "local" / "ds", **kw)
    ex = RayExecutor(chunk=2)  # 2 items per task
    remote = import_pairs(src, tmp_path / "ray" / "ds", executor=ex, **kw)
    assert tree_hashes(tmp_path / "ray" / "ds") == tree_hashes(tmp_path / "local" / "ds")
    assert remote.skipped == local.skipped and len(local.skipped) == 2
    assert len(ex.nodes) == 2 and sum(ex.nodes.values()) == 4  # 8 pairs


def test_build_on_ray_executor_is_byte_identical(connected, tmp_path):
    from p2p.config import BuildConfig, DataConfig
    from p2p.data.build import build_pairs
    from p2p.raycluster import RayExecutor

    photos = tmp_path / "photos"
    for i in range(3):
        save(photos / f"p{i}.png", noise(96, 128, seed=10 + i))
    build = BuildConfig(task="edges", num_pairs=12, size=32, seed=3)
    data = DataConfig(crop_size=32, load_size=32)

    build_pairs(photos, tmp_path / "local" / "ds", build=build, data=data)
    ex = RayExecutor(chunk=2)  # 2 items per task
    build_pairs(photos, tmp_path / "ray" / "ds", build=build, data=data, executor=ex)
    assert tree_hashes(tmp_path / "ray" / "ds") == tree_hashes(tmp_path / "local" / "ds")
    assert len(ex.nodes) == 2  # tiles were cut on both nodes
