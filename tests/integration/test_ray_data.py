"""`p2p data import|build|shard --address`: the per-pair work as Ray tasks on a real 2-node local
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


def _raw(root: Path) -> Path:
    """A canonical dataset (36 pairs) imported locally."""
    from p2p.config import DataConfig
    from p2p.data.importer import import_pairs

    make_aligned(root / "src", {"train": 30, "val": 3, "test": 3}, size=32)
    data = DataConfig(crop_size=32, load_size=32)
    import_pairs(root / "src", root / "raw", fmt="aligned", data=data, workers=1)
    return root / "raw"


def test_shard_cli_on_ray_is_byte_identical_to_local(cluster, tmp_path, capsys):
    import ray

    from p2p.cli import main

    raw = _raw(tmp_path)
    cmd = ["data", "shard", "--src", str(raw), "--max-count", "4"]

    assert main([*cmd, "--out", str(tmp_path / "local")]) == 0
    assert not ray.is_initialized()  # no --address: this process only, no Ray
    assert "ray:" not in capsys.readouterr().err

    out = tmp_path / "ray"
    assert main([*cmd, "--out", str(out), "--address", cluster.address]) == 0
    err = capsys.readouterr().err
    assert _nodes_line(err) == 2  # the buckets were packed on both nodes
    assert not ray.is_initialized()

    local = tree_hashes(tmp_path / "local")
    assert tree_hashes(out) == local  # index.json, the key files and every tar
    tars = [k for k in local if k.endswith(".tar")]
    assert len(tars) >= 9  # 36 samples, <= 4 per shard
    assert int(re.search(r"ray: (\d+) tasks", err).group(1)) == len(tars)  # one per bucket


def test_shard_on_ray_to_s3_jpg_skip_and_incremental(connected, tmp_path, s3_bucket):
    """jpg re-encoding on the workers, a pair whose file is gone (read by the driver: skipped
    as locally), S3 output identical to a local dir; a rerun sends no tar back or up."""
    import boto3

    from p2p.config import DataConfig
    from p2p.data.shards import write_shards
    from p2p.raycluster import RayExecutor

    raw = _raw(tmp_path)
    gone = sorted((raw / "B" / "train").iterdir())[3]
    gone.unlink()
    data = DataConfig(crop_size=32, load_size=32, image_format="jpg", on_error="skip")
    url = f"s3://{s3_bucket}/shards"

    local = write_shards(raw, tmp_path / "local", data, max_count=4)
    ex = RayExecutor(chunk=1)
    remote = write_shards(raw, url, data, max_count=4, executor=ex)
    assert remote == local and len(local.skipped) == 1 and gone.name in local.skipped[0]["file"]
    assert len(ex.nodes) == 2

    s3 = boto3.client("s3")
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix="shards/")["Contents"]
    on_s3 = {o["Key"].removeprefix("shards/"): o["Key"] for o in objects}
    assert sorted(on_s3) == sorted(p.name for p in (tmp_path / "local").iterdir())
    for name, key in on_s3.items():
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert body == (tmp_path / "local" / name).read_bytes(), name

    lines: list[str] = []
    sent: list[int] = []
    ex2 = RayExecutor(chunk=1)
    real_map = ex2.map

    def counting_map(fn, items):  # the tar bytes the tasks send back
        for split, problems, tars, lines_ in real_map(fn, items):
            sent.extend(1 for _, blob in tars if blob is not None)
            yield split, problems, tars, lines_

    ex2.map = counting_map
    assert write_shards(raw, url, data, max_count=4, executor=ex2, progress=lines.append) == local
    assert sent == [] and any("already up to date" in line for line in lines), lines
