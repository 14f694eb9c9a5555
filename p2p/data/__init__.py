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
- `build`: pairs made from plain photos (`TASKS`: edges | colorize | superres) and the demo dataset.
- `download`: the paper's published datasets (facades, maps, ...), fetched, checked, imported.
- `prepare`: the `prepare` stage, data.source -> the canonical dataset at data.raw_dir.
- `versioning`: dataset versions with DVC (dvc add + the .dvc file + push, pull, remotes).
- `shards`: WebDataset shards from a canonical dataset (deterministic tars + an index).
- `storage`: local paths and s3:// URLs behind one small API (the library's S3 client, `s3_client`).
- `dataset`: the streaming training loader over shards, equal batches on every rank.
"""
