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
- `build`: pairs made from plain photos, and the demo dataset; `build_tasks`: the tasks
  (`TASKS`: edges | colorize | superres | denoise), photo tile -> input.
- `download`: the paper's published datasets (facades, maps, ...), fetched, checked, imported.
- `prepare`: the `prepare` stage, data.source -> the canonical dataset at data.raw_dir.
- `versioning`: dataset versions with DVC (dvc add + the .dvc file + push, pull);
  `data_version`: `DataVersion` and reading .dvc / dvc.lock without DVC; `dvc_repo`: remotes
  and serialized repository access.
- `shards`: WebDataset shards from a canonical dataset (deterministic tars + an index), with
  `shard_index` (the typed, validated index.json and the per-split key files), `shard_tar`
  (the deterministic tar writer) and `shard_publish` (local swap, streamed S3 upload).
- `storage/`: local paths, s3:// and any registered scheme behind one API (`BACKENDS`).
- `dataset`: the streaming training loader over shards, equal batches on every rank;
  `shard_read`: the verified tar reader under it.
"""
