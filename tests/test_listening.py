"""kdist/targets/local/listening.py and `kdist doctor`'s listening check, with real sockets held by
real processes that carry a local run's markers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets.compose import dev_render
from kdist.targets.compose import render as compose
from kdist.targets.local.listening import Listener, decode_address, listeners, running_jobs
from kdist.tools.doctor import check_listening

HOLDER = ("import socket, sys, time\n"
          "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
          "s.bind((sys.argv[1], 0)); s.listen(); print(s.getsockname()[1], flush=True)\n"
          "time.sleep(60)\n")


@contextmanager
def holding(address: str, run_id: str) -> Iterator[tuple[int, int]]:
    """A process of run `run_id` listening on address: (pid, port)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, address], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "KDIST_RUN_ID": run_id})
    try:
        assert proc.stdout is not None
        yield proc.pid, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def test_addresses_as_the_kernel_writes_them() -> None:
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_address("00000000:0050") == ("0.0.0.0", 80)
    assert decode_address("00000000000000000000000001000000:0016") == ("::1", 22)
    assert decode_address("00000000000000000000000000000000:0016") == ("::", 22)
    assert Listener("::1", 1, 1).loopback_only and not Listener("::", 1, 1).loopback_only


def test_a_process_s_listening_sockets_and_its_run() -> None:
    with holding("127.0.0.1", "lsn-20261207-000000-abcd") as (pid, port):
        assert listeners([pid]) == [Listener("127.0.0.1", port, pid)]
        assert running_jobs("lsn") == {"lsn-20261207-000000-abcd": [pid]}
        check = check_listening("lsn")
        assert check.status == "ok" and f"127.0.0.1:{port} (loopback only)" in check.detail
    assert running_jobs("lsn") == {}
    assert check_listening("lsn").detail == "no local run of job lsn is running"


def test_a_run_reachable_from_the_network_fails_the_check() -> None:
    with holding("0.0.0.0", "wide-20261207-000000-abcd") as (_, port), \
            holding("::", "wide-20261207-000000-abcd") as (_, port6):
        check = check_listening("wide")
    assert check.status == "fail", check
    assert f"reachable from the network: 0.0.0.0:{port}" in check.detail
    assert f"[::]:{port6}" in check.detail


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "trainers" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_compose_publishes_only_the_dev_port_and_only_on_loopback(example: Path) -> None:
    """No node or store port leaves the job's network; `--dev`'s Jupyter is on 127.0.0.1."""
    plan = LaunchPlan(load_file(example))
    doc = dev_render.render(plan)
    published = {name: svc.get("ports", []) for name, svc in doc["services"].items()}
    assert {name for name, ports in published.items() if ports} == {dev_render.DEV_SERVICE}
    assert all(p["host_ip"] == "127.0.0.1" for p in published[dev_render.DEV_SERVICE])
    assert all("ports" not in svc and svc.get("network_mode") != "host"
               for svc in compose.render(plan)["services"].values())
