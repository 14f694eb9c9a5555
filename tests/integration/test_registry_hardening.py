"""Registry hardening against real components (sqlite MLflow store, real shards, real
evaluation): an unreachable server fails fast without leaking credentials, alias moves are
compare-and-set, the gate never judges on training data, rollback keeps the challenger."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_registry import OVERRIDES, make_cfg, make_checkpoint, make_shards

from p2p.evaluation.evaluate import evaluate_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield root


def _register(name, cfg, tmp_path, shards_url, *, seed=0, saturate=None, train_shards=None):
    from p2p import registry

    ckpt = make_checkpoint(
        tmp_path / f"{name}-{seed}-{saturate}.pt", cfg, seed=seed, saturate=saturate
    )
    m = evaluate_checkpoint(ckpt, shards_url, cfg, tmp_path / f"eval-{seed}-{saturate}")
    extra = {"train_shards": train_shards} if train_shards else {}
    return registry.log_and_register(ckpt, cfg, m, lineage={}, **extra), m


# ----------------------------------------------------------------------------- 1. unreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.parametrize("with_secret", [False, True])
def test_unreachable_tracking_server_one_line_no_secret(tmp_path, with_secret):
    """`p2p registry show` against a closed port: exit 2, one line, no credentials, and it
    finishes (MLflow alone retries for ~250 s). With credentials the default budget is used."""
    port = _closed_port()
    userinfo = "u:SECRET-pw@" if with_secret else ""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"http://{userinfo}127.0.0.1:{port}",
    }
    env.pop("P2P_MLFLOW_TIMEOUT_S", None)
    if not with_secret:
        env["P2P_MLFLOW_TIMEOUT_S"] = "3"  # the setting is honoured
    argv = [sys.executable, "-m", "p2p", "registry", "show", "some-model"]
    argv += ["--params", str(REPO / "params.yaml")]
    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    said = r.stdout + r.stderr
    assert r.returncode == 2, said
    assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout.strip(), said
    assert "SECRET-pw" not in said
    assert f"127.0.0.1:{port}" in said and "unreachable" in said
    assert "connection refused" in said and "MLFLOW_TRACKING_URI" in said
    if with_secret:
        assert "u:***@" in said and "in 30s" in said
    else:
        assert "in 3s" in said


def test_bad_timeout_setting_is_one_line(store, monkeypatch):
    from p2p import registry

    monkeypatch.setenv("P2P_MLFLOW_TIMEOUT_S", "soon")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    with pytest.raises(registry.RegistryError, match="P2P_MLFLOW_TIMEOUT_S='soon'"):
        registry.show("x")


# ----------------------------------------------------------------------------- 2. CAS race


def _run(got, key, barrier, fn, *args, **kwargs):
    """fn(*args) in a thread, started together with the other one; result or error in got."""
    barrier.wait()
    try:
        got[key] = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the test asserts on it
        got[key] = e


def test_gate_and_manual_promote_race(store, shards, tmp_path):
    """The gate (v3 beats v1 but not v2) races a manual promotion of v2, 50 times. Every
    outcome is applied and recorded, or aborted with a message; the champion ends as v2
    every time (v3 never displaces v2 without having been compared with it)."""
    from p2p import registry

    name = "race"
    cfg = make_cfg(**{"eval.model_name": name, "eval.metric": "psnr", "eval.margin": 0.0})
    v1, m1 = _register(name, cfg, tmp_path, shards[0], saturate=3.0)  # worst
    v2, m2 = _register(name, cfg, tmp_path, shards[0], seed=0)  # best
    v3, m3 = _register(name, cfg, tmp_path, shards[0], saturate=1.0)  # in between
    assert m2["psnr"] > m3["psnr"] > m1["psnr"]

    outcomes = []
    for i in range(50):
        registry.promote(name, 1, reason=f"reset {i}")
        barrier = threading.Barrier(2)
        got: dict[str, object] = {}
        threads = [
            threading.Thread(
                target=_run, args=(got, "gate", barrier, registry.promotion_gate, name, 3)
            ),
            threading.Thread(
                target=_run,
                args=(got, "manual", barrier, registry.promote, name, 2),
                kwargs={"reason": f"manual {i}"},
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        champion = registry.get_version(name, "champion").version
        assert champion == 2, f"round {i}: champion v{champion}, gate said {got['gate']}"
        d = got["gate"]
        assert isinstance(d, registry.GateDecision), f"round {i}: {d!r}"
        assert not isinstance(got["manual"], Exception), f"round {i}: {got['manual']!r}"
        if d.outcome == "promoted":  # compared with v1, moved, then the manual move came
            assert d.champion_version == 1
        elif d.outcome == "rejected":  # the manual move came first and the gate saw it
            assert d.champion_version == 2 and "v2" in d.reason
        else:  # decided against v1, then v2 arrived before the move: nothing moved
            assert d.outcome == "aborted" and d.champion_version == 1, d
            assert "champion is now v2" in d.reason and "nothing moved" in d.reason
        assert registry.get_version(name, 3).tags["gate.decision"] == d.outcome
        # every move of the round is in the alias log, in order, ending at v2
        log = registry.show(name)["alias_moves"]
        start = max(j for j, e in enumerate(log) if e["reason"] == f"reset {i}")
        moves = [(e["from"], e["to"]) for e in log[start:] if e["alias"] == "champion"]
        assert moves[0][1] == 1 and moves[-1][1] == 2
        assert all(a[1] == b[0] for a, b in zip(moves, moves[1:], strict=False)), moves
        assert ((1, 3) in moves) == (d.outcome == "promoted"), (moves, d.outcome)
        outcomes.append(d.outcome)
    print("race outcomes:", {o: outcomes.count(o) for o in set(outcomes)})
    assert not registry.show()["models"] or all(
        not m["name"].endswith(".p2p-alias-lock") for m in registry.show()["models"]
    )


def test_stale_lock_is_broken_and_foreign_lock_times_out(store, shards, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from p2p import registry
    from p2p.registry import aliases

    name = "locked"
    cfg = make_cfg(**{"eval.model_name": name})
    _register(name, cfg, tmp_path, shards[0])
    client = MlflowClient()
    # a live holder: the move waits, then gives up with one line naming the lock
    client.create_registered_model(name + aliases.LOCK_SUFFIX, tags={"p2p.lock.at": "9e99"})
    monkeypatch.setenv("P2P_MLFLOW_TIMEOUT_S", "1")
    with pytest.raises(registry.RegistryError, match="another alias change holds"):
        registry.promote(name, 1)
    assert registry.show(name)["aliases"] == {"challenger": 1}
    # a crashed holder (older than LOCK_TTL_S): broken, the move happens
    client.set_registered_model_tag(name + aliases.LOCK_SUFFIX, "p2p.lock.at", "1.0")
    assert registry.promote(name, 1).version == 1
    assert client.search_registered_models(f"name = '{name}{aliases.LOCK_SUFFIX}'") == []


# ----------------------------------------------------------------------------- 3. training data


def _moved_test_into_train(shards_url: str, dst: Path) -> str:
    """An older data version of the same photos in which today's test samples were training
    samples: the raw data with the test pairs relabelled train, sharded again."""
    import dataclasses

    from p2p.data.manifest import load_manifest, write_manifest
    from p2p.data.shards import write_shards

    raw = Path(shards_url).parent / "raw"
    shutil.copytree(raw, dst / "raw")
    m = load_manifest(dst / "raw")
    pairs = []
    for p in m.entries:
        if p.split == "test":  # paths follow from split and key: move the files too
            moved = dataclasses.replace(p, split="train")
            for src, to in ((p.a, moved.a), (p.b, moved.b)):
                to.parent.mkdir(parents=True, exist_ok=True)
                src.rename(to)
            p = moved
        pairs.append(p)
    write_manifest(m.path, m.name, sorted(pairs, key=lambda p: (p.split, p.key)))
    write_shards(dst / "raw", dst / "shards", make_cfg().data)
    return str(dst / "shards")


def test_gate_refuses_to_judge_on_training_data(store, shards, tmp_path):
    from mlflow import MlflowClient

    from p2p import registry
    from p2p.registry.lineage import TRAIN_KEYS_ARTIFACT, split_keys

    name = "reg-leak"
    cfg = make_cfg(**{"eval.model_name": name, "eval.metric": "psnr"})
    old_data = _moved_test_into_train(shards[0], tmp_path / "old")
    test_keys = set(split_keys(shards[0], "test"))
    leaked = sorted(test_keys & set(split_keys(old_data, "train")))
    assert leaked and len(leaked) == len(test_keys)  # the precondition, read independently

    # the champion trained on the old data version: its train keys are recorded
    champ, m_champ = _register(name, cfg, tmp_path, shards[0], saturate=3.0, train_shards=old_data)
    assert champ.tags["lineage.train_keys_count"] == str(len(split_keys(old_data, "train")))
    assert champ.tags["lineage.train_shards"] == old_data
    path = MlflowClient().download_artifacts(champ.run_id, TRAIN_KEYS_ARTIFACT, str(tmp_path))
    assert Path(path).read_text().splitlines() == split_keys(old_data, "train")
    registry.promote(name, champ.version)

    # a clean challenger (trained on today's train split) is not compared with that champion
    clean, _ = _register(name, cfg, tmp_path, shards[0], seed=0, train_shards=shards[0])
    d = registry.promotion_gate(name, clean.version)
    assert d.outcome == "refused" and not d.promoted
    assert f"champion v{champ.version} was trained on {len(leaked)} of the test set" in d.reason
    assert leaked[0] in d.reason
    assert registry.get_version(name, "champion").version == champ.version  # nothing moved
    tags = registry.get_version(name, clean.version).tags
    assert tags["gate.decision"] == "refused"
    assert tags["gate.train_overlap_count"] == str(len(leaked))
    assert leaked[0] in tags["gate.train_overlap"]

    # a challenger that trained on the test samples is never judged on them either
    leaky, _ = _register(name, cfg, tmp_path, shards[0], seed=3, train_shards=old_data)
    d = registry.promotion_gate(name, leaky.version)
    assert d.outcome == "refused" and f"challenger v{leaky.version} was trained on" in d.reason

    # with a clean champion the comparison happens
    registry.promote(name, clean.version)
    fair, _ = _register(name, cfg, tmp_path, shards[0], seed=5, train_shards=shards[0])
    d = registry.promotion_gate(name, fair.version)
    assert d.outcome in ("promoted", "rejected") and not d.train_overlap
    assert "refusing" not in d.reason


def test_train_keys_explicit_unreadable_is_an_error(store, shards, tmp_path):
    from p2p import registry

    cfg = make_cfg(**{"eval.model_name": "reg-nokeys"})
    with pytest.raises(registry.RegistryError, match="--train-shards .*nowhere"):
        _register("reg-nokeys", cfg, tmp_path, shards[0], train_shards=str(tmp_path / "nowhere"))
    assert registry.find_version("reg-nokeys", data_version="x", params_hash="y") is None


# ----------------------------------------------------------------------------- 4. aliases, CLI


def test_rollback_gives_the_challenger_alias_back(store, shards, tmp_path):
    from p2p import registry

    name = "reg-rb-alias"
    cfg = make_cfg(**{"eval.model_name": name})
    _register(name, cfg, tmp_path, shards[0], saturate=3.0)
    registry.promote(name, 1)
    _register(name, cfg, tmp_path, shards[0], seed=0)
    assert registry.show(name)["aliases"] == {"champion": 1, "challenger": 2}
    registry.promote(name, 2)
    assert registry.show(name)["aliases"] == {"champion": 2}
    registry.rollback(name)
    assert registry.show(name)["aliases"] == {"champion": 1, "challenger": 2}
    moves = [(e["alias"], e["from"], e["to"]) for e in registry.show(name)["alias_moves"]]
    assert moves[-2:] == [("champion", 2, 1), ("challenger", None, 2)]


def test_filter_values_with_backslashes_and_quotes(store, shards, tmp_path):
    from p2p import registry

    name = "reg-quote"
    cfg = make_cfg(**{"eval.model_name": name})
    ckpt = make_checkpoint(tmp_path / "q.pt", cfg)
    m = evaluate_checkpoint(ckpt, shards[0], cfg, tmp_path / "eval-q")
    odd = "C:\\data\\v'1"
    v = registry.log_and_register(ckpt, cfg, m, lineage={"data_version": odd})
    found = registry.find_version(name, data_version=odd, params_hash=cfg.model_hash())
    assert found is not None and found.version == v.version
    assert registry.find_version(name, data_version="C:\\data", params_hash="x") is None


def test_cli_name_defaults_to_eval_model_name(store, shards, tmp_path, capsys):
    from p2p.cli import main

    name = "reg-cli-default"
    cfg = make_cfg(**{"eval.model_name": name})
    _register(name, cfg, tmp_path, shards[0], saturate=3.0)
    _register(name, cfg, tmp_path, shards[0], seed=0)
    sets = [f"--set={k}={v}" for k, v in OVERRIDES.items()] + [f"--set=eval.model_name={name}"]
    assert main(["registry", "promote", "1", *sets]) == 0
    assert f"{name}: champion is now v1" in capsys.readouterr().out
    assert main(["registry", "gate", "2", "--metric", "psnr", *sets]) == 0
    assert f"{name} v2: PROMOTED" in capsys.readouterr().out
    assert main(["registry", "rollback", *sets]) == 0
    assert "champion is now v1" in capsys.readouterr().out
    assert main(["registry", "gate", name, "2", "--metric", "psnr", *sets]) == 0
    capsys.readouterr()
    assert main(["registry", "gate", "two", *sets]) == 2
    assert "expected [NAME] VERSION" in capsys.readouterr().err
