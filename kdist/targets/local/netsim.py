"""Simulated nodes on their own network for `kdist run` (spec `network:`): namespaces + netem.

One run with tag T (6 random hex digits, so concurrent runs never share a name):

    host            veth `kdT` 10.213.S.1/24: the rendezvous store listens here
    netns kdist-T-sw  bridge `br0` with the ports `h` (peer of `kdT`), `n0`, `n1`, ...
    netns kdist-T-N   `lo`, and `eth0` 10.213.S.(N+2)/24 (peer of `nN`) with netem on its egress

Each node's torchrun runs under `ip netns exec kdist-T-N` with PET_LOCAL_ADDR set to its
address and GLOO/NCCL_SOCKET_IFNAME to eth0. The bridge lives in a namespace of its own, not on
the host: with br_netfilter loaded (Docker loads it) frames bridged on the host pass the host's
iptables FORWARD chain, whose policy Docker sets to DROP. Closing removes the host veth first
(that removes its peer too), then every namespace (with them their links and the bridge).

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2, and for latency/jitter/loss a kernel
with the netem qdisc (sch_netem). Every failure is a KdistError raised before any node starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kdist.errors import KdistError
from kdist.netem import impaired, tc_argv
from kdist.spec.model import Network

LOOPBACK = "127.0.0.1"
NODE_IF = "eth0"  # each node's interface, inside its own namespace
SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")  # one free /24 of it per run
MAX_NODES = 250
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
NO_NETEM = ("this kernel has no netem qdisc (sch_netem): load it with `modprobe sch_netem` "
            "(Ubuntu: package linux-modules-extra-$(uname -r)), or remove latency, jitter and "
            "loss from `network`")


@dataclass(frozen=True)
class NodeNet:
    """Where one node runs: its address, the argv prefix that enters its namespace, its env."""

    address: str
    prefix: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


class Placement(Protocol):
    """The host's loopback (no `network:`) or a SimNetwork."""

    @property
    def store_host(self) -> str: ...

    def node(self, index: int) -> NodeNet: ...


class HostNetwork:
    """No simulation: every node and the store on 127.0.0.1."""

    store_host = LOOPBACK

    def node(self, index: int) -> NodeNet:
        return NodeNet(LOOPBACK, env=(("PET_LOCAL_ADDR", LOOPBACK),))


# ---- checks ------------------------------------------------------------------------------


def effective_caps(status: str | None = None) -> int:
    """This process's effective capability mask (from /proc/self/status)."""
    if status is None:
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            return 0
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status, re.M)
    return int(match.group(1), 16) if match else 0


def check_available(network: Network | None) -> None:
    """KdistError unless this process can build a SimNetwork (privileges and tools)."""
    if network is None:
        return
    caps = effective_caps()
    if not (caps >> CAP_NET_ADMIN & 1 and caps >> CAP_SYS_ADMIN & 1):
        raise KdistError("network: kdist run simulates network conditions with one network "
                         "namespace per node, which needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): "
                         "run it with sudo, use `kdist up` (Docker applies them), or remove "
                         "`network` from the spec")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise KdistError(f"network: `{'` and `'.join(missing)}` not found: kdist run simulates "
                         "network conditions with iproute2 (apt-get install iproute2)")


# ---- running ip/tc -----------------------------------------------------------------------


def sh(argv: Sequence[str]) -> None:
    """Run one ip/tc command; its failure is a KdistError with tc's/ip's own words."""
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=30, check=False)
    if done.returncode != 0:
        words = (done.stderr or done.stdout).strip().splitlines()
        said = words[-1] if words else f"exit code {done.returncode}"
        if "qdisc kind is unknown" in said:
            raise KdistError(f"network: {NO_NETEM}")
        raise KdistError(f"network: `{' '.join(argv)}` failed: {said}")


def quiet(argv: Sequence[str]) -> bool:
    """Run a cleanup command; False when it failed (e.g. the link is gone already)."""
    done = subprocess.run(list(argv), capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
                          check=False)
    return done.returncode == 0


def used_subnets() -> set[ipaddress.IPv4Network]:
    """The /24s of SUBNETS that some interface or route on this host uses already."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=False).stdout
    out += subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                          check=False).stdout
    used: set[ipaddress.IPv4Network] = set()
    for word in re.findall(r"\b10\.213\.\d+\.\d+(?:/\d+)?", out):
        net = ipaddress.IPv4Network(word, strict=False)
        used |= set(net.subnets(new_prefix=24)) if net.prefixlen < 24 else {net.supernet(new_prefix=24)}
    return used


def pick_subnet(tag: str, used: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A free /24 of SUBNETS, starting from one derived from the tag (concurrent runs differ)."""
    candidates = list(SUBNETS.subnets(new_prefix=24))
    start = int(tag, 16) % len(candidates)
    for net in candidates[start:] + candidates[:start]:
        if net not in used:
            return net
    raise KdistError(f"network: every /24 of {SUBNETS} is in use on this host")


# ---- the simulated network ---------------------------------------------------------------


@dataclass
class SimNetwork:
    """The namespaces, links and bridge of one run; `close()` removes every one of them."""

    network: Network
    tag: str
    subnet: ipaddress.IPv4Network
    namespaces: list[str] = field(default_factory=list)  # created, in order
    links: list[str] = field(default_factory=list)  # host links, created
    nodes: dict[int, NodeNet] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"kdist-{self.tag}-sw"

    @property
    def host_link(self) -> str:
        return f"kd{self.tag}"

    @property
    def store_host(self) -> str:
        return str(self.subnet.network_address + 1)

    def namespace(self, index: int) -> str:
        return f"kdist-{self.tag}-{index}"

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + 2 + index)

    def add_namespace(self, name: str) -> None:
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "-n", name, "link", "set", "dev", "lo", "up"])

    def open(self) -> None:
        """The switch namespace with its bridge, and the host's link into it (the store's)."""
        self.add_namespace(self.switch)
        sw = ["ip", "-n", self.switch]
        sh([*sw, "link", "add", "br0", "type", "bridge"])
        sh([*sw, "link", "set", "dev", "br0", "up"])
        sh(["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", "h",
            "netns", self.switch])
        self.links.append(self.host_link)
        sh([*sw, "link", "set", "dev", "h", "master", "br0", "up"])
        sh(["ip", "addr", "add", f"{self.store_host}/{self.subnet.prefixlen}",
            "dev", self.host_link])
        sh(["ip", "link", "set", "dev", self.host_link, "up"])
        if impaired(self.network):  # fail here, before anything starts, when netem is missing
            sh(["ip", "netns", "exec", self.switch, *tc_argv("lo", self.network)])

    def node(self, index: int) -> NodeNet:
        """Node `index`'s namespace (created on first use) with netem on its eth0."""
        if index in self.nodes:
            return self.nodes[index]
        if index >= MAX_NODES:
            raise KdistError(f"network: at most {MAX_NODES} simulated nodes per run")
        ns, port = self.namespace(index), f"n{index}"
        self.add_namespace(ns)
        sh(["ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name",
            NODE_IF, "netns", ns])
        sh(["ip", "-n", self.switch, "link", "set", "dev", port, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{self.address(index)}/{self.subnet.prefixlen}",
            "dev", NODE_IF])
        sh(["ip", "-n", ns, "link", "set", "dev", NODE_IF, "up"])
        if impaired(self.network):
            sh(["ip", "netns", "exec", ns, *tc_argv(NODE_IF, self.network)])
        env = (("PET_LOCAL_ADDR", self.address(index)), ("GLOO_SOCKET_IFNAME", NODE_IF),
               ("NCCL_SOCKET_IFNAME", NODE_IF))
        self.nodes[index] = NodeNet(self.address(index), ("ip", "netns", "exec", ns), env)
        return self.nodes[index]

    def close(self) -> None:
        """Remove everything `open`/`node` created (idempotent; what is gone already is fine)."""
        for link in reversed(self.links):
            quiet(["ip", "link", "del", link])
        for ns in reversed(self.namespaces):
            quiet(["ip", "netns", "del", ns])
        self.links.clear()
        self.namespaces.clear()
        self.nodes.clear()


def new_network(network: Network, tag: str = "") -> SimNetwork:
    """Build the switch and the host link now; nodes join with `.node(i)`."""
    check_available(network)
    tag = tag or secrets.token_hex(3)
    sim = SimNetwork(network, tag, pick_subnet(tag, used_subnets()))
    try:
        sim.open()
    except BaseException:
        sim.close()
        raise
    return sim


@contextlib.contextmanager
def placement(network: Network | None) -> Iterator[Placement]:
    """The host's loopback without `network:`, else a SimNetwork that is removed on exit."""
    if network is None:
        yield HostNetwork()
        return
    sim = new_network(network)
    try:
        yield sim
    finally:
        sim.close()
