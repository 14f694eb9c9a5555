"""A registered version's tags read back as numbers (p2p.registry.versions.ModelVersionInfo)."""

from __future__ import annotations

from p2p.registry.versions import ModelVersionInfo


def test_scores_are_the_numeric_metric_tags():
    v = ModelVersionInfo(
        "pix2pix", 3, None, None,
        tags={"metric.psnr": "21.3", "metric.l1": "0.129", "metric.fid": "unavailable: offline",
              "baseline.input.psnr": "12.2", "eval.split": "test"},
    )  # fmt: skip
    assert v.scores() == {"l1": 0.129, "psnr": 21.3}
    assert v.group("baseline") == {"input.psnr": "12.2"}
