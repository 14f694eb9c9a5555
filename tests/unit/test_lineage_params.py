"""What a run logs as params and what its lineage hash covers (p2p.config.model_hash,
p2p.training.tracking.applied_params)."""

from __future__ import annotations

from p2p.config import RUN_ONLY_GROUPS, RUN_ONLY_KEYS, load_config, model_params
from p2p.training.tracking import BUILD_ONLY_KEYS, applied_params


def test_model_hash_ignores_where_a_run_runs():
    cfg = load_config(None)
    elsewhere = cfg.replace(
        **{
            "train.storage_path": "s3://bucket/runs",  # the run's config has absolute paths
            "data.shards": "/abs/data/shards",
            "train.run_name": "nightly",
            "resources.num_workers": 1,
            "resources.address": "auto",
            "eval.batch_size": 16,
            "build.num_pairs": 7,
        }
    )
    assert elsewhere.params_hash() != cfg.params_hash()
    assert elsewhere.model_hash() == cfg.model_hash()


def test_model_hash_changes_with_what_trains():
    cfg = load_config(None)
    for key, value in {
        "optim.lr": 1e-3,
        "train.batch_size": 2,
        "train.epochs": 3,
        "model.base_channels": 32,
        "loss.lambda_l1": 10.0,
        "data.flip": False,
        "data.image_format": "jpg",
    }.items():
        assert cfg.replace(**{key: value}).model_hash() != cfg.model_hash(), key
    keys = set(model_params(cfg))
    assert not keys & RUN_ONLY_KEYS and not any(k.startswith(RUN_ONLY_GROUPS) for k in keys)
    assert {"optim.lr", "model.generator", "train.seed", "data.direction"} <= keys


def test_build_params_logged_only_for_built_datasets():
    demo = load_config(None)  # data.source demo: pairs built from the demo photos
    assert set(applied_params(demo)) == set(demo.flat())
    photos = demo.replace(**{"data.source": "/photos", "data.source_format": "photos"})
    assert set(applied_params(photos)) == set(photos.flat())
    imported = demo.replace(**{"data.source": "/pairs", "data.source_format": "aligned"})
    logged = applied_params(imported)
    assert not set(BUILD_ONLY_KEYS) & set(logged)
    assert set(imported.flat()) - set(logged) == set(BUILD_ONLY_KEYS)
    assert {"build.seed", "build.val_fraction", "build.test_fraction"} <= set(logged)
