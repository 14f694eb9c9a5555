"""What of Ray's own output reaches the `p2p train` console: p2p's lines and errors, not Ray's
routine chatter. Everything Ray logs still lands in its log files (the session's `logs/`
directory: `<RAY_TMPDIR or /tmp>/ray/session_latest/logs` for a local Ray).

Three sources, three settings:
- Ray Train's INFO logs on the controller and the workers ("Checkpoint successfully created",
  "Setting up process group", worker-group start): `RunConfig(logging_config=
  train_logging_config())`, console level WARNING. Ray Train's own log files keep every level.
- "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt
  out" at every local `ray.init()`: Ray turns token auth on for a new local cluster when
  RAY_AUTH_MODE is unset, and says so. p2p keeps Ray's default and does not print the notice
  (`quiet_auth_notice`); the README says how auth works.
- Lines that no log level reaches, printed on every run: the TrainController's C++ error
  "Actor with class name: 'PreemptionWatcher' ... has constructor arguments in the object store
  and max_restarts > 0" (ray-project/ray#53727: Ray Train's own preemption watcher, harmless),
  and the worker's "Reporting training result N: TrainingReport(...)" (logged on a logger named
  by its file path, outside `ray.train`). They reach the console by Ray's worker-log
  forwarding; `drop_known_noise` removes the lines of `KNOWN_NOISE` from what the driver prints
  (they stay in the worker's .out/.err files). Only those lines: every other worker line,
  errors included, is printed as before.
- At the end of a run on a loaded machine, Ray Train's PlacementGroupCleaner (a helper that
  removes the run's placement group if the controller dies) may not stop within its 12 s: the
  controller logs "Failed to stop PlacementGroupCleaner gracefully." with a GetTimeoutError
  traceback, the cleaner "Monitor thread did not exit", or "Failed to connect to GCS" once the
  local Ray is shut down. The run has finished and its placement group is removed by the
  controller itself; these blocks (`KNOWN_NOISE_BLOCKS`, first line to last) are dropped too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

TRAIN_LOG_LEVEL = "WARNING"  # Ray Train's console level (errors and warnings show)

# Substrings of forwarded worker lines that are known to be harmless, each with its reason.
KNOWN_NOISE: dict[str, str] = {
    "Actor with class name: 'PreemptionWatcher'": "Ray Train's watcher; ray-project/ray#53727",
    # logged on a logger named by its file path, outside `ray.train`: LoggingConfig misses it
    "Reporting training result ": "every ray.train.report, with the full metrics dict",
    # at the end of a run (see the module docstring): Ray Train's PlacementGroupCleaner
    "Monitor thread did not exit within": "Ray Train's PlacementGroupCleaner, at run end",
    "rpc_client.h:204: Failed to connect to GCS within": "a leftover actor after shutdown",
}

# Multi-line blocks: first line -> a substring of the block's last line (a traceback's error);
# the lines between are dropped with them. A block cut by the batch ends with the batch.
KNOWN_NOISE_BLOCKS: dict[str, str] = {
    "Failed to stop PlacementGroupCleaner gracefully.": "GetTimeoutError",
}

_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_HANDLER = "ray_print_logs"  # the name Ray gives its driver-side printer (ray._private.worker)


def train_logging_config() -> Any:
    """`ray.train.LoggingConfig` for RunConfig: Ray Train's INFO lines off the console."""
    import ray.train

    return ray.train.LoggingConfig(log_level=TRAIN_LOG_LEVEL)


@contextlib.contextmanager
def quiet_auth_notice() -> Iterator[None]:
    """Around a local `ray.init()`: Ray's notice that it turned token auth on is not printed
    (only that logger, only WARNING and below; its errors still show)."""
    logger = logging.getLogger(_AUTH_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_noise(line: str) -> bool:
    return any(s in line for s in KNOWN_NOISE)


def filter_batch(batch: dict[str, Any]) -> dict[str, Any] | None:
    """A forwarded log batch without its KNOWN_NOISE lines and KNOWN_NOISE_BLOCKS (None when
    nothing is left)."""
    lines, end = [], None
    for line in batch.get("lines", []):
        if end is not None:  # inside a known block: drop up to and including its last line
            if end in line:
                end = None
            continue
        start = next((b for b in KNOWN_NOISE_BLOCKS if b in line), None)
        if start is not None:
            end = KNOWN_NOISE_BLOCKS[start]
        elif not is_noise(line):
            lines.append(line)
    if not lines:
        return None
    return batch if len(lines) == len(batch["lines"]) else {**batch, "lines": lines}


def drop_known_noise() -> bool:
    """Wrap the driver's printer of worker logs (after `ray.init`) so KNOWN_NOISE lines are not
    printed. Uses Ray's internal dispatcher: if Ray changed it, nothing is filtered (and False
    is returned), never anything more."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        with dispatcher._lock:
            handlers = list(dispatcher.handlers)
            for i, (name, handle) in enumerate(handlers):
                if name == _HANDLER:
                    if not getattr(handle, "_p2p_filtered", False):
                        handlers[i] = (name, _filtered(handle))
                        dispatcher.handlers = handlers
                    return True
    except (ImportError, AttributeError):  # another Ray: print as Ray does
        pass
    return False


def _filtered(handle: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def printer(batch: dict[str, Any]) -> None:
        kept = filter_batch(batch)
        if kept is not None:
            handle(kept)

    printer._p2p_filtered = True  # type: ignore[attr-defined]
    return printer
