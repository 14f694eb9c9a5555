"""Ray for the data stages and batch prediction: join a cluster or start a local Ray, and run a
function over items as Ray tasks with results in input order.

`ray_session(address)`:
- "" / None: start a local Ray on this machine (stopped on exit);
- `auto` or `host:6379`: join the running cluster as its driver (run on a cluster node);
- `ray://host:10001`: the same through Ray Client, from outside the cluster.
If this process already has Ray initialised (tests, a caller's own `ray.init`), that session is
used and left running. Endpoints and credentials (`p2p.settings`) reach every worker through the
runtime env, never through logs. (`p2p train` connects in p2p.training.trainer, which also
submits Ray Jobs; the data stages and predict need a driver connection only.)
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from p2p.errors import P2PError
from p2p.settings import Settings


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray connected for the duration of the block (see the module docstring)."""
    import ray

    if address and address.startswith(("http://", "https://")):
        raise P2PError(
            f"--address {address}: this command needs a driver connection "
            "(auto, host:6379 or ray://host:10001), not the Ray Jobs API"
        )
    if ray.is_initialized():
        yield
        return
    env = {"env_vars": Settings.from_env().worker_env()}
    try:
        if address:
            ray.init(address=address, runtime_env=env)
        else:
            # "local": always a new Ray, even where a cluster runs on this machine (ray.init()
            # alone would join that one).
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=env)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as e:
        text = str(e).strip().splitlines()
        hint = ""
        if "auth" in str(e).lower():
            hint = " (the cluster uses token auth: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
        where = address or "a local Ray"
        raise P2PError(f"cannot start or reach {where}: {text[0] if text else e}{hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


def node() -> dict[str, str]:
    """{"node_id", "ip"} of the Ray node this code runs on (in a task or actor)."""
    import ray

    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address()}


def _apply(fn: Callable[[Any], Any], chunk: list[Any]) -> tuple[list[Any], str]:
    """The body of one Ray task: the results of a chunk of items and the node it ran on."""
    import ray

    return [fn(item) for item in chunk], ray.get_runtime_context().get_node_id()


class RayExecutor:
    """`map(fn, items)` as Ray tasks across the cluster, results in input order.

    Each task handles `chunk` consecutive items (a Ray task costs milliseconds; one per image
    pair would cost more than the pair's work). At most `max_in_flight` tasks are pending at a
    time (items are pulled lazily, results are yielded as soon as the oldest task is done), so
    memory stays bounded for any number of items. `fn` is put in the object store once per
    `map` call, not pickled into every task. `nodes` counts the tasks that ran on each node id.

    Placement: tasks are dealt to the alive nodes that fit one, in proportion to their CPUs
    (smooth weighted round-robin), each with a soft node affinity (a node that dies or cannot
    run it hands the task to another). Ray's own SPREAD was not enough: the driver reuses a
    worker it already leased for the next queued task, so short tasks all ran on the first
    node while a worker was still starting on the second (seen on a 2-host cluster).

    `remote = True` tells callers that `fn` runs in other processes, possibly on machines that
    do not see this machine's files: they ship file bytes with the items.
    """

    remote = True

    def __init__(
        self, max_in_flight: int | None = None, num_cpus: float = 1.0, chunk: int = 8
    ) -> None:
        import ray

        if max_in_flight is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            max_in_flight = max(2, 2 * cpus)
        self.max_in_flight = max_in_flight
        self.num_cpus = num_cpus
        self.chunk = max(1, chunk)
        self.nodes: collections.Counter[str] = collections.Counter()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(_apply)
        nodes = _weighted_cycle(
            {
                n["NodeID"]: n["Resources"]["CPU"]
                for n in ray.nodes()
                if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= self.num_cpus
            }
        )

        def submit(chunk: list[Any]) -> Any:
            node_id = next(nodes, None)
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=True) if node_id else "SPREAD"
            opts = task.options(num_cpus=self.num_cpus, scheduling_strategy=strategy)
            return opts.remote(fn_ref, chunk)

        fn_ref = ray.put(fn)
        window: collections.deque = collections.deque()

        def take() -> list[Any]:
            results, node_id = ray.get(window.popleft())
            self.nodes[node_id] += 1
            return results

        try:
            for chunk in _chunks(items, self.chunk):
                window.append(submit(chunk))
                if len(window) >= self.max_in_flight:
                    yield from take()
            while window:
                yield from take()
        finally:
            for ref in window:  # the consumer stopped early (an error): drop what is left
                ray.cancel(ref)


def _weighted_cycle(weights: dict[str, float]) -> Iterator[str]:
    """Keys forever, each as often as its weight, evenly interleaved (smooth weighted
    round-robin: {a: 2, b: 1} gives a b a a b a ...); nothing if there are none."""
    if not weights:
        return
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0.0)
    while True:
        for k, w in weights.items():
            current[k] += w
        best = max(sorted(current), key=current.__getitem__)  # sorted: ties broken by id
        current[best] -= total
        yield best


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
