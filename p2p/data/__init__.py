"""Paired image data: raw images in, validated canonical pairs, shards and loaders out.

Modules (import the one you need; this package imports nothing so it stays cheap):

- `images`: decode and validate one image file (`open_image`), deterministic PNG (`encode_png`).
- `transforms`: `PairedTransform`, the same resize / crop / flip for input and target, to [-1, 1].
- `pairs`: the canonical raw layout (`A/<split>/<key>.png`, `B/<split>/<key>.png`,
  `manifest.json`), `load_manifest`, `import_pairs` (aligned | folders), `validate_dataset`,
  and `PairedImageDataset`, a map-style reader of a canonical dir.
- `build`: pairs made from plain photos (edges | colorize | superres) and the demo dataset.
"""
