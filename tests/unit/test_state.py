"""TrainState save/load: a resumed run continues exactly where the saved one was."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from p2p.checkpoints import load_generator
from p2p.errors import P2PError
from p2p.losses import GANLoss
from p2p.models import build_discriminator, build_generator
from p2p.training.schedule import build_scheduler
from p2p.training.state import (
    LOG_COLUMNS,
    SCHEMA_VERSION,
    TrainState,
    load_state,
    read_state,
    rng_state,
    save_state,
    seed_everything,
    set_rng_state,
)
from p2p.training.step import train_step


def make_state(cfg) -> TrainState:
    seed_everything(0)
    g = build_generator(cfg.model, cfg.data.input_nc, cfg.data.output_nc)
    d = build_discriminator(cfg.model, cfg.data.input_nc + cfg.data.output_nc)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.optim.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.optim.lr, betas=betas)
    return TrainState(
        g=g,
        d=d,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=build_scheduler(opt_g, cfg.optim, cfg.epochs),
        sched_d=build_scheduler(opt_d, cfg.optim, cfg.epochs),
    )


def run_steps(state: TrainState, cfg, batches, n: int) -> list[dict[str, float]]:
    out = []
    gan = GANLoss(cfg.loss.gan_mode)
    for i in range(n):
        a, b = batches[i % len(batches)]
        out.append(train_step(state.g, state.d, state.opt_g, state.opt_d, a, b, cfg, gan_loss=gan))
        state.step += 1
    return out


@pytest.fixture
def cfg(tiny_cfg):
    # short linear schedule so the scheduler state matters (lr decays after epoch 1)
    return tiny_cfg.replace(**{"optim.n_epochs": 1, "optim.n_epochs_decay": 3})


@pytest.fixture
def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1,) * 2 for _ in range(2)]


def test_resume_continues_bit_exactly(cfg, batches, tmp_path):
    state = make_state(cfg)
    run_steps(state, cfg, batches, 2)
    state.sched_g.step()
    state.sched_d.step()
    state.epoch = 1
    state.log = [{"step": 2, "epoch": 1, "loss_d": 0.5, "lr": 2e-4}]
    seed_everything(123)  # dropout masks come from here on
    save_state(tmp_path, state, cfg, metrics={"val_l1": 0.25})
    expected = run_steps(state, cfg, batches, 2)  # the uninterrupted run

    fresh = make_state(cfg)  # new process: different weights, optimizer moments, RNG
    torch.manual_seed(999)
    blob = load_state(tmp_path, fresh)
    assert blob["rng_restored"]
    assert (fresh.step, fresh.epoch) == (2, 1)
    assert fresh.log == [{"step": 2, "epoch": 1, "loss_d": 0.5, "lr": 2e-4}]
    assert fresh.opt_g.param_groups[0]["lr"] == pytest.approx(state.opt_g.param_groups[0]["lr"])
    assert fresh.opt_g.param_groups[0]["lr"] < cfg.optim.lr  # the decayed lr came back
    resumed = run_steps(fresh, cfg, batches, 2)
    assert resumed == expected  # same weights, Adam moments, dropout masks: identical losses


def test_checkpoint_files(cfg, tmp_path):
    state = make_state(cfg)
    state.step, state.epoch = 7, 3
    state.log = [{"step": 5, "epoch": 3, "loss_d": 0.7}, {"step": 7, "val_psnr": 12.5}]
    save_state(tmp_path, state, cfg, metrics={"val_psnr": 12.5})
    names = {p.name for p in tmp_path.iterdir()}
    assert {"state.pt", "generator.pt", "config.json", "train_log.csv", "metrics.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # atomic writes left nothing behind

    raw = torch.load(tmp_path / "state.pt", weights_only=True)  # plain values only
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["config"] == cfg.to_dict()
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "step": 7,
        "epoch": 3,
        "val_psnr": 12.5,
    }
    lines = (tmp_path / "train_log.csv").read_text().splitlines()
    assert lines[0] == ",".join(LOG_COLUMNS)
    assert lines[1].startswith("5,3,0.7,") and lines[2].endswith(",12.5,")

    g = load_generator(tmp_path / "generator.pt")  # the weights-only inference file
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    state.g.eval()
    torch.testing.assert_close(g(x), state.g(x))


def test_wrapped_modules_save_bare_keys(cfg, tmp_path):
    state = make_state(cfg)
    bare_keys = set(state.g.state_dict())
    state.g = torch.compile(state.g)  # OptimizedModule: its state_dict keys gain "_orig_mod."
    assert any(k.startswith("_orig_mod.") for k in state.g.state_dict())
    save_state(tmp_path, state, cfg)
    assert set(read_state(tmp_path)["G"]) == bare_keys
    fresh = make_state(cfg)
    fresh.g = torch.compile(fresh.g)
    load_state(tmp_path, fresh)  # loads into the wrapped module too


def test_rng_roundtrip():
    seed_everything(5)
    saved = rng_state()
    want = (random.random(), float(np.random.rand()), float(torch.rand(())))
    seed_everything(6)
    set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want


def test_rng_not_restored_for_another_world_size(cfg, tmp_path):
    state = make_state(cfg)
    save_state(tmp_path, state, cfg, rng=[rng_state(), rng_state()])  # written by 2 ranks
    assert load_state(tmp_path, make_state(cfg), rank=1, world_size=2)["rng_restored"]
    assert not load_state(tmp_path, make_state(cfg), rank=0, world_size=3)["rng_restored"]


def test_bad_checkpoints_name_the_file(cfg, tmp_path):
    with pytest.raises(P2PError, match="state.pt"):
        read_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(P2PError, match=str(tmp_path / "state.pt")):
        read_state(tmp_path)
    torch.save({"schema_version": SCHEMA_VERSION + 1}, tmp_path / "state.pt")
    with pytest.raises(P2PError, match="newer"):
        read_state(tmp_path)
    torch.save({"G": {}}, tmp_path / "state.pt")
    with pytest.raises(P2PError, match="schema_version"):
        read_state(tmp_path)
