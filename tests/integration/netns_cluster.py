"""A multi-host Ray cluster on one Linux machine: one network namespace per "host".

Layout (all addresses are created here, in 10.77.0.0/24; nothing else is contacted):

    root namespace: bridge p2pmh-br 10.77.0.254   <- the moto S3 server and MLflow listen here
        |-- veth p2pmh-v0 <-> p2pmh-n0 10.77.0.1 in namespace p2pmh-0   (Ray head + the driver)
        |-- veth p2pmh-v1 <-> p2pmh-n1 10.77.0.2 in namespace p2pmh-1   (Ray worker node)
        ...

Each namespace has its own interfaces and loopback, and the machine's host name still resolves
to 127.0.0.1 (/etc/hosts), as on many real clusters: a process group that trusts the host name
advertises loopback and cannot connect across "hosts". Ray nodes run with `--node-ip-address`
their namespace address and token authentication (as `team_server.py` sets it up).

Cleanup: every namespace, veth and the bridge carry the `p2pmh` prefix, and every process this
module starts is written to a state file with its command line. `cleanup_leftovers()` (run before
setting up, and by `teardown()`) kills what a crashed run left (processes inside the namespaces,
and recorded process groups whose command line still matches), then deletes the namespaces and
links.

Needs root (namespaces, veth, bridge) and iproute2; `unsupported_reason()` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from team_server import BIN, RAY_REGISTRATION_TIMEOUT, WORKER_START_TRIES, ProcessGroups

PREFIX = "p2pmh"
SUBNET = "10.77.0"
PREFIX_LEN = 24
BRIDGE = f"{PREFIX}-br"
BRIDGE_IP = f"{SUBNET}.254"  # the root namespace on the bridge: S3 and MLflow
RAY_PORT = 6379  # each namespace has its own ports: Ray's defaults cannot clash with another Ray
DASHBOARD_PORT = 8265
RAY_TMP = Path("/tmp") / f"{PREFIX}-ray"  # short: Ray's unix socket paths must stay < 108 chars
STATE_FILE = Path("/tmp") / f"{PREFIX}-processes.json"
START_TIMEOUT_S = 240.0
REPO = Path(__file__).resolve().parents[2]


def unsupported_reason() -> str | None:
    """Why this machine cannot build the cluster, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces, veth pairs and a bridge"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"{PREFIX}-probe"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"the kernel refuses network namespaces: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces(prefix: str = PREFIX) -> list[str]:
    """This module's namespaces that exist now."""
    out = _ip("netns", "list", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"{prefix}-")]


def links(prefix: str = PREFIX) -> list[str]:
    """This module's interfaces in the root namespace."""
    out = _ip("-o", "link", "show", check=False).stdout
    names = (ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln)
    return [n for n in names if n.startswith(f"{prefix}-")]


def namespace_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_namespace(ns: str, timeout_s: float = 20.0) -> None:
    """SIGKILL every process in namespace `ns` until none is left (a host losing power)."""
    deadline = time.monotonic() + timeout_s
    while pids := [p for p in namespace_pids(ns) if not _zombie(p)]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survive in namespace {ns}: {pids}")
        time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def cleanup_leftovers(prefix: str = PREFIX, state_file: Path = STATE_FILE) -> list[str]:
    """Remove what a previous (crashed) run left; returns what was removed."""
    removed = []
    if state_file.exists():  # process groups started in the root namespace (MLflow)
        try:
            recorded = json.loads(state_file.read_text())
        except ValueError:
            recorded = []
        for entry in recorded:
            pid = int(entry["pid"])
            if _cmdline(pid) == entry["argv"]:  # still the process we started, not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                removed.append(f"process {pid} ({entry['argv'][0]})")
        state_file.unlink(missing_ok=True)
    for ns in namespaces(prefix):
        kill_namespace(ns)
        _ip("netns", "del", ns, check=False)
        removed.append(f"namespace {ns}")
    deadline = time.monotonic() + 10
    while (left := links(prefix)) and time.monotonic() < deadline:
        for link in left:  # veth ends vanish with their namespace, asynchronously
            _ip("link", "del", link, check=False)
            removed.append(f"link {link}")
        time.sleep(0.2)
    if links(prefix):
        raise RuntimeError(f"cannot delete interfaces {links(prefix)}")
    if prefix == PREFIX:
        shutil.rmtree(RAY_TMP, ignore_errors=True)
    return sorted(set(removed))


@dataclass
class Host:
    index: int
    ns: str
    ip: str
    ifname: str  # the interface inside the namespace that holds `ip`


@dataclass
class NetnsCluster:
    """The namespaces, the Ray nodes in them and the services on the bridge."""

    workdir: Path
    num_hosts: int = 2
    cpus_per_host: int = 1
    hosts: list[Host] = field(default_factory=list)
    procs: ProcessGroups = field(default_factory=ProcessGroups)
    logs: dict[str, Path] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what clients on the cluster export
    ray_token: str = ""
    bucket: str = ""  # the S3 bucket the test created
    base_env: dict[str, str] = field(default_factory=dict)  # the environment nodes start from
    _ray_starts: dict[int, int] = field(default_factory=dict)
    _ray_nodes: dict[str, tuple[Host, dict[str, str]]] = field(default_factory=dict)  # by name

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def ray_address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    @property
    def jobs_url(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    # ------------------------------------------------------------------ network

    def create_network(self) -> None:
        """Bridge with BRIDGE_IP; one namespace per host, joined to it by a veth pair."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_IP}/{PREFIX_LEN}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i in range(self.num_hosts):
            host = Host(i, f"{PREFIX}-{i}", f"{SUBNET}.{i + 1}", f"{PREFIX}-n{i}")
            outside = f"{PREFIX}-v{i}"
            _ip("netns", "add", host.ns)
            self.hosts.append(host)  # teardown deletes it from here on
            _ip("link", "add", outside, "type", "veth", "peer", "name", host.ifname)
            _ip("link", "set", outside, "master", BRIDGE, "up")
            _ip("link", "set", host.ifname, "netns", host.ns)
            _ip("-n", host.ns, "addr", "add", f"{host.ip}/{PREFIX_LEN}", "dev", host.ifname)
            _ip("-n", host.ns, "link", "set", host.ifname, "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")

    def in_host(self, host: Host, argv: list[str]) -> list[str]:
        """`argv` run inside `host`'s network namespace."""
        return ["ip", "netns", "exec", host.ns, *argv]

    # ------------------------------------------------------------------ processes

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Path:
        log = self.workdir / "logs" / f"{name}.log"
        self.logs[name] = log
        self.procs.start(name, argv, env, log)
        self._record()
        return log

    def _record(self) -> None:
        entries = [{"pid": p.pid, "argv": p.args} for p in self.procs.procs.values()]
        STATE_FILE.write_text(json.dumps(entries))

    def node_env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment of Ray nodes (and so of every worker and the driver)."""
        env = {
            **{k: v for k, v in base.items() if not k.endswith("_SOCKET_IFNAME")},
            **self.env,
            "HOME": str(self.workdir / "home"),  # ~/.ray stays out of the real home
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONPATH": str(REPO),  # this checkout's p2p on every "host"
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        env.pop("RAY_ADDRESS", None)
        return env

    def start_ray(self, host: Host, base_env: dict[str, str]) -> None:
        """`ray start` in `host` (head for host 0): a fresh temp dir per start, as a rebooted
        machine would have."""
        if not self.ray_token:
            self.ray_token = secrets.token_hex(32)
            self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token})
        n = self._ray_starts[host.index] = self._ray_starts.get(host.index, 0) + 1
        argv = [str(BIN / "ray"), "start", "--block", "--node-ip-address", host.ip]
        argv += ["--num-cpus", str(self.cpus_per_host), "--disable-usage-stats"]
        argv += ["--temp-dir", str(RAY_TMP / f"h{host.index}-{n}")]
        if host.index == 0:
            argv += ["--head", "--port", str(RAY_PORT), "--include-dashboard", "true"]
            argv += ["--dashboard-host", host.ip, "--dashboard-port", str(DASHBOARD_PORT)]
        else:
            argv += ["--address", self.ray_address]
        self._ray_nodes[f"ray-{host.index}-{n}"] = (host, base_env)
        self.start(f"ray-{host.index}-{n}", self.in_host(host, argv), self.node_env(base_env))

    def kill_host(self, host: Host) -> None:
        """The host dies: every process in its namespace (raylet, workers) gets SIGKILL."""
        kill_namespace(host.ns)

    def alive_nodes(self) -> int | None:
        """Alive Ray nodes as the GCS sees them (None while it does not answer)."""
        from p2p.doctor import probe_gcs

        out = probe_gcs(self.ray_address, 5.0, env={**os.environ, **self.env})
        return out.get("nodes")

    def wait_nodes(self, n: int, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alive_nodes() != n:
            self._restart_timed_out_nodes()
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray never had {n} alive nodes:\n{self.log_tail()}")
            time.sleep(1.0)

    def _restart_timed_out_nodes(self) -> None:
        """`ray start` again on a host whose node gave up registering after Ray's fixed 30 s
        (a busy 2-core machine; see team_server.RAY_REGISTRATION_TIMEOUT)."""
        for name in self.procs.exited():
            host_env = self._ray_nodes.get(name)
            log = self.logs[name].read_text(errors="replace")
            if host_env and RAY_REGISTRATION_TIMEOUT in log:
                host, base_env = host_env
                if self._ray_starts[host.index] < WORKER_START_TRIES:
                    self.procs.kill(name)
                    del self._ray_nodes[name]
                    self.start_ray(host, base_env)

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name, path in self.logs.items():
            lines = path.read_text(errors="replace").splitlines()[-n:] if path.exists() else []
            out.append(f"--- {name} ({path})\n" + "\n".join(lines))
        return "\n".join(out)

    def teardown(self) -> None:
        """Stop everything this cluster started and delete the network; safe to call twice."""
        for host in self.hosts:
            with contextlib.suppress(RuntimeError):
                kill_namespace(host.ns)
        self.procs.stop(grace_s=5.0)
        cleanup_leftovers()


def wait_http(url: str, timeout_s: float, alive: ProcessGroups, logs: dict[str, Path]) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        alive.check_alive(logs)
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer")
        time.sleep(1.0)


def started_lines(text: str) -> list[int]:
    """The steps at which the training loop said it started ("... starting at step N")."""
    return [int(m) for m in re.findall(r"starting at step (\d+)", text)]
