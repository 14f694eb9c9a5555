"""torch.compile'd training steps compute the losses of the plain fp32 eager step (tolerances:
tests/step_paths.py)."""

from __future__ import annotations

import pytest
from step_paths import BF16_REL, FP32_REL, assert_tracks, losses, paths_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny convs: tests/conftest.py


# slow: inductor compiles G and D forward + backward: 1-3 min cold on 2 cores
def test_compile_matches_eager():
    cfg = paths_cfg()
    fp32 = losses(cfg)
    assert_tracks(losses(cfg, compile_=True), fp32, FP32_REL)
    assert_tracks(losses(cfg, compile_=True, bf16=True, channels_last=True), fp32, BF16_REL)
