"""Which samples a model trained on, so that the gate never judges it on them.

At registration the keys of the train split the model was trained on are logged to the
version's run as `lineage/train_keys.txt` (one key per line, sorted) with the tags
`lineage.train_keys_sha256`, `lineage.train_keys_count` and `lineage.train_shards`. The gate
reads the test set's keys from the challenger's evaluation shards and refuses to compare on a
test set that shares keys with either model's training keys.

A sample key is the pair's key in the raw dataset manifest (`{key}.json` in the shards); the
same photo keeps its key across data versions, so a sample that moved from train to test is
caught.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p2p.registry.versions import ModelVersionInfo, RegistryError, client, short

TRAIN_KEYS_ARTIFACT = "lineage/train_keys.txt"
TAG_SHA, TAG_COUNT, TAG_SHARDS = (
    "lineage.train_keys_sha256",
    "lineage.train_keys_count",
    "lineage.train_shards",
)
log = logging.getLogger(__name__)
EXAMPLES = 5  # overlapping keys quoted in a decision


def split_keys(shards: str, split: str) -> list[str]:
    """The sample keys of one split of a shard set (sorted): from the split's key file
    (`keys-{split}.txt`, written by the shard stage beside index.json); for shard sets written
    before key files, from the member names of the split's tars (`{key}.json`), streamed.

    Raises:
        DataError / StorageError: no index, no such split, unreadable key file or shard.
    """
    from p2p.data import storage
    from p2p.data.shard_index import KEYS, read_index, read_keys, shard_urls

    index = read_index(shards)
    listed = read_keys(shards, split, index)
    if listed is not None:
        return listed
    log.info(
        "%s: no %s matching index.json (sharded before key files): reading the keys from "
        "the %s shards", shards, KEYS.format(split=split), split,
    )  # fmt: skip
    keys: set[str] = set()
    for url in shard_urls(shards, split, index):
        with storage.open_url(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:  # streamed: the image bytes are skipped, not kept
                if member.name.endswith(".json"):
                    keys.add(member.name[: -len(".json")])
    return sorted(keys)


def keys_sha256(keys: list[str]) -> str:
    return hashlib.sha256("".join(k + "\n" for k in keys).encode()).hexdigest()


def train_key_tags(shards: str) -> tuple[dict[str, str], str]:
    """(tags, file text) recording the train split of `shards`."""
    keys = split_keys(shards, "train")
    tags = {TAG_SHA: keys_sha256(keys), TAG_COUNT: str(len(keys)), TAG_SHARDS: str(shards)}
    return tags, "".join(k + "\n" for k in keys)


def train_keys(v: ModelVersionInfo) -> list[str] | None:
    """The training keys recorded for a version; None if it has none (registered before p2p
    recorded them).

    Raises:
        RegistryError: recorded but unreadable, or not the file the tags describe.
    """
    if TAG_SHA not in v.tags:
        return None
    if not v.run_id:
        raise RegistryError(f"{v.uri}: has {TAG_SHA} but no run to read {TRAIN_KEYS_ARTIFACT}")
    with tempfile.TemporaryDirectory(prefix="p2p-keys-") as tmp:
        try:
            path = client().download_artifacts(v.run_id, TRAIN_KEYS_ARTIFACT, tmp)
        except Exception as e:  # noqa: BLE001 - any store error means the same here
            raise RegistryError(
                f"{v.uri}: cannot read its training keys {TRAIN_KEYS_ARTIFACT} ({short(e)})"
            ) from None
        keys = Path(path).read_text().splitlines()
    if keys_sha256(keys) != v.tags[TAG_SHA]:
        raise RegistryError(
            f"{v.uri}: {TRAIN_KEYS_ARTIFACT} does not match its tag {TAG_SHA} (changed since "
            "registration)"
        )
    return keys


@dataclass(frozen=True)
class Overlap:
    """Test-set keys a version was trained on."""

    version: int
    role: str  # "challenger" | "champion"
    count: int
    examples: tuple[str, ...]

    def text(self) -> str:
        return (
            f"{self.role} v{self.version} was trained on {self.count} of the test set's "
            f"samples (e.g. {', '.join(self.examples)})"
        )


def overlap(v: ModelVersionInfo, role: str, test_keys: set[str]) -> Overlap | None | str:
    """The overlap of `v`'s training keys with `test_keys`: an Overlap, None (disjoint), or
    "unknown" (no training keys recorded)."""
    keys = train_keys(v)
    if keys is None:
        return "unknown"
    common = sorted(test_keys.intersection(keys))
    if not common:
        return None
    return Overlap(v.version, role, len(common), tuple(common[:EXAMPLES]))
