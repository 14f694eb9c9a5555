"""What of Ray's output reaches the `p2p train` console (p2p.training.ray_console). The real
console of a run is checked in tests/integration/test_ray_train.py."""

from __future__ import annotations

import logging

from p2p.training import ray_console

PREEMPTION = (
    "[2026-12-02 00:45:44,889 E 27602 27699] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: 'dc77' has constructor arguments in the object store and "
    "max_restarts > 0."
)
REPORT = "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 5})"
PROGRESS = "p2p train: epoch 1/2 done, step 5, val_l1 0.5665"
ERROR = "Traceback (most recent call last):"


def test_known_noise_is_dropped_and_nothing_else():
    batch = {"pid": 7, "is_err": True, "lines": [PREEMPTION, ERROR, REPORT, PROGRESS]}
    kept = ray_console.filter_batch(batch)
    assert kept["lines"] == [ERROR, PROGRESS] and kept["pid"] == 7
    assert ray_console.filter_batch({"lines": [REPORT]}) is None
    clean = {"lines": [PROGRESS]}
    assert ray_console.filter_batch(clean) is clean


def test_placement_group_cleaner_shutdown_blocks_are_dropped():
    """Seen at the end of `make demo` on a loaded 2-core machine (the run had finished)."""
    block = [
        "Failed to stop PlacementGroupCleaner gracefully.",
        "Traceback (most recent call last):",
        '  File "/x/placement_group_callback.py", line 126, in _stop_cleaner',
        "    ray.get(self._cleaner.stop.remote(), timeout=self._stop_timeout)",
        "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
    ]
    kept = ray_console.filter_batch({"lines": [PROGRESS, *block, ERROR, "ValueError: real"]})
    assert kept["lines"] == [PROGRESS, ERROR, "ValueError: real"]  # other tracebacks stay
    assert ray_console.filter_batch({"lines": block[:3]}) is None  # a block cut by the batch
    for line in (
        "Monitor thread did not exit within 12.00 seconds",
        "[2026-12-02 02:52:42,920 E 20296 20308] rpc_client.h:204: Failed to connect to GCS "
        "within 60 seconds. GCS may have been killed.",
    ):
        assert ray_console.filter_batch({"lines": [line]}) is None


def test_driver_printer_is_wrapped_once():
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printed = []
    dispatcher.add_handler("ray_print_logs", lambda data: printed.append(data["lines"]))
    try:
        assert ray_console.drop_known_noise() and ray_console.drop_known_noise()
        dispatcher.emit({"lines": [PREEMPTION]})
        dispatcher.emit({"lines": [REPORT, PROGRESS]})
        assert printed == [[PROGRESS]]  # filtered once, not twice
    finally:
        dispatcher.remove_handler("ray_print_logs")


def test_auth_notice_quiet_only_inside_the_block(caplog):
    logger = logging.getLogger(ray_console._AUTH_LOGGER)
    with caplog.at_level(logging.INFO, logger=ray_console._AUTH_LOGGER):
        with ray_console.quiet_auth_notice():
            logger.warning("Token authentication is enabled for this Ray cluster.")
            logger.error("a real auth error")
        logger.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["a real auth error", "after"]
