"""The demo dataset at the default params: 240 pairs of 256 px from the installed photos."""

from __future__ import annotations

from p2p.config import BuildConfig, DataConfig
from p2p.data.build import build_demo
from p2p.data.manifest import load_manifest


def test_build_demo_default_params(tmp_path):
    rep = build_demo(tmp_path / "demo", BuildConfig(), DataConfig())
    assert rep.counts == {"train": 192, "val": 24, "test": 24}
    m = load_manifest(tmp_path / "demo")
    assert {p.a_size for p in m.entries} == {(256, 256)}
    print(f"demo: {len(m)} pairs, {rep.bytes / 1e6:.1f} MB in {rep.seconds:.1f} s")
