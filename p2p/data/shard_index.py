"""The typed index of a shard set (`ShardIndex`, `SplitInfo`, `ShardInfo`): index.json read,
validated (it is untrusted input) and written; shard names. See `p2p.data.shards` for the format."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from p2p.data import storage
from p2p.data.manifest import SPLITS
from p2p.errors import DataError

INDEX = "index.json"
FORMAT = "p2p-webdataset"
FORMAT_VERSION = 2  # 2: stable buckets, content-hashed names; 1 (sequential names) still reads
_SHA256 = re.compile(r"[0-9a-f]{64}")
# v2 names, and v1's sequential names (read only)
_NAME = re.compile(r"(?P<split>[a-z]+)-(?P<num>\d{6})(?:-(?P<sha>[0-9a-f]{12}))?\.tar")


@dataclass(frozen=True)
class ShardInfo:
    """One shard as index.json lists it."""

    name: str  # a plain file name in the shard folder / prefix
    samples: int
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class SplitInfo:
    samples: int
    bytes: int
    shards: tuple[ShardInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "bytes": self.bytes,
            "shards": [s.to_json() for s in self.shards],
        }


@dataclass(frozen=True)
class ShardIndex:
    """A validated index.json: what every reader of a shard set uses (never the raw JSON)."""

    name: str
    data_version: dict[str, str | None]  # manifest_sha256, dvc_md5, dvc_source
    params: dict[str, Any]
    splits: dict[str, SplitInfo]
    skipped: tuple[dict[str, str], ...] = ()
    format_version: int = FORMAT_VERSION

    @property
    def totals(self) -> dict[str, int]:
        return {
            "samples": sum(s.samples for s in self.splits.values()),
            "shards": sum(len(s.shards) for s in self.splits.values()),
            "bytes": sum(s.bytes for s in self.splits.values()),
        }

    def samples(self, split: str) -> int:
        """Samples of one split; 0 if the index has no such split."""
        entry = self.splits.get(split)
        return entry.samples if entry else 0

    def split(self, split: str, where: str = "") -> SplitInfo:
        entry = self.splits.get(split)
        if entry is None:
            raise DataError(f"{where or self.name}: index.json has no split {split!r}")
        return entry

    def all_shards(self) -> list[ShardInfo]:
        return [s for entry in self.splits.values() for s in entry.shards]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "data_version": dict(self.data_version),
            "params": dict(self.params),
            "splits": {k: v.to_json() for k, v in self.splits.items()},
            "totals": self.totals,
        }
        if self.skipped:
            doc["skipped"] = [dict(s) for s in self.skipped]
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ShardIndex:
        """Validate an untrusted index.json document; DataError naming the key otherwise."""

        def bad(key: str, reason: str) -> DataError:
            return DataError(f"{where}: {key} {reason}")

        def integer(v: Any, key: str) -> int:
            if type(v) is not int or v < 0:
                raise bad(key, f"must be a whole number >= 0, got {v!r}")
            return v

        def mapping(v: Any, key: str) -> dict:
            if not isinstance(v, dict):
                raise bad(key, f"must be an object, got {type(v).__name__}")
            return v

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DataError(f"{where}: not a p2p shard index")
        version = doc.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise DataError(f"{where}: format_version {version!r} is not {FORMAT_VERSION}")
        name = doc.get("name")
        if not isinstance(name, str):
            raise bad("name", f"must be a string, got {name!r}")
        dv = mapping(doc.get("data_version", {}), "data_version")
        data_version: dict[str, str | None] = {}
        for k in ("manifest_sha256", "dvc_md5", "dvc_source"):
            v = dv.get(k)
            if v is not None and not isinstance(v, str):
                raise bad(f"data_version.{k}", f"must be a string or null, got {v!r}")
            data_version[k] = v
        params = mapping(doc.get("params", {}), "params")
        splits: dict[str, SplitInfo] = {}
        seen: set[str] = set()
        for split, entry in mapping(doc.get("splits"), "splits").items():
            if split not in SPLITS:
                raise bad("splits", f"has unknown split {split!r} (not {', '.join(SPLITS)})")
            entry = mapping(entry, f"splits.{split}")
            listed = entry.get("shards")
            if not isinstance(listed, list):
                raise bad(f"splits.{split}.shards", "must be a list")
            shards = []
            for i, s in enumerate(listed):
                key = f"splits.{split}.shards[{i}]"
                s = mapping(s, key)
                sname = s.get("name")
                m = _NAME.fullmatch(sname) if isinstance(sname, str) else None
                if m is None or m["split"] != split:
                    raise bad(
                        f"{key}.name",
                        f"{sname!r} is not a shard file name of this folder "
                        f"({split}-NNNNNN-HASH.tar)",
                    )
                if (m["sha"] is None) != (version == 1):
                    raise bad(f"{key}.name", f"{sname!r} does not fit format_version {version}")
                if sname in seen:
                    raise bad(f"{key}.name", f"{sname!r} is listed twice")
                seen.add(sname)
                sha = s.get("sha256")
                if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                    raise bad(f"{key}.sha256", f"must be 64 lowercase hex digits, got {sha!r}")
                if m["sha"] is not None and not sha.startswith(m["sha"]):
                    raise bad(f"{key}.name", f"{sname!r} does not match its sha256")
                shards.append(
                    ShardInfo(
                        sname,
                        integer(s.get("samples"), f"{key}.samples"),
                        integer(s.get("bytes"), f"{key}.bytes"),
                        sha,
                    )
                )
            info = SplitInfo(
                integer(entry.get("samples"), f"splits.{split}.samples"),
                integer(entry.get("bytes"), f"splits.{split}.bytes"),
                tuple(shards),
            )
            for what in ("samples", "bytes"):
                total = sum(getattr(s, what) for s in shards)
                if getattr(info, what) != total:
                    raise bad(
                        f"splits.{split}.{what}",
                        f"is {getattr(info, what)} but its shards add up to {total}",
                    )
            splits[split] = info
        skipped = doc.get("skipped", [])
        if not isinstance(skipped, list) or not all(
            isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in skipped
        ):
            raise bad("skipped", "must be a list of {file, reason} objects")
        index = cls(name, data_version, dict(params), splits, tuple(skipped), version)
        if "totals" in doc and doc["totals"] != index.totals:
            raise bad("totals", f"{doc['totals']!r} do not match the splits ({index.totals})")
        return index


def read_index(shards_url: str | os.PathLike) -> ShardIndex:
    """The validated index.json of a shard set (a directory or s3://bucket/prefix).

    Raises:
        DataError: no index (not sharded yet), not a p2p shard index, or a malformed one
            (names outside the folder, wrong types, counts that do not add up).
    """
    url = storage.join_url(shards_url, INDEX)
    try:
        doc = json.loads(storage.read_bytes(url))
    except storage.ObjectNotFound:
        raise DataError(
            f"{shards_url}: no shard index ({INDEX}); write shards with `p2p data shard`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: not valid JSON ({e})") from None
    return ShardIndex.from_json(doc, url)


def shard_urls(shards_url: str | os.PathLike, split: str, index: ShardIndex) -> list[str]:
    """URLs of one split's shards, in index order."""
    entry = index.split(split, str(shards_url))
    return [storage.join_url(shards_url, s.name) for s in entry.shards]


def _index_bytes(index: ShardIndex) -> bytes:
    return (json.dumps(index.to_json(), indent=1, sort_keys=True) + "\n").encode()


def _is_shard_name(name: str) -> bool:
    m = _NAME.fullmatch(name)
    return m is not None and m["split"] in SPLITS
