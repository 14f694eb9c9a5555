"""Hostile or unlucky shards: index.json and the tars are untrusted input.

Every case ends in one DataError line naming the shard (and member), never a traceback from
tarfile or a DataLoader worker, and never a silent short or wrong epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from test_shards import make_raw

from p2p.config import DataConfig
from p2p.data.dataset import iter_tar_samples, make_loader
from p2p.data.shards import read_index, write_shards
from p2p.errors import DataError

DATA = DataConfig(
    load_size=32, crop_size=32, preprocess="none", shard_max_count=4, loader_workers=0
)


@pytest.fixture
def shards(tmp_path) -> Path:
    raw = make_raw(tmp_path / "raw", {"train": 8, "val": 3, "test": 2})
    write_shards(raw, tmp_path / "shards", DATA)
    return tmp_path / "shards"


def _doc(shards: Path) -> dict:
    return json.loads((shards / "index.json").read_text())


def _put_doc(shards: Path, doc: dict) -> None:
    (shards / "index.json").write_text(json.dumps(doc))


def _epoch(shards: Path, split: str = "val", workers: int = 0, data: DataConfig = DATA) -> int:
    loader = make_loader(shards, split, data, batch_size=1, train=False, num_workers=workers)
    return sum(a.shape[0] for a, _ in loader)


def _replace_shard(shards: Path, split: str, blob: bytes, samples: int) -> str:
    """Put `blob` in place of the split's first shard; the index is rewritten to match it
    (name, sha256, bytes, count), so only the tar's content is hostile."""
    doc = _doc(shards)
    entry = doc["splits"][split]
    old = entry["shards"][0]
    sha = hashlib.sha256(blob).hexdigest()
    name = f"{split}-000000-{sha[:12]}.tar"
    (shards / old["name"]).unlink()
    (shards / name).write_bytes(blob)
    entry["samples"] += samples - old["samples"]
    entry["bytes"] += len(blob) - old["bytes"]
    entry["shards"][0] = {"name": name, "samples": samples, "bytes": len(blob), "sha256": sha}
    doc.pop("totals")
    _put_doc(shards, doc)
    return str(shards / name)


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _real_sample(shards: Path, split: str = "val") -> list[tuple[str, bytes]]:
    """The members of the first sample of the split's first shard."""
    first = shards / _doc(shards)["splits"][split]["shards"][0]["name"]
    with tarfile.open(first) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()[:3]]


# ----------------------------------------------------------------------------- index.json


@pytest.mark.parametrize(
    "name",
    ["../x.tar", "/etc/passwd", "sub/val-000000-0123456789ab.tar", "train-000000-0123456789ab.tar"],
)
def test_index_names_stay_in_the_shard_folder(shards, name):
    doc = _doc(shards)
    doc["splits"]["val"]["shards"][0]["name"] = name
    _put_doc(shards, doc)
    with pytest.raises(DataError, match=r"splits\.val\.shards\[0\]\.name .* is not a shard file"):
        read_index(shards)
    with pytest.raises(DataError, match="not a shard file name"):
        make_loader(shards, "val", DATA, batch_size=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["splits"]["val"]["shards"][0].update(samples="4"), "must be a whole number"),
        (lambda d: d["splits"]["val"]["shards"][0].update(samples=-1), "must be a whole number"),
        (lambda d: d["splits"]["val"].update(samples=99), "its shards add up to"),
        (lambda d: d["splits"]["val"]["shards"][0].update(sha256="x" * 64), "64 lowercase hex"),
        (lambda d: d["splits"].update(extra=d["splits"]["val"]), "unknown split 'extra'"),
        (lambda d: d["splits"]["val"].update(shards="val.tar"), "must be a list"),
        (lambda d: d.update(splits=[]), "splits must be an object"),
        (lambda d: d["totals"].update(samples=1), "totals"),
    ],
)
def test_index_types_and_counts_are_checked(shards, change, message):
    doc = _doc(shards)
    change(doc)
    _put_doc(shards, doc)
    with pytest.raises(DataError, match=message) as e:
        read_index(shards)
    assert "\n" not in str(e.value) and "index.json" in str(e.value)


def test_real_sample_count_must_match_the_index(shards):
    """The index lists one sample fewer than the tar holds (consistently): an error, not an
    epoch that silently misses a sample."""
    doc = _doc(shards)
    doc["splits"]["val"]["shards"][0]["samples"] -= 1
    doc["splits"]["val"]["samples"] -= 1
    doc.pop("totals")
    _put_doc(shards, doc)
    with pytest.raises(DataError, match=r"val-.*\.tar: has 3 samples but index.json lists 2"):
        _epoch(shards)


def test_sha256_is_verified_while_streaming(shards):
    """Same size, same samples, one byte of a JSON member changed: only the hash can tell."""
    name = _doc(shards)["splits"]["val"]["shards"][0]["name"]
    path = shards / name
    blob = path.read_bytes()
    assert b'"direction":"AtoB"' in blob
    path.write_bytes(blob.replace(b'"direction":"AtoB"', b'"direction":"AtoX"', 1))
    with pytest.raises(DataError, match=rf"{name}: sha256 differs from index.json"):
        _epoch(shards)
    # also through loader workers: the same one line in the main process
    with pytest.raises(DataError, match="sha256 differs") as e:
        _epoch(shards, workers=2)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


# ----------------------------------------------------------------------------- tar members


def test_oversized_member_is_rejected_before_reading(shards):
    small = dataclasses.replace(DATA, shard_max_member=1000)  # the PNGs are ~3 kB
    with pytest.raises(DataError, match=r"member 'val\d+\.input\.png' is \d+ bytes, more than"):
        _epoch(shards, data=small)


def test_huge_member_header_is_not_read_into_memory(shards):
    """A header claiming 1.5 GB (the data is not even there): rejected from the header."""
    info = tarfile.TarInfo("val000.input.png")
    info.size = 1_500_000_000
    header = info.tobuf(tarfile.GNU_FORMAT)
    url = _replace_shard(shards, "val", header + b"\0" * 1024, 1)
    with pytest.raises(DataError, match="is 1500000000 bytes, more than data.shard_max_member"):
        list(iter_tar_samples(url))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_members_are_rejected(shards, kind):
    members = _real_sample(shards)
    link = tarfile.TarInfo(members[1][0])
    link.type, link.linkname = kind, "/etc/passwd"
    url = _replace_shard(shards, "val", _tar([members[0], link, members[2]]), 1)
    with pytest.raises(DataError, match=rf"member '{members[1][0]}' is a link"):
        _epoch(shards)
    with pytest.raises(DataError, match="is a link"):
        list(iter_tar_samples(url))


def test_duplicate_members_are_rejected(shards):
    """The same member twice, not adjacent (a second sample with the same key)."""
    members = _real_sample(shards)
    key = members[0][0].split(".")[0]
    other = [(n.replace(key, "other"), b) for n, b in members]
    _replace_shard(shards, "val", _tar(members + other + members), 3)
    with pytest.raises(DataError, match=rf"duplicate member '{key}.input.png'"):
        _epoch(shards)


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_truncated_or_garbage_tar_is_one_line(shards, cut):
    name = _doc(shards)["splits"]["val"]["shards"][0]["name"]
    path = shards / name
    blob = path.read_bytes()
    path.write_bytes(blob[:3000] if cut == "truncated" else b"not a tar at all" * 100)
    for workers in (0, 2):
        with pytest.raises(DataError, match=rf"{name}: not a valid tar") as e:
            _epoch(shards, workers=workers)
        assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
        if cut == "truncated":
            assert "after member 'val" in str(e.value) or "at its first member" in str(e.value)


def test_cli_evaluate_bad_shard_exits_2(shards, tmp_path, capsys):
    """`p2p evaluate` over a broken shard: one line on stderr naming the shard, exit 2."""
    import torch

    from p2p.checkpoints import save_generator
    from p2p.cli import main
    from p2p.config import load_config
    from p2p.models import build_generator

    sets = {
        "data.load_size": 32,
        "data.crop_size": 32,
        "data.preprocess": "none",
        "data.loader_workers": 2,
        "model.num_downs": 5,
        "model.base_channels": 8,
        "model.disc_channels": 8,
    }
    cfg = load_config(None, sets)
    torch.manual_seed(0)
    ckpt = save_generator(tmp_path / "g.pt", build_generator(cfg.model, 3, 3), cfg)
    name = _doc(shards)["splits"]["test"]["shards"][0]["name"]
    (shards / name).write_bytes((shards / name).read_bytes()[:2500])
    args = ["evaluate", "--checkpoint", str(ckpt), "--shards", str(shards)]
    args += ["--out", str(tmp_path / "rep"), *[f"--set={k}={v}" for k, v in sets.items()]]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("p2p evaluate: error:")]
    assert len(lines) == 1 and name in lines[0] and "not a valid tar" in lines[0], err
    assert "Traceback" not in err
