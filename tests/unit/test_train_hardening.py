"""Driver-side pieces of `p2p train` hardening, without Ray runs: what travels to Ray workers
(no secrets), how a DataError is found inside Ray's errors, and how a resumed run takes new
optimizer settings."""

from __future__ import annotations

import pytest
import torch

from p2p.errors import DataError
from p2p.settings import SECRET_VARS, Settings


def test_worker_env_carries_no_secret(monkeypatch):
    for name in SECRET_VARS:
        monkeypatch.setenv(name, f"secret-{name}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    env = Settings.from_env().worker_env()
    assert env == {
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:pa55@mlflow.example.com")
    assert "MLFLOW_TRACKING_URI" not in Settings.from_env().worker_env()  # a password: secret


def test_data_error_found_inside_ray_errors():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from p2p.training.failures import data_error_message

    cause = "s3://b/shards/train-000000.tar: sample 'k' has no target image"
    worker = UserExceptionWithTraceback(DataError(cause), traceback_str="Traceback ...\nboom")
    assert data_error_message(worker) == cause
    assert data_error_message(ControllerError(DataError(cause))) == cause
    group = WorkerGroupError("Training failed", {1: worker})
    assert data_error_message(group) is None  # the callback looks at each worker's error
    # torch's DataLoader re-raises a worker's error with the traceback in the message
    loader = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        f'call last):\n  File "x.py", line 1, in f\np2p.errors.DataError: {cause}\n'
    )
    assert data_error_message(UserExceptionWithTraceback(loader, "tb")) == cause
    infra = UserExceptionWithTraceback(ConnectionError("peer reset"), "tb")
    assert data_error_message(infra) is None  # retried as before
    assert data_error_message(ControllerError(RuntimeError("x"))) is None


def test_callback_stops_on_data_error_only():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from p2p.training.failures import StopOnDataError

    cb = StopOnDataError()
    cb.after_exception(None, {0: UserExceptionWithTraceback(OSError("node lost"), "tb")})
    with pytest.raises(DataError, match="^bad.tar: corrupt$"):
        cb.after_exception(
            None,
            {
                0: UserExceptionWithTraceback(OSError("collective aborted"), "tb"),
                1: UserExceptionWithTraceback(DataError("bad.tar: corrupt"), "tb"),
            },
        )


def _state(lr: float, policy: str = "linear"):
    from p2p.config import OptimConfig
    from p2p.training.schedule import build_scheduler
    from p2p.training.state import TrainState

    optim = OptimConfig(lr=lr, lr_policy=policy, n_epochs=2, n_epochs_decay=4)
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    state = TrainState(
        g=g,
        d=d,
        opt_g=opt_g,
        opt_d=opt_d,
        sched_g=build_scheduler(opt_g, optim, 6),
        sched_d=build_scheduler(opt_d, optim, 6),
    )
    return state, optim


@pytest.mark.parametrize("policy", ["linear", "step", "cosine"])
def test_resumed_run_takes_the_new_optim_settings(policy):
    """After 4 epochs at lr 2e-4, a resume with lr 1e-3 and beta1 0.9 trains epoch 5 with the
    lr the new settings give at that point of the schedule (what a fresh run at 1e-3 has)."""
    import warnings

    from p2p.config import OptimConfig
    from p2p.training.state import apply_optim_config

    warnings.simplefilter("ignore")  # scheduler.step() before optimizer.step()
    old, old_optim = _state(2e-4, policy)
    fresh, _ = _state(1e-3, policy)
    for _ in range(4):
        old.sched_g.step()
        fresh.sched_g.step()
    resumed, _ = _state(2e-4, policy)  # what load_state restores: the old states
    resumed.opt_g.load_state_dict(old.opt_g.state_dict())
    resumed.sched_g.load_state_dict(old.sched_g.state_dict())
    new = OptimConfig(lr=1e-3, beta1=0.9, lr_policy=policy, n_epochs=2, n_epochs_decay=4)
    assert apply_optim_config(resumed, {**vars(old_optim)}, new)
    group = resumed.opt_g.param_groups[0]
    assert group["lr"] == pytest.approx(fresh.opt_g.param_groups[0]["lr"])
    assert group["betas"] == (0.9, 0.999)
    resumed.sched_g.step()
    fresh.sched_g.step()
    assert resumed.opt_g.param_groups[0]["lr"] == pytest.approx(fresh.opt_g.param_groups[0]["lr"])
    # unchanged settings: nothing touched
    same, _ = _state(2e-4, policy)
    assert not apply_optim_config(same, {**vars(old_optim)}, old_optim)
