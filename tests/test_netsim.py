"""Simulated network conditions for `kdist run` (kdist/targets/local/netsim.py): real namespaces,
veths, netem.

Everything here is real: `ip netns`, a bridge, veth pairs, tc netem, TCP connections timed between
namespaces, and whole `kdist run` jobs. Needs root and iproute2; the latency tests also need a
kernel with the netem qdisc (sch_netem) and skip, saying so, where it is missing.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_local_run import KDIST, ROOT, explain, kdist_run, start_until_stepping
from test_tutorial_e2e import TUTORIAL, job_pids, read_until
from tutorial_logs import SAVED

from kdist.errors import KdistError
from kdist.netem import netem_args
from kdist.spec.model import Network
from kdist.targets.local import netsim
from kdist.targets.local.listening import listeners

SERVER = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""
# Median TCP connect time in ms: connect() returns after SYN -> SYN-ACK, one round trip.
CLIENT = """\
import socket, statistics, sys, time
host, port, times = sys.argv[1], int(sys.argv[2]), []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    socket.create_connection((host, port), timeout=10).close()
    times.append((time.perf_counter() - t) * 1000)
print(statistics.median(times))
"""
PORT = 29777


def _root_problem() -> str:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


@functools.cache
def _netem_problem() -> str:
    """Why this kernel cannot run netem ("" when it can), tried in a scratch namespace."""
    try:
        sim = netsim.new_network(Network(latency="1ms"))
    except KdistError as e:
        return str(e)
    sim.close()
    return ""


needs_root = pytest.mark.skipif(bool(_root_problem()), reason=_root_problem())


@pytest.fixture
def netem() -> None:
    if _netem_problem():
        pytest.skip(_netem_problem())


@pytest.fixture
def networks() -> Iterator[list[netsim.SimNetwork]]:
    made: list[netsim.SimNetwork] = []
    yield made
    for sim in made:
        sim.close()


def leftovers(tag: str) -> list[str]:
    """Namespaces and host links of run `tag` that still exist."""
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return [w for w in spaces.split() if w.startswith(f"kdist-{tag}-")] + \
        [name for name in names if name == f"kd{tag}"]


def kdist_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("kdist-")}


def connect_ms(client_prefix: tuple[str, ...], server_prefix: tuple[str, ...], host: str,
               count: int = 15) -> float:
    """Median TCP connect round trip from a process in one place to a server in another."""
    server = subprocess.Popen([*server_prefix, sys.executable, "-c", SERVER, host, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        done = subprocess.run([*client_prefix, sys.executable, "-c", CLIENT, host, str(PORT),
                               str(count)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return float(done.stdout)
    finally:
        server.kill()
        server.wait()


def round_trips(network: Network, made: list[netsim.SimNetwork]) -> tuple[float, float]:
    """(node-0 -> node-1, node-0 -> the host's store address) connect times in ms."""
    sim = netsim.new_network(network)
    made.append(sim)
    a, b = sim.node(0), sim.node(1)
    between = connect_ms(a.prefix, b.prefix, b.address)
    to_store = connect_ms(a.prefix, (), sim.store_host)
    return between, to_store


# ---- the namespaces themselves -------------------------------------------------------------


@needs_root
def test_nodes_reach_each_other_and_the_store_on_the_host(
        networks: list[netsim.SimNetwork]) -> None:
    between, to_store = round_trips(Network(), networks)
    print(f"\nno impairment: node-0 -> node-1 {between:.3f} ms, node-0 -> host {to_store:.3f} ms")
    assert between < 5 and to_store < 5
    sim = networks[0]
    node = sim.node(1)
    assert node.address == str(sim.subnet.network_address + 3) and node.prefix[-1] == \
        f"kdist-{sim.tag}-1"
    assert dict(node.env) == {"PET_LOCAL_ADDR": node.address, "GLOO_SOCKET_IFNAME": "eth0",
                              "NCCL_SOCKET_IFNAME": "eth0"}
    assert all(len(name) <= 15 for name in leftovers(sim.tag) if not name.startswith("kdist-"))


@needs_root
def test_latency_adds_twice_its_value_to_a_round_trip_between_nodes(
        netem: None, networks: list[netsim.SimNetwork]) -> None:
    base_between, base_store = round_trips(Network(), networks)
    between, to_store = round_trips(Network(latency="20ms"), networks)
    print(f"\nnode-0 -> node-1: {base_between:.2f} ms -> {between:.2f} ms with latency 20ms; "
          f"node-0 -> host store: {base_store:.2f} ms -> {to_store:.2f} ms")
    assert base_between < 5, base_between
    assert between - base_between >= 35, (base_between, between)  # 2 x 20 ms, minus slack
    assert between < 80, between
    assert 17 <= to_store - base_store < 40, (base_store, to_store)  # only the node delays


@needs_root
def test_netem_is_on_each_node_interface(netem: None, networks: list[netsim.SimNetwork]) -> None:
    sim = netsim.new_network(Network(latency="20ms", jitter="5ms", loss="0.1%"))
    networks.append(sim)
    shown = subprocess.run([*sim.node(0).prefix, "tc", "qdisc", "show", "dev", "eth0"],
                           capture_output=True, text=True, check=True).stdout
    assert "netem" in shown and "delay 20ms  5ms" in shown and "loss 0.1%" in shown, shown
    assert netem_args(sim.network) == ["netem", "delay", "20ms", "5ms", "loss", "0.1%"]


# ---- nothing is left ----------------------------------------------------------------------


@needs_root
def test_close_removes_every_namespace_and_link() -> None:
    sim = netsim.new_network(Network())
    try:
        for i in range(3):
            sim.node(i)
        assert sorted(leftovers(sim.tag)) == sorted(
            [f"kdist-{sim.tag}-{i}" for i in range(3)] + [f"kdist-{sim.tag}-sw", f"kd{sim.tag}"])
    finally:
        sim.close()
    assert leftovers(sim.tag) == []
    sim.close()  # idempotent


@needs_root
def test_a_failed_setup_removes_what_it_made() -> None:
    tag = os.urandom(3).hex()
    subprocess.run(["ip", "netns", "add", f"kdist-{tag}-1"], check=True)  # in the way of node 1
    try:
        sim = netsim.new_network(Network(), tag)
        sim.node(0)
        with pytest.raises(KdistError, match=rf"ip netns add kdist-{tag}-1.* failed: "):
            sim.node(1)
        sim.close()
        assert leftovers(tag) == [f"kdist-{tag}-1"]  # only the one this test made
    finally:
        subprocess.run(["ip", "netns", "del", f"kdist-{tag}-1"], check=True)
    assert leftovers(tag) == []


def test_without_the_capabilities_kdist_run_refuses_before_starting_anything(
        tmp_path: Path) -> None:
    """Root with CAP_NET_ADMIN and CAP_SYS_ADMIN taken away (setpriv), or simply not root."""
    status = "Name:\tx\nCapEff:\t0000000000001000\n"  # NET_ADMIN only: no namespaces
    assert netsim.effective_caps(status) == 1 << netsim.CAP_NET_ADMIN
    if os.geteuid() != 0:
        with pytest.raises(KdistError, match="needs root"):
            netsim.check_available(Network())
        return
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    spec = tmp_path / "kdist.yaml"
    spec.write_text((ROOT / "trainers" / "examples" / "smoke-node0.yaml").read_text()
                    + "network: {latency: 5ms}\n")
    result = subprocess.run(["setpriv", "--bounding-set=-net_admin,-sys_admin", *KDIST, "run",
                             "-f", str(spec), "--run-dir", str(tmp_path / "run")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, explain(result)
    assert result.stderr.startswith("kdist: network: kdist run simulates network conditions with "
                                    "one network namespace per node, which needs root"), \
        result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


# ---- whole jobs ---------------------------------------------------------------------------


@needs_root
@pytest.mark.torch
@pytest.mark.parametrize("network", ["{}", "{latency: 5ms}"])
def test_smoke_job_runs_with_each_node_in_its_own_namespace(
        tmp_path: Path, network: str, request: pytest.FixtureRequest) -> None:
    if network != "{}":
        request.getfixturevalue("netem")
    before = kdist_namespaces()
    spec = tmp_path / "kdist.yaml"
    spec.write_text((ROOT / "trainers" / "examples" / "smoke-node0.yaml").read_text()
                    + f"network: {network}\n")
    result = kdist_run(spec, tmp_path / "run")
    assert result.returncode == 0, explain(result)
    assert '"event":"smoke","world_size":2' in result.stdout
    node0 = (tmp_path / "run" / "node-0.log").read_text()  # torchrun's lines: node logs only
    assert "rdzv_endpoint            : 10.213." in node0  # node 0's own address
    assert kdist_namespaces() <= before, "namespaces left behind"


@needs_root
@pytest.mark.torch
def test_ctrl_c_removes_the_namespaces(tmp_path: Path) -> None:
    before = kdist_namespaces()
    spec = tmp_path / "kdist.yaml"
    spec.write_text("name: netint\nimage: kdist-trainer:test\nentrypoint: trainers/train.py\n"
                    "args: [--synthetic, --max-steps, '5000', --step-sleep, '0.2']\nnodes: 2\n"
                    "network: {}\n")
    proc = start_until_stepping(spec, tmp_path / "run")
    try:
        assert len(kdist_namespaces() - before) == 3  # the switch and two nodes
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert kdist_namespaces() <= before, "namespaces left behind"


@needs_root
@pytest.mark.torch
def test_with_a_network_the_job_listens_only_on_loopback_and_its_own_addresses(
        tmp_path: Path) -> None:
    """`network:` puts every node in a namespace of its own: while the tutorial trains, every
    listening socket of the job is on loopback or on the simulated network (10.213.S.0/24: the
    store on the host's veth, each node's eth0), none on this host's own addresses; the job
    succeeds."""
    spec = tmp_path / "kdist.yaml"
    spec.write_text(TUTORIAL.read_text() + "network: {}\n")
    run_dir = (tmp_path / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KDIST_RUN_DIR": str(run_dir)})
    seen: list[str] = []
    try:
        read_until(proc, f"Epoch 4 | {SAVED}", seen)
        listening = listeners(job_pids(run_dir))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(seen)[-2000:] + out[-2000:] + err[-3000:]
    assert len(listening) >= 3, listening  # the store, rank 0's store, gloo's pairs
    simulated = [x for x in listening if ipaddress.ip_address(x.address) in netsim.SUBNETS]
    assert simulated, [str(x) for x in listening]  # the store on the host's veth
    assert all(x.loopback_only or x in simulated for x in listening), [str(x) for x in listening]
