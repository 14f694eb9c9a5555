"""The per-split key files beside index.json (`keys-{split}.txt`): registration lineage and the
gate read them instead of every shard; shard sets without one (or with one an interrupted S3
write left behind) fall back to the shards' member names."""

from __future__ import annotations

import logging

import pytest
from test_shards import DATA, make_raw

from p2p.config import DataConfig
from p2p.data import storage
from p2p.data.shard_index import read_index
from p2p.data.shards import write_shards
from p2p.errors import DataError
from p2p.registry.lineage import split_keys, train_key_tags

TRAIN = [f"train{i:03d}" for i in range(10)]


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw" / "syn", {"train": 10, "val": 3, "test": 2})


def _break_tars(url: str) -> None:
    """Every shard replaced by bytes that are no tar: only the key files can answer."""
    for s in read_index(url).all_shards():
        storage.write_bytes(storage.join_url(url, s.name), b"not a tar")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_registration_reads_the_key_file_not_the_shards(raw, tmp_path, where, request, caplog):
    if where == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/shards/syn"
    else:
        url = str(tmp_path / "shards")
    write_shards(raw, url, DATA)
    _break_tars(url)
    with caplog.at_level(logging.INFO, logger="p2p.registry.lineage"):
        assert split_keys(url, "train") == TRAIN
        assert split_keys(url, "test") == ["test000", "test001"]
        tags, text = train_key_tags(url)
    assert tags["lineage.train_keys_count"] == "10" and text.splitlines() == TRAIN
    assert "reading the keys from" not in caplog.text


def test_no_key_file_falls_back_to_the_shards_with_a_note(raw, tmp_path, caplog):
    out = tmp_path / "shards"
    write_shards(raw, out, DATA)
    for p in out.glob("keys-*.txt"):  # as written before key files existed
        p.unlink()
    with caplog.at_level(logging.INFO, logger="p2p.registry.lineage"):
        assert split_keys(str(out), "train") == TRAIN
    (note,) = [r.getMessage() for r in caplog.records if "keys-train.txt" in r.getMessage()]
    assert "sharded before key files" in note and "\n" not in note


def test_a_key_file_of_another_index_is_not_trusted(raw, tmp_path):
    """An S3 run killed after uploading its key files but before replacing index.json leaves
    key files of an index that is not there: the shards answer."""
    out = tmp_path / "shards"
    write_shards(raw, out, DATA)
    other = make_raw(tmp_path / "raw2" / "syn", {"train": 5, "val": 3, "test": 2})
    write_shards(other, tmp_path / "other", DATA)
    (out / "keys-train.txt").write_bytes((tmp_path / "other" / "keys-train.txt").read_bytes())
    assert split_keys(str(out), "train") == TRAIN


def test_a_tampered_key_file_is_one_clear_error(raw, tmp_path):
    out = tmp_path / "shards"
    write_shards(raw, out, DATA)
    f = out / "keys-train.txt"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:-1]))  # one key dropped
    with pytest.raises(DataError, match=r"keys-train.txt: lists 9 keys but index.json has 10"):
        split_keys(str(out), "train")


def test_skipped_pairs_are_not_in_the_key_file(raw, tmp_path):
    (raw / "B" / "train" / "train003.png").unlink()
    out = tmp_path / "shards"
    write_shards(raw, out, DataConfig(**{**DATA.__dict__, "on_error": "skip"}))
    _break_tars(str(out))
    assert split_keys(str(out), "train") == [k for k in TRAIN if k != "train003"]
