"""Which worker failures Ray Train retries: infrastructure faults yes, bad data no.

Ray Train's FailureConfig(max_failures) retries every worker error alike. A DataError (a corrupt
shard, a sample without its target) fails again on every attempt, so retrying it only costs
minutes and buries the cause under Ray's tracebacks. `StopOnDataError`, a controller-side
callback, looks at each worker error as it is reported: for a DataError it raises on the
controller, which Ray treats as a controller error that is never retried, so the run stops at
once. The driver then finds the DataError in the TrainingFailedError (`data_error_message`) and
reports it as the one-line cause. Worker/node deaths, lost connections and other errors are
still retried up to `resources.max_failures` times.
"""

from __future__ import annotations

from typing import Any

import ray.train

from p2p.errors import DataError

_DATA_ERROR_PREFIX = f"{DataError.__module__}.{DataError.__qualname__}: "


class StopOnDataError(ray.train.UserCallback):
    """Stop the run, without retries, when a worker raised a DataError."""

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for _, exc in sorted(worker_exceptions.items()):
            message = data_error_message(exc)
            if message is not None:
                raise DataError(message)


def data_error_message(exc: BaseException | None) -> str | None:
    """The one-line message of the DataError inside a Ray Train error, else None.

    Looks through Ray's wrappers (a worker error carries the user exception as `_base_exc`, a
    controller error as `controller_failure`) and torch's DataLoader re-raise, whose message is
    "Caught DataError in DataLoader worker process N. Original Traceback ...": the original
    message is its last line.
    """
    for _ in range(5):  # wrappers nest a few levels at most
        if exc is None or isinstance(exc, DataError):
            break
        exc = getattr(exc, "_base_exc", None) or getattr(exc, "controller_failure", None)
    if not isinstance(exc, DataError):
        return None
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and len(lines) > 1:
        last = lines[-1]
        return last[len(_DATA_ERROR_PREFIX) :] if last.startswith(_DATA_ERROR_PREFIX) else last
    return lines[0]
