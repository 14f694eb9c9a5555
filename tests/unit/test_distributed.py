"""Interface selection for gloo/NCCL (p2p.training.distributed): node IP -> interface name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from p2p.training import distributed as D


@pytest.mark.parametrize("lister", [D.interface_addresses, D._ioctl_addresses])
def test_loopback_ip_maps_to_lo(lister):
    """Both address sources (psutil, ioctl SIOCGIFADDR) find 127.0.0.1 on lo."""
    addresses = lister()
    assert "127.0.0.1" in addresses["lo"]
    assert D.interface_for_ip("127.0.0.1", addresses) == "lo"


def test_unknown_or_bad_ip_maps_to_none():
    assert D.interface_for_ip("198.51.100.77") is None  # TEST-NET-2: on no interface here
    assert D.interface_for_ip("not-an-ip") is None


def test_select_sets_gloo_only_for_gloo(monkeypatch):
    monkeypatch.delenv(D.GLOO_IFNAME, raising=False)
    monkeypatch.delenv(D.NCCL_IFNAME, raising=False)
    info = D.select_socket_ifname("gloo", node_ip="127.0.0.1")
    assert info == {"node_ip": "127.0.0.1", "interface": "lo", "env": {D.GLOO_IFNAME: "lo"}}
    assert os.environ[D.GLOO_IFNAME] == "lo"
    assert D.NCCL_IFNAME not in os.environ


def test_select_sets_both_for_nccl_and_keeps_user_values(monkeypatch):
    monkeypatch.setenv(D.GLOO_IFNAME, "eth7")  # the user's choice wins
    monkeypatch.delenv(D.NCCL_IFNAME, raising=False)
    info = D.select_socket_ifname("nccl", node_ip="127.0.0.1")
    assert info["env"] == {D.GLOO_IFNAME: "eth7", D.NCCL_IFNAME: "lo"}
    assert os.environ[D.GLOO_IFNAME] == "eth7"
    assert os.environ[D.NCCL_IFNAME] == "lo"


def test_select_leaves_env_alone_when_no_interface_holds_the_ip(monkeypatch):
    monkeypatch.delenv(D.GLOO_IFNAME, raising=False)
    info = D.select_socket_ifname("gloo", node_ip="198.51.100.77")
    assert info["interface"] is None and info["env"] == {}
    assert D.GLOO_IFNAME not in os.environ


def test_trainer_config_runs_the_selection_before_the_process_group():
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend

    cfg = D.P2PTorchConfig(backend="gloo")
    assert isinstance(cfg, TorchConfig) and cfg.backend == "gloo"
    assert issubclass(cfg.backend_cls, _TorchBackend)
    assert cfg.backend_cls.on_start is not _TorchBackend.on_start


def test_describe_placement():
    line = D.describe_placement(
        [
            {"rank": 0, "node_rank": 0, "node_ip": "10.0.0.1", "gloo_socket_ifname": "eth0"},
            {"rank": 1, "node_rank": 1, "node_ip": "10.0.0.2", "gloo_socket_ifname": ""},
        ]
    )
    assert line == (
        "rank 0 @ 10.0.0.1 (node 0, eth0), rank 1 @ 10.0.0.2 (node 1, default interface)"
    )


def _can_make_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


@pytest.mark.skipif(_can_make_netns() is not None, reason=str(_can_make_netns()))
def test_mapping_inside_a_network_namespace(tmp_path):
    """In a fresh namespace holding one end of a veth pair at 10.77.9.2, both address sources
    map that IP to it (and loopback to lo): the lookup reads the caller's namespace."""
    tag = uuid.uuid4().hex[:6]
    ns, dev, peer = f"p2pu{tag}", f"p2pu{tag}a", f"p2pu{tag}b"
    ip = ["ip", "-n", ns]
    try:
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"kernel refuses network namespaces: {r.stderr.strip()}")
        for argv in (
            ["ip", "link", "add", dev, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", dev, "netns", ns],
            [*ip, "link", "set", "lo", "up"],
            [*ip, "addr", "add", "10.77.9.2/24", "dev", dev],
            [*ip, "link", "set", dev, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
        code = (
            "from p2p.training import distributed as D\n"
            "for f in (D.interface_addresses, D._ioctl_addresses):\n"
            "    a = f()\n"
            "    print(D.interface_for_ip('10.77.9.2', a), D.interface_for_ip('127.0.0.1', a))\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert out == [dev, "lo", dev, "lo"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # deletes `dev` too
        subprocess.run(["ip", "link", "del", peer], capture_output=True)  # gone with it, normally
