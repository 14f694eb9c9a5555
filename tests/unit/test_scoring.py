"""One scoring path: `p2p evaluate` and the training loop's per-epoch validation give the same
val/l1, val/psnr, val/ssim on the same images (p2p.evaluation.scoring)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2p.config import load_config
from p2p.evaluation.scoring import ScoreSums, score_batches

SMALL = {
    "data.crop_size": 64,
    "data.load_size": 72,
    "data.loader_workers": 0,
    "model.num_downs": 6,
    "model.base_channels": 4,
    "model.disc_channels": 4,
    "build.size": 72,
    "build.num_pairs": 20,
    "eval.num_samples": 2,
}


# torch on one thread for every test here (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def shards(tmp_path) -> Path:
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    cfg = load_config(None, SMALL)
    build_demo(tmp_path / "raw", cfg.build, cfg.data)
    write_shards(tmp_path / "raw", tmp_path / "shards", cfg.data)
    return tmp_path / "shards"


def _generator(cfg):
    from p2p.models import build_generator

    torch.manual_seed(0)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc).train()
    with torch.no_grad():
        g(torch.rand(4, 3, 64, 64) * 2 - 1)  # non-default BN running statistics
    return g


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_training_validation_scores_as_evaluate(shards, batch):
    """Eval mode (running statistics, no dropout): both paths score every val image once and
    give the same numbers; a batch that does not divide the split exercises the padding."""
    from p2p.data.shards import read_index
    from p2p.evaluation.evaluate import _score_split
    from p2p.training.tracking import RunLogger
    from p2p.training.validation import validate

    over = {"data.shards": str(shards), "eval.eval_mode": True, "eval.batch_size": batch}
    cfg = load_config(None, {**SMALL, **over, "train.val_batches": 100})
    n_val = read_index(str(shards)).samples("val")
    assert n_val > 1
    g = _generator(cfg)
    ev = _score_split(g.eval(), str(shards), "val", n_val, cfg, "eval", "cpu", Path("g.pt"))
    g.train()  # as the training loop leaves it
    before = {k: v.clone() for k, v in g.state_dict().items()}
    index = read_index(str(shards))
    val = validate(
        cfg, g, 0, 1, batch, lambda x: x, None, RunLogger(None, None), epoch=1, index=index
    )
    assert val == {f"val_{k}": v for k, v in ev.means.items()}
    assert g.training and all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_validation_uses_the_index_it_is_given(shards, monkeypatch):
    """The training loop reads index.json once and hands it to every epoch's validation: the
    validation reads no index.json of its own."""
    import p2p.data.dataset
    import p2p.data.shard_index
    import p2p.data.shards
    from p2p.training.tracking import RunLogger
    from p2p.training.validation import validate

    cfg = load_config(None, {**SMALL, "data.shards": str(shards), "train.val_batches": 1})
    index = p2p.data.shard_index.read_index(str(shards))

    def no_reads(url):
        raise AssertionError(f"index.json read again: {url}")

    for mod in (p2p.data.dataset, p2p.data.shard_index, p2p.data.shards):
        monkeypatch.setattr(mod, "read_index", no_reads)
    g = _generator(cfg)
    val = validate(cfg, g, 0, 1, 2, lambda x: x, None, RunLogger(None, None), 1, index=index)
    assert set(val) == {"val_l1", "val_psnr", "val_ssim"}


def test_score_batches_skips_padding_but_runs_it():
    """`limit` leaves the trailing padded images out of the means; the generator still sees
    whole batches."""
    a = torch.rand(3, 3, 16, 16) * 2 - 1
    b = torch.rand(3, 3, 16, 16) * 2 - 1
    seen = []

    def gen(x):
        seen.append(x.shape[0])
        return x * 0.5

    sums = score_batches([(a[:2], b[:2]), (a[2:], b[2:]), (a[:2], b[:2])], gen, limit=3)
    assert seen == [2, 1, 2] and sums.n == 3
    whole = ScoreSums()
    whole.add(a * 0.5, b)
    assert sums.means() == pytest.approx(whole.means(), rel=1e-12)
    assert ScoreSums().means() == {"l1": 0.0, "psnr": 0.0, "ssim": 0.0}
