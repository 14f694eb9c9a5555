"""WebDataset shard writing: determinism, layout, validation, atomic local and S3 output."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import noise, tree_hashes
from PIL import Image

from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.reports import InvalidDataset
from p2p.data.shards import read_index, shard_urls, write_shards
from p2p.data.writer import DatasetWriter
from p2p.errors import DataError

KEY_FILES = ("keys-train.txt", "keys-val.txt", "keys-test.txt")  # beside index.json
DATA = DataConfig(load_size=36, crop_size=32, shard_max_count=4, loader_workers=0)


def make_raw(root: Path, counts: dict[str, int], size: int = 32, name: str = "syn") -> Path:
    """A canonical dataset through data-local's writer: A = noise whose top-left 4x4 block in
    channel 0 holds the sample number, B = 255 - A (so every pair is identifiable)."""
    with DatasetWriter(root, name) as w:
        for split, n in counts.items():
            for i in range(n):
                a = noise(size, size, seed=1000 * len(split) + i).copy()
                a[:4, :4, 0] = i
                w.add(f"{split}{i:03d}", split, Image.fromarray(a), Image.fromarray(255 - a))
        w.commit(data=DATA, report={}, warnings=[])
    return root


@pytest.fixture
def raw(tmp_path) -> Path:
    return make_raw(tmp_path / "raw" / "syn", {"train": 10, "val": 3, "test": 2})


def _tar_members(path: Path) -> list[tuple[str, int, int, int, str, str, int]]:
    with tarfile.open(path) as t:
        return [(m.name, m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in t]


def test_layout_and_index(raw, tmp_path):
    out = tmp_path / "shards"
    index = write_shards(raw, out, DATA)
    names = [s.name for s in index.all_shards()]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "index.json", *KEY_FILES])
    assert json.loads((out / "index.json").read_text()) == index.to_json()
    assert read_index(out) == index
    train = index.splits["train"]
    assert sum(s.samples for s in train.shards) == 10 and len(train.shards) > 1
    assert all(s.samples <= 4 for s in train.shards)  # max_count 4
    for s in index.all_shards():  # {split}-{bucket}-{first 12 hex of the sha256}.tar
        blob = (out / s.name).read_bytes()
        assert s.bytes == len(blob) and s.sha256 == hashlib.sha256(blob).hexdigest()
        assert re.fullmatch(r"(train|val|test)-\d{6}-[0-9a-f]{12}\.tar", s.name)
        assert s.name.endswith(f"-{s.sha256[:12]}.tar")
    assert index.totals == {
        "samples": 15,
        "shards": len(names),
        "bytes": sum(p.stat().st_size for p in out.glob("*.tar")),
    }
    manifest_sha = hashlib.sha256((raw / "manifest.jsonl").read_bytes()).hexdigest()
    assert index.data_version["manifest_sha256"] == manifest_sha
    assert index.params["data.direction"] == "AtoB"
    assert index.params["data.shard_max_count"] == 4
    # fixed tar metadata; each sample's 3 members adjacent, in a fixed order
    (val,) = index.splits["val"].shards
    members = _tar_members(out / val.name)
    assert {m[1:] for m in members} == {(0, 0, 0, "p2p", "p2p", 0o644)}
    key = members[0][0].split(".")[0]
    assert [m[0] for m in members[:3]] == [f"{key}.input.png", f"{key}.target.png", f"{key}.json"]
    assert sorted(m[0] for m in members[::3]) == [f"val00{i}.input.png" for i in range(3)]
    assert shard_urls(out, "train", index) == [str(out / s.name) for s in train.shards]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_byte_identical_rewrites(raw, tmp_path):
    first = write_shards(raw, tmp_path / "a", DATA)
    write_shards(raw, tmp_path / "b", DATA)
    hashes = tree_hashes(tmp_path / "a")
    assert hashes == tree_hashes(tmp_path / "b")
    # rewriting in place, and after deleting, gives the same bytes again
    assert write_shards(raw, tmp_path / "a", DATA) == first
    assert tree_hashes(tmp_path / "a") == hashes
    for p in (tmp_path / "a").iterdir():
        p.unlink()
    (tmp_path / "a").rmdir()
    write_shards(raw, tmp_path / "a", DATA)
    assert tree_hashes(tmp_path / "a") == hashes
    # different params give different shards
    write_shards(raw, tmp_path / "c", DATA, max_count=3)
    assert tree_hashes(tmp_path / "c") != hashes


def test_original_bytes_and_webdataset_compat(raw, tmp_path):
    """Plain webdataset reads the shards; images are the raw PNG bytes, not re-encoded."""
    import webdataset as wds

    out = tmp_path / "s"
    write_shards(raw, out, DATA)
    ds = wds.WebDataset(
        [str(p) for p in sorted(out.glob("val-*.tar"))], shardshuffle=False, nodesplitter=None
    )
    samples = list(ds)
    assert sorted(s["__key__"] for s in samples) == ["val000", "val001", "val002"]
    for s in samples:
        assert s["input.png"] == (raw / "A" / "val" / f"{s['__key__']}.png").read_bytes()
        assert s["target.png"] == (raw / "B" / "val" / f"{s['__key__']}.png").read_bytes()
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["a"] == f"A/val/{s['__key__']}.png"
        assert meta["direction"] == "AtoB" and meta["size"] == [32, 32]
    # train samples are assigned and ordered by a hash of the key (neighbours are apart)
    ds = wds.WebDataset(
        [str(p) for p in sorted(out.glob("train-*.tar"))], shardshuffle=False, nodesplitter=None
    )
    keys = [s["__key__"] for s in ds]
    assert sorted(keys) == [f"train{i:03d}" for i in range(10)] and keys != sorted(keys)


def test_direction_btoa_and_jpg(raw, tmp_path):
    btoa = DataConfig(**{**DATA.__dict__, "direction": "BtoA", "image_format": "jpg"})
    out = tmp_path / "s"
    index = write_shards(raw, out, btoa)
    assert index.params["data.direction"] == "BtoA"
    (test,) = index.splits["test"].shards
    with tarfile.open(out / test.name) as t:
        names = t.getnames()
        inp = t.extractfile("test000.input.jpg").read()
    assert sorted(names) == sorted(
        f"test00{i}.{m}" for i in (0, 1) for m in ("input.jpg", "target.jpg", "json")
    )
    b = np.asarray(Image.open(raw / "B" / "test" / "test000.png"), dtype=np.int16)
    got = np.asarray(Image.open(io.BytesIO(inp)), dtype=np.int16)
    assert np.abs(got - b).mean() < 4  # the input is B, JPEG-encoded at quality 95
    write_shards(raw, tmp_path / "s2", btoa)
    assert tree_hashes(out) == tree_hashes(tmp_path / "s2")  # JPEG output is deterministic too


def test_max_size_bounds_every_shard(raw, tmp_path):
    out = tmp_path / "s"
    one = (raw / "A" / "train" / "train000.png").stat().st_size
    limit = 40_000
    index = write_shards(raw, out, DATA, max_count=100, max_size=limit)
    train = index.splits["train"].shards
    assert len(train) > 1 and sum(s.samples for s in train) == 10
    assert all(s.bytes <= limit for s in train), (one, train)


def test_bad_pairs_fail_and_write_nothing(raw, tmp_path):
    """Import validated the images (sharding trusts the manifest); what can still go wrong is
    a file that is gone or one larger than data.shard_max_member."""
    bad = raw / "B" / "train" / "train003.png"
    bad.unlink()
    other = raw / "A" / "val" / "val001.png"
    other.write_bytes(other.read_bytes() + b"\0" * 20_000)  # over the limit below
    data = DataConfig(**{**DATA.__dict__, "shard_max_member": 10_000})
    out = tmp_path / "shards"
    with pytest.raises(InvalidDataset) as e:
        write_shards(raw, out, data)
    msg = str(e.value)
    assert str(bad) in msg and str(other) in msg and "cannot read file" in msg
    assert "more than data.shard_max_member" in msg
    assert len(e.value.problems) == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    skip = DataConfig(**{**data.__dict__, "on_error": "skip"})
    index = write_shards(raw, out, skip)
    assert index.samples("train") == 9 and index.samples("val") == 2
    assert {s["file"] for s in index.skipped} == {"B/train/train003.png", "A/val/val001.png"}


def test_errors_name_the_path(tmp_path, raw):
    with pytest.raises(DataError, match="not a p2p dataset"):
        write_shards(tmp_path / "nothing", tmp_path / "s", DATA)
    with pytest.raises(DataError, match="no shard index"):
        read_index(tmp_path / "nowhere")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keep.jpg").write_bytes(b"precious")
    with pytest.raises(DataError, match="refusing to replace it"):
        write_shards(raw, photos, DATA)
    assert (photos / "keep.jpg").read_bytes() == b"precious"


@pytest.mark.slow
def test_s3_output_matches_local_and_index_goes_last(raw, tmp_path, s3_bucket):
    local = tmp_path / "local"
    index = write_shards(raw, local, DATA)
    url = f"s3://{s3_bucket}/shards/syn"
    lines: list[str] = []
    assert write_shards(raw, url, DATA, progress=lines.append) == index
    names = sorted(p.name for p in local.iterdir())
    assert storage.list_urls(url) == [f"{url}/{n}" for n in names]
    for n in names:  # byte-identical to the local shard set
        assert storage.read_bytes(f"{url}/{n}") == (local / n).read_bytes()
    assert read_index(url) == index
    assert any(f"uploaded {len(index.all_shards())} shard(s)" in line for line in lines)

    # same data again: nothing is re-uploaded
    lines.clear()
    write_shards(raw, url, DATA, progress=lines.append)
    assert any("already up to date" in line for line in lines)

    # new params: shards the new index does not name are deleted after the index swap
    index3 = write_shards(raw, url, DATA, max_count=3)
    listed = {u.rsplit("/", 1)[-1] for u in storage.list_urls(url)}
    assert listed == {s.name for s in index3.all_shards()} | {"index.json", *KEY_FILES}
    assert read_index(url) == index3 != index

    with pytest.raises(storage.ObjectNotFound, match="no-such-bucket-p2p.*bucket does not exist"):
        write_shards(raw, "s3://no-such-bucket-p2p/shards", DATA)


def test_cli_shard(raw, tmp_path, capsys):
    from p2p.cli import main

    out = tmp_path / "cli"
    assert main(["data", "shard", "--src", str(raw), "--out", str(out), "--max-count", "3"]) == 0
    printed = capsys.readouterr().out
    index = read_index(out)
    first = index.splits["train"].shards[0]
    assert f"{first.name}: {first.samples} samples" in printed
    assert f"wrote 15 samples in {index.totals['shards']} shards" in printed
    assert index.params["data.shard_max_count"] == 3
    assert main(["data", "shard", "--src", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "not a p2p dataset" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a.json", "k" * 90 + ".input.png", "k" * 95 + ".json", "k" * 150])
@pytest.mark.parametrize("size", [0, 1, 511, 1_000_000_000])
def test_member_headers_are_tarfiles(name, size):
    """The headers the writer builds itself are byte-for-byte tarfile's GNU headers."""
    from p2p.data.shards import _member_header

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = "p2p"
    assert _member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
