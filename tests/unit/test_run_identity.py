"""Run identity in `p2p train`, refused before Ray starts: bad run names, a run another driver
is training (its lease is held), and a resume whose params changed what the model learns.
No Ray run here: every case ends with a one-line error and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2p.cli import main

BAD_NAMES = ["../escaped_run", "a/b", "with space", "$(touch pwned)", ".", "..", "-x", "x" * 129]


def _train(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["train", *argv])
    return rc, capsys.readouterr().err.strip()


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("p2p train: error: "), err
    return err


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_run_name_is_refused(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "store" / "runs"
    sets = ["--set", f"train.storage_path={storage}", "--out", str(tmp_path / "models")]
    err = _one_line_error(*_train(capsys, f"--run-name={name}", *sets))
    assert "--run-name" in err and "not a valid run name" in err
    err = _one_line_error(*_train(capsys, "--set", f"train.run_name={name}", *sets))
    assert "train.run_name" in err
    # nothing written anywhere: not in the storage root, not beside it
    assert not (tmp_path / "store").exists() and not (tmp_path / "models").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_good_run_names_pass():
    from p2p.training.trainer import check_run_name

    for name in ("a", "run-1", "p2p-demo-1234abcd-5678ef90", "A.b_c-d", "x" * 128):
        assert check_run_name(name, "--run-name") == name


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """A tiny local shard set (the command checks the shards before anything else)."""
    from data_fixtures import TINY

    from p2p.config import load_config
    from p2p.data.build import build_demo
    from p2p.data.shards import write_shards

    cfg = load_config(None, {**TINY, "build.num_pairs": 12, "build.size": 72})
    root = tmp_path_factory.mktemp("shards")
    build_demo(root / "raw", cfg.build, cfg.data)
    out = root / "shards"
    write_shards(root / "raw", str(out), cfg.data)
    return str(out)


def _sets(tmp_path: Path, shards: str, *extra: str) -> list[str]:
    sets = [f"data.shards={shards}", f"train.storage_path={tmp_path / 'runs'}", *extra]
    return [x for s in sets for x in ("--set", s)] + ["--out", str(tmp_path / "models")]


def test_second_driver_of_a_run_is_refused(shards, tmp_path, capsys, monkeypatch):
    from p2p.training.lease import Lease, lease_url

    monkeypatch.chdir(tmp_path)
    held = Lease(lease_url(str(tmp_path / "runs"), "busy"), "busy").acquire()  # the first driver
    try:
        err = _one_line_error(*_train(capsys, "--run-name", "busy", *_sets(tmp_path, shards)))
    finally:
        held.release()
    assert "run busy is already being trained" in err and "--run-name" in err
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "mlflow.db").exists()  # refused before the MLflow run was touched


def _fake_checkpoint(storage: Path, run: str, cfg_dict: dict, step: int) -> None:
    """What `latest_checkpoint`/`resume_changes` read from an epoch directory."""
    d = storage / run / "epoch_0002"
    d.mkdir(parents=True)
    (d / "generator.pt").write_bytes(b"weights")
    (d / "config.json").write_text(json.dumps(cfg_dict))
    (d / "metrics.json").write_text(json.dumps({"step": step, "epoch": 2}))


def test_resume_with_changed_params_is_refused(shards, tmp_path, capsys, monkeypatch):
    from data_fixtures import TINY

    from p2p.config import load_config
    from p2p.training.trainer import _absolute_paths

    monkeypatch.chdir(tmp_path)
    base = [f"{k}={v}" for k, v in TINY.items()]
    cfg = load_config(None, [*base, f"data.shards={shards}", f"train.storage_path={tmp_path}/runs"])
    _fake_checkpoint(tmp_path / "runs", "old", _absolute_paths(cfg).to_dict(), step=12)

    args = _sets(tmp_path, shards, *base, "optim.lr=0.001", "train.batch_size=4")
    err = _one_line_error(*_train(capsys, "--run-name", "old", *args))
    assert "run old was trained with other params" in err
    assert "optim.lr 0.0002 -> 0.001" in err and "train.batch_size 2 -> 4" in err
    assert "--allow-changed-params" in err and "another --run-name" in err
    assert not (tmp_path / "models").exists()


def test_which_changes_need_permission(shards, tmp_path):
    from p2p.config import load_config
    from p2p.training.trainer import _absolute_paths, resume_changes

    cfg = _absolute_paths(
        load_config(
            None,
            {
                "data.shards": shards,
                "train.storage_path": str(tmp_path / "runs"),
                "train.batch_size": 2,
            },
        )
    )
    _fake_checkpoint(tmp_path / "runs", "r", cfg.to_dict(), step=30)
    # where and how long it runs may change: more epochs, other workers, another address
    ok = cfg.replace(**{"train.epochs": 9, "resources.num_workers": 2, "resources.address": "x"})
    changed, step = resume_changes(ok, "r", allow=False)
    assert step == 30 and set(changed) == {
        "train.epochs",
        "resources.num_workers",
        "resources.address",
    }
    # what the model learns may not, unless allowed
    for key, value in (("loss.lambda_l1", 10.0), ("optim.beta1", 0.9), ("data.flip", False)):
        with pytest.raises(Exception, match=rf"{key} "):
            resume_changes(cfg.replace(**{key: value}), "r", allow=False)
        changed, _ = resume_changes(cfg.replace(**{key: value}), "r", allow=True)
        assert list(changed) == [key]
    assert resume_changes(cfg, "nothing-yet", allow=False) == ({}, None)
