"""manifest.jsonl: streamed line by line, appendable, and legacy manifest.json still read."""

from __future__ import annotations

import itertools
import json

import pytest
from data_fixtures import make_aligned

from p2p.config import DataConfig
from p2p.data.importer import import_pairs
from p2p.data.manifest import LEGACY_MANIFEST, MANIFEST, iter_pairs, load_manifest, read_header
from p2p.data.validate import validate_dataset
from p2p.errors import DataError

DATA = DataConfig(load_size=16, crop_size=16)


@pytest.fixture
def dataset(tmp_path):
    make_aligned(tmp_path / "src", {"train": 3, "val": 1, "test": 1})
    import_pairs(tmp_path / "src", tmp_path / "ds", fmt="aligned", data=DATA)
    return tmp_path / "ds"


def test_iter_pairs_streams_one_line_at_a_time(dataset):
    lines = (dataset / MANIFEST).read_text().splitlines()
    assert len(lines) == 1 + 5  # header + one line per pair
    assert read_header(dataset) == (dataset / MANIFEST, "ds")
    # a broken last line does not stop the reader from handing out the pairs before it
    (dataset / MANIFEST).write_text("\n".join(lines) + "\n{broken\n")
    first = list(itertools.islice(iter_pairs(dataset), 5))
    assert [p.key for p in first] == [json.loads(line)["key"] for line in lines[1:]]
    with pytest.raises(DataError, match=r"manifest.jsonl: line 7 is malformed"):
        list(iter_pairs(dataset))


def test_appending_a_line_adds_a_pair(dataset):
    entries = load_manifest(dataset).entries
    extra = json.loads(entries[0].to_line()) | {"key": "copy"}
    with open(dataset / MANIFEST, "a") as f:
        f.write(json.dumps(extra) + "\n")
    m = load_manifest(dataset)
    assert len(m) == 6 and m.entries[-1].key == "copy"
    assert m.entries[-1].a == dataset.resolve() / "A" / entries[0].split / "copy.png"


def test_legacy_manifest_json_is_still_read(dataset):
    """A dataset written before manifest.jsonl (format_version 1, one JSON document)."""
    m = load_manifest(dataset)
    doc = {
        "format_version": 1,
        "name": "old",
        "pairs": [
            {
                "key": p.key,
                "split": p.split,
                "a": f"A/{p.split}/{p.key}.png",
                "b": f"B/{p.split}/{p.key}.png",
                "a_size": list(p.size),
                "b_size": list(p.size),
                "a_sha256": p.a_sha256,
                "b_sha256": p.b_sha256,
            }
            for p in m.entries
        ],
        "counts": m.counts,
    }
    (dataset / MANIFEST).unlink()
    (dataset / LEGACY_MANIFEST).write_text(json.dumps(doc))
    old = load_manifest(dataset)
    assert old.name == "old" and old.entries == m.entries and old.path.name == LEGACY_MANIFEST
    assert validate_dataset(dataset, data=DATA).ok
    # a legacy entry whose files are not where the layout puts them: re-import
    doc["pairs"][0]["a"] = "A/elsewhere.png"
    (dataset / LEGACY_MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="pair #0 is malformed.*re-import the dataset"):
        load_manifest(dataset)
