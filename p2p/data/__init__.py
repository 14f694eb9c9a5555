"""Paired image data: raw images in, validated canonical pairs, shards and loaders out.

Modules (import the one you need; this package imports nothing so it stays cheap):

- `images`: decode and validate one image file (`open_image`), deterministic PNG (`encode_png`).
- `transforms`: `PairedTransform`, the same resize / crop / flip for input and target, to [-1, 1].
- `manifest`: the canonical layout (`A/<split>/<key>.png`, `B/<split>/<key>.png`,
  `manifest.jsonl`), SPLITS, keys, the split rule (`split_of`), `load_manifest` / `iter_pairs`.
- `reports`: `Problem`, `InvalidDataset`, `ImportReport`, `ValidationReport`.
- `writer`: `DatasetWriter`, temp dir + atomic swap, crash recovery.
- `sources`: scan of the aligned | folders source layouts into candidate pairs.
- `importer`: `import_pairs` (decode each image once, validate, encode, write).
- `validate`: `validate_dataset` of a canonical dataset or a source layout.
- `pairs`: temporary re-exports of the names above for older callers.
- `build`: pairs made from plain photos (edges | colorize | superres) and the demo dataset.
"""
