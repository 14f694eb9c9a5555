"""The typed index of a shard set (`ShardIndex`, `SplitInfo`, `ShardInfo`): index.json read,
validated (it is untrusted input) and written; shard names; the per-split key lists. See
`p2p.data.shards` for the format.

Key lists: beside index.json, `keys-{split}.txt` holds the sorted sample keys of each split, so
that readers which need only the keys (registration lineage, the gate's overlap check) read one
small file instead of every shard. Its first line ties it to the index it was written with:
`# p2p-keys shards-sha256=H`, H = sha256 of the split's shard sha256s (one per line, index
order). index.json itself is unchanged by them (same bytes as before, so DVC hashes stay). On
S3 the key files are uploaded before index.json is replaced, so a run killed in between leaves
a key file that no longer matches the (old) index: readers see the mismatch and fall back to
the shards, as for shard sets written before key files existed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2p.data import storage
from p2p.data.manifest import SPLITS
from p2p.errors import DataError

log = logging.getLogger(__name__)

INDEX = "index.json"
KEYS = "keys-{split}.txt"  # the sorted sample keys of one split, beside index.json
_KEYS_HEADER = "# p2p-keys shards-sha256="
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


# ----------------------------------------------------------------------------- key lists


def _shards_digest(entry: SplitInfo) -> str:
    """What a key file is tied to: the sha256 of its split's shard sha256s, in index order."""
    return hashlib.sha256("".join(s.sha256 + "\n" for s in entry.shards).encode()).hexdigest()


def _keys_bytes(entry: SplitInfo, keys: list[str]) -> bytes:
    return "".join([f"{_KEYS_HEADER}{_shards_digest(entry)}\n"] + [k + "\n" for k in keys]).encode()


def write_keys(workdir: Path, out: str, manifest: Any, index: ShardIndex) -> None:
    """Write `keys-{split}.txt` of every split of a freshly written shard set into `workdir`
    (and, when `out` is a URL, upload them now: before index.json, which the caller replaces last).

    The keys are the manifest's pairs of the split minus the pairs `index.skipped` names (what
    the shard writer wrote); a split whose count then differs from the index gets no key file
    (readers fall back to the shards), with a warning.
    """
    skipped = {s.get("file") for s in index.skipped}
    for split, entry in index.splits.items():
        keys = sorted(
            p.key
            for p in manifest.pairs(split)
            if p.a.relative_to(manifest.root).as_posix() not in skipped
            and p.b.relative_to(manifest.root).as_posix() not in skipped
        )
        if len(keys) != entry.samples:
            log.warning(
                "%s: %d keys for %d samples of split %s: no %s written",
                out, len(keys), entry.samples, split, KEYS.format(split=split),
            )  # fmt: skip
            continue
        name = KEYS.format(split=split)
        data = _keys_bytes(entry, keys)
        (workdir / name).write_bytes(data)
        if not storage.is_local(out):
            storage.write_bytes(storage.join_url(out, name), data)


def read_keys(shards_url: str | os.PathLike, split: str, index: ShardIndex) -> list[str] | None:
    """The sorted sample keys of one split from its key file; None when there is no key file
    matching `index` (a shard set written before key files, or a key file left by an
    interrupted S3 write).

    Raises:
        DataError: no such split; a key file that matches the index but is malformed.
        StorageError: the store cannot be read.
    """
    entry = index.split(split, str(shards_url))
    url = storage.join_url(shards_url, KEYS.format(split=split))
    try:
        text = storage.read_bytes(url).decode()
    except storage.ObjectNotFound:
        return None
    except UnicodeDecodeError as e:
        raise DataError(f"{url}: not UTF-8 text ({e})") from None
    header, _, body = text.partition("\n")
    if header != _KEYS_HEADER + _shards_digest(entry):
        return None
    keys = body.splitlines()
    if len(keys) != entry.samples:
        raise DataError(
            f"{url}: lists {len(keys)} keys but index.json has {entry.samples} {split} samples"
        )
    return keys
