"""Multi-host process groups: which network interface gloo and NCCL use on each worker.

gloo (and NCCL's bootstrap) pick the address a rank advertises to the others from the host name
unless GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME name an interface. On many machines the host name
resolves to 127.0.0.1 (`/etc/hosts`, containers, cloud images), so every rank advertises loopback
and the full mesh of a multi-host run cannot connect (gloo's `connectFullMesh` fails or hangs).

`P2PTorchConfig` is Ray Train's `TorchConfig` with one step added before the process group is
created: every worker looks up the interface that carries its Ray node IP
(`ray.util.get_node_ip_address()`, the address the other nodes reach it on) and exports it as
GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME for NCCL) in its own process. A value the user set on
the node (the raylet's environment or the runtime_env) is left as it is. If no local interface
holds the node IP (NAT), nothing is set and the library defaults apply.

`worker_placement()` is what each rank records about where it ran (node IP, interface, node
rank); the training loop stores it with every checkpoint (`workers.json`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.util
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend  # the backend TorchConfig runs

log = logging.getLogger(__name__)

GLOO_IFNAME = "GLOO_SOCKET_IFNAME"
NCCL_IFNAME = "NCCL_SOCKET_IFNAME"
PLACEMENT_FILE = "workers.json"  # in every checkpoint directory
_SIOCGIFADDR = 0x8915  # <linux/sockios.h>: an interface's (primary) IPv4 address


def interface_addresses() -> dict[str, list[str]]:
    """{interface name: [its IP addresses]} of this process's network namespace.

    psutil (installed with Ray) lists every address, IPv6 and secondary ones included; without
    it, the ioctl SIOCGIFADDR gives each interface's primary IPv4 address.
    """
    try:
        import psutil
    except ImportError:
        return _ioctl_addresses()
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        ips = [a.address.split("%", 1)[0] for a in addrs if a.family in _INET_FAMILIES]
        if ips:
            out[name] = ips
    return out


_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _ioctl_addresses() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])  # struct ifreq: name, then sockaddr
            try:
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            out[name] = [socket.inet_ntoa(reply[20:24])]  # sockaddr_in.sin_addr
    return out


def interface_for_ip(ip: str, addresses: dict[str, list[str]] | None = None) -> str | None:
    """The name of the local interface that holds `ip`, or None if none does."""
    try:
        want = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for name, ips in (interface_addresses() if addresses is None else addresses).items():
        for addr in ips:
            try:
                if ipaddress.ip_address(addr) == want:
                    return name
            except ValueError:
                continue
    return None


def select_socket_ifname(backend: str, node_ip: str | None = None) -> dict[str, Any]:
    """Export GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME for NCCL) in this process: the
    interface that carries `node_ip` (default: this worker's Ray node IP). Variables already
    set are kept. Returns what was decided (for the driver's log)."""
    if node_ip is None:
        node_ip = ray.util.get_node_ip_address()
    name = interface_for_ip(node_ip)
    names = [GLOO_IFNAME] + ([NCCL_IFNAME] if "nccl" in backend else [])
    chosen: dict[str, str] = {}
    for var in names:
        if os.environ.get(var):  # set by the user: theirs to decide
            chosen[var] = os.environ[var]
        elif name is not None:
            os.environ[var] = name
            chosen[var] = name
    return {"node_ip": node_ip, "interface": name, "env": chosen}


def worker_placement() -> dict[str, Any]:
    """Where this Ray Train worker runs: rank, node rank, node IP, socket interface."""
    ctx = ray.train.get_context()
    return {
        "rank": ctx.get_world_rank(),
        "local_rank": ctx.get_local_rank(),
        "node_rank": ctx.get_node_rank(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "gloo_socket_ifname": os.environ.get(GLOO_IFNAME, ""),
    }


def gather_placement() -> list[dict[str, Any]]:
    """Every rank's `worker_placement()`, in rank order (a collective: all ranks call it)."""
    import torch.distributed as dist

    mine = worker_placement()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def describe_placement(placements: list[dict[str, Any]]) -> str:
    """One line: `rank 0 @ 10.0.0.1 (node 0, eth0), rank 1 @ ...`."""
    return ", ".join(
        f"rank {p['rank']} @ {p['node_ip']} (node {p['node_rank']}, "
        f"{p['gloo_socket_ifname'] or 'default interface'})"
        for p in placements
    )


def write_placement(directory: str | Path, placements: list[dict[str, Any]]) -> None:
    """`workers.json` (one entry per rank) into a checkpoint directory being assembled."""
    Path(directory, PLACEMENT_FILE).write_text(json.dumps(placements, indent=2) + "\n")


# ----------------------------------------------------------------------------- Ray Train hook


class _InterfaceSelectingBackend(_TorchBackend):
    """Ray's torch backend (ray.train.torch.config), plus the interface selection on every
    worker before it creates the process group."""

    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        backend = backend_config.backend or "gloo"  # TorchTrainer fills it in
        for rank, info in enumerate(worker_group.execute(select_socket_ifname, backend)):
            if info["interface"] is None:
                log.warning(
                    "rank %d: no local interface holds node IP %s; gloo/NCCL pick their own",
                    rank,
                    info["node_ip"],
                )
            else:
                log.info("rank %d: node %s, %s", rank, info["node_ip"], info["env"])
        super().on_start(worker_group, backend_config)


@dataclass
class P2PTorchConfig(TorchConfig):
    """TorchConfig whose workers pick their socket interface before the process group."""

    @property
    def backend_cls(self) -> type:
        return _InterfaceSelectingBackend
