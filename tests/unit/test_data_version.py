"""One data version type: DataVersion.full / .short / of_index, and what the pipeline owns."""

from __future__ import annotations

from p2p.data.shards import ShardIndex
from p2p.data.versioning import DataVersion, pipeline_owned, short_version


def _index(name: str = "", **data_version) -> ShardIndex:
    return ShardIndex(name=name, data_version=data_version, params={}, splits={})


def test_full_and_short_forms():
    v = DataVersion("data/raw/demo", "0123456789abcdef0123456789abcdef.dir", 3, 10, None, "x")
    assert v.full == "0123456789abcdef0123456789abcdef.dir"
    assert v.short == "0123456789ab" and v.dvc_recorded
    assert short_version("manifest-sha256:" + "f" * 64) == "f" * 12


def test_of_index_prefers_dvc_then_manifest():
    dvc = _index("demo", dvc_md5="ab" * 16 + ".dir", dvc_source="dvc.lock")
    assert DataVersion.of_index(dvc).full == "ab" * 16 + ".dir"
    assert DataVersion.of_index(dvc).dvc_file == "dvc.lock"
    manifest = _index(dvc_md5=None, manifest_sha256="c" * 64)
    v = DataVersion.of_index(manifest)
    assert v.full == "manifest-sha256:" + "c" * 64 and v.short == "c" * 12
    assert not v.dvc_recorded
    assert DataVersion.of_index(_index()).full == "manifest-sha256:unknown"


def test_evaluation_and_tracking_use_the_same_forms():
    from p2p.evaluation.evaluate import data_version_of

    index = _index(dvc_md5="12" * 16 + ".dir")
    assert data_version_of(index) == DataVersion.of_index(index).full


def test_pipeline_owned_paths():
    outs = ["data/raw/demo", "models/generator.pt", "reports/metrics.json"]
    for p in (
        "dvc.lock",
        "data/raw/demo.dvc",
        "data/raw/.gitignore",
        "data/raw/demo/manifest.json",
        "models/.gitignore",
        "reports/metrics.json",
    ):
        assert pipeline_owned(p, outs), p
    for p in (".gitignore", "p2p/losses.py", "params.yaml", "dvc.yaml", "data/raw/demo2/x"):
        assert not pipeline_owned(p, outs), p


def test_reading_a_data_version_does_not_load_dvc():
    """`p2p.data.data_version` (what shards, training tags and evaluation import) reads the
    .dvc files and dvc.lock with YAML alone; `p2p.data.versioning` re-exports its names."""
    import subprocess
    import sys

    import p2p.data.data_version as dv
    import p2p.data.versioning as versioning

    code = "import sys, p2p.data.data_version; print('dvc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    for name in ("DataVersion", "current_version", "recorded_version", "short_version"):
        assert getattr(versioning, name) is getattr(dv, name)
