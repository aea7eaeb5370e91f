"""The Kubernetes node script for real: sh + python3 against a local HTTPS "API server".

A StatefulSet restarts containers that exit, so a finished job records its outcome on its
StatefulSet and scales it to zero. Only the API server is stood in for (recording exact
requests at the HTTP boundary); the shell epilogue and FINISH_CODE run as rendered.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kdist.load import load_text
from kdist.plan import LaunchPlan

SPEC = """name: job
image: trainer:1
entrypoint: train.py
nodes: "1:2"
max_restarts: 1
rendezvous: {store: node0, wait_timeout: 5}
"""
STS = "/apis/apps/v1/namespaces/team/statefulsets/job"


class FakeApi(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    annotations: dict[str, str]

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append({"method": self.command, "path": self.path, "body": body,
                              "auth": self.headers.get("Authorization"),
                              "type": self.headers.get("Content-Type")})

    def do_GET(self) -> None:
        self._record()
        self._reply({"metadata": {"name": "job", "annotations": self.annotations}})

    def do_PATCH(self) -> None:
        self._record()
        self._reply({})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[int, type[FakeApi], Path]]:
    sa = tmp_path / "sa"
    sa.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(sa / "key.pem"), "-out", str(sa / "ca.crt")],
                   check=True, capture_output=True)
    (sa / "token").write_text("t0ken\n")
    (sa / "namespace").write_text("team")
    handler = type("Api", (FakeApi,), {"requests": [], "annotations": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(sa / "ca.crt", sa / "key.pem")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], handler, sa
    server.shutdown()


def start_node(tmp_path: Path, api: tuple[int, type[FakeApi], Path], rc: int,
               hostname: str = "job-1") -> subprocess.Popen[str]:
    """The rendered script with a stand-in `torchrun` (records argv, exits `rc`)."""
    port, _, sa = api
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "torchrun"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\nsleep 1\nexit {rc}\n')
    fake.chmod(0o755)
    plan = LaunchPlan(load_text(SPEC))
    script = plan.k8s_node_script("localhost")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOSTNAME": hostname,
           "TMPDIR": str(tmp_path), "KDIST_SERVICEACCOUNT_DIR": str(sa),
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    return subprocess.Popen(["sh", "-c", script], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def wait_idle(node: subprocess.Popen[str]) -> None:
    """Until the node printed that it scaled the job to zero (it then idles)."""
    assert node.stdout is not None
    for line in node.stdout:
        if "scaled statefulset job to 0" in line:
            return
    raise AssertionError("the node exited before finishing")


def stop(node: subprocess.Popen[str]) -> int:
    node.send_signal(signal.SIGTERM)
    return node.wait(timeout=10)


def test_success_records_outcome_scales_to_zero_and_idles(tmp_path: Path, api: Any) -> None:
    _, handler, _ = api
    node = start_node(tmp_path, api, rc=0, hostname="job-0")
    wait_idle(node)
    time.sleep(0.5)
    assert node.poll() is None  # idles: exiting would make the StatefulSet train again
    assert [(r["method"], r["path"]) for r in handler.requests] == [
        ("GET", STS), ("PATCH", STS), ("PATCH", STS + "/scale")]
    notes = handler.requests[1]["body"]["metadata"]["annotations"]
    assert notes == {"kdist.dev/outcome": "Succeeded", "kdist.dev/exit-code": "0",
                     "kdist.dev/finished-by": "job-0"}
    assert handler.requests[2]["body"] == {"spec": {"replicas": 0}}
    assert {r["auth"] for r in handler.requests} == {"Bearer t0ken"}
    assert handler.requests[1]["type"] == "application/merge-patch+json"
    assert "is_host=true" in (tmp_path / "argv").read_text()  # job-0 hosts the store
    assert stop(node) == 0


def test_failure_is_retried_by_a_restart_then_recorded(tmp_path: Path, api: Any) -> None:
    _, handler, _ = api
    first = start_node(tmp_path, api, rc=3)
    assert first.wait(timeout=20) == 3 and handler.requests == []  # restart 1 of max_restarts 1
    assert "is_host=false" in (tmp_path / "argv").read_text()
    second = start_node(tmp_path, api, rc=3)
    wait_idle(second)
    notes = handler.requests[1]["body"]["metadata"]["annotations"]
    assert notes["kdist.dev/outcome"] == "Failed" and notes["kdist.dev/exit-code"] == "3"
    assert stop(second) == 0


def test_an_outcome_already_recorded_is_kept(tmp_path: Path, api: Any) -> None:
    _, handler, _ = api
    handler.annotations = {"kdist.dev/outcome": "Succeeded"}
    node = start_node(tmp_path, api, rc=0)
    wait_idle(node)
    assert [(r["method"], r["path"]) for r in handler.requests] == [
        ("GET", STS), ("PATCH", STS + "/scale")]
    assert stop(node) == 0


def test_termination_while_training_records_nothing(tmp_path: Path, api: Any) -> None:
    _, handler, _ = api
    node = start_node(tmp_path, api, rc=0)
    wait_for(lambda: (tmp_path / "argv").exists())
    assert stop(node) == 143
    time.sleep(1.5)
    assert handler.requests == []
