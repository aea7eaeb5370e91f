"""Network conditions on Compose (`node-N-netem` helpers) against the real Docker Engine.

A 2-node job with `network: {latency: 20ms}` is started with `kdist up --detach`; TCP connect
round trips are timed from node-0 to node-1 (both delay their egress: about 2 x 20 ms), from
node-0 to the store (only node-0 delays: about 20 ms), and, as the baseline, from a throwaway
container without netem to the store. Skipped without Docker (like test_compose_e2e), and, after
checking that the helper ran with NET_ADMIN, when the engine's kernel has no netem qdisc.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable

import pytest
from conftest import ROOT
from test_compose_e2e import IMAGE, Job, image, job, train_args  # noqa: F401  (fixtures)

pytestmark = pytest.mark.docker

SERVER = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
          "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 29777)); s.listen(128)\n"
          "while True: s.accept()[0].close()")
CLIENT = ("import socket, statistics, sys, time\nts = []\nfor _ in range(15):\n"
          "    t = time.perf_counter(); socket.create_connection((sys.argv[1], int(sys.argv[2])), "
          "timeout=10).close(); ts.append((time.perf_counter() - t) * 1000)\n"
          "print(statistics.median(ts))")


def compose(j: Job, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["docker", "compose", "--ansi", "never", "--project-name", j.name, "--file",
            str(ROOT / ".kdist" / "compose" / j.name / "docker-compose.yaml"),
            "--project-directory", str(ROOT), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 or not check, done.stderr
    return done


def helper_state(j: Job, service: str, timeout: float = 60) -> dict[str, object]:
    """`docker compose ps` of the helper once it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = compose(j, "ps", "--all", "--format", "json", service).stdout.strip()
        row = json.loads(rows.splitlines()[0]) if rows.startswith("{") else (json.loads(rows) or [{}])[0]
        if row.get("State") == "exited":
            return dict(row)
        time.sleep(0.5)
    raise AssertionError(f"{service} did not finish within {timeout:.0f} s")


def rtt_ms(j: Job, service: str, host: str, port: int) -> float:
    done = compose(j, "exec", "-T", service, "python3", "-c", CLIENT, host, str(port))
    return float(done.stdout)


def test_latency_delays_traffic_between_node_containers(
        job: Callable[..., Job]) -> None:  # noqa: F811  (the fixture imported above)
    j = job("netem", nodes=2, args=train_args(100000, 0.5), network={"latency": "20ms"})
    up = j("up", "--detach")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    for node in ("node-0", "node-1"):
        state = helper_state(j, f"{node}-netem")
        if state.get("ExitCode") != 0:
            logs = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", compose(j, "logs", f"{node}-netem").stdout)
            if "qdisc kind is unknown" in logs:
                pytest.skip(f"the Docker host's kernel has no netem qdisc ({node}-netem ran tc "
                            f"with NET_ADMIN and got: {logs.strip().splitlines()[-1]})")
            raise AssertionError(f"{node}-netem failed: {state} {logs}")
    compose(j, "exec", "-T", "-d", "node-1", "python3", "-c", SERVER)
    time.sleep(1)
    between = rtt_ms(j, "node-0", "node-1", 29777)
    to_store = rtt_ms(j, "node-0", "rdzv", 29400)
    network = f"{j.name}_kdist"
    base = subprocess.run(["docker", "run", "--rm", "--network", network, IMAGE, "python3", "-c",
                           CLIENT, "rdzv", "29400"], capture_output=True, text=True, timeout=120)
    assert base.returncode == 0, base.stderr
    baseline = float(base.stdout)
    print(f"\ncompose, latency 20ms: node-0 -> node-1 {between:.2f} ms, node-0 -> rdzv "
          f"{to_store:.2f} ms; no netem: container -> rdzv {baseline:.2f} ms")
    assert baseline < 5, baseline
    assert between - baseline >= 35, (baseline, between)
    assert 17 <= to_store - baseline < 40, (baseline, to_store)
