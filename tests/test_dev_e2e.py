"""`kdist up --dev` against the real Docker Engine (marked `docker`; skipped without an engine).

Reuses test_compose_e2e's trainer image, job specs and cleanup. The first run builds the dev
image (JupyterLab from PyPI on top of the trainer image); later runs find it.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Callable

import pytest
import test_compose_e2e as e2e
from conftest import ROOT

from kdist.targets.compose.dev_job import status_code

pytestmark = pytest.mark.docker
Job = e2e.Job
image, job = e2e.image, e2e.job  # test_compose_e2e's fixtures: the trainer image, jobs + cleanup

READY = re.compile(r"JupyterLab is ready at http://127\.0\.0\.1:(?P<port>\d+)/lab\?token=(?P<token>\w+)$",
                   re.M)


def _inspect(container: str) -> dict[str, object]:
    got = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
    data = json.loads(got.stdout)[0]
    assert isinstance(data, dict)
    return data


def _host_header_status(port: int, token: str, host: str) -> int:
    """Status for a request whose Host header names another site (a DNS-rebinding page)."""
    got = subprocess.run(["python3", "-c", (
        "import http.client, sys; c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), "
        "timeout=5); c.request('GET', '/api/status', headers={'Host': sys.argv[3], "
        "'Authorization': 'token ' + sys.argv[2]}); print(c.getresponse().status)"),
        str(port), token, host], capture_output=True, text=True, check=True)
    return int(got.stdout)


def test_up_dev_serves_jupyterlab_on_loopback_with_a_token(job: Callable[..., Job]) -> None:
    j = job("dev", base="smoke-node0.yaml")
    up = j("up", "--dev", "--dev-port", "0", "-d", timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    ready = READY.search(up.stderr)
    assert ready, up.stderr[-3000:]
    port, token = int(ready["port"]), ready["token"]
    state = ROOT / ".kdist" / "compose" / j.name
    token_file = state / "dev-token"
    assert token_file.read_text() == token + "\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in (state / "docker-compose.yaml").read_text()

    assert status_code(port) == 403, "no token: refused"
    assert status_code(port, "0" * len(token)) == 403, "a wrong token: refused"
    assert status_code(port, token) == 200
    assert _host_header_status(port, token, f"evil.example:{port}") == 403
    assert _host_header_status(port, token, f"localhost:{port}") == 200

    dev = _inspect(f"{j.name}-dev-1")
    host, settings = dev["HostConfig"], dev["NetworkSettings"]
    assert isinstance(host, dict) and isinstance(settings, dict)
    published = [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert settings["Ports"] == {"8888/tcp": published}, settings["Ports"]
    assert host["PortBindings"] == {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert dev["Config"]["User"] == "1000:1000"  # type: ignore[index]
    assert list(settings["Networks"]) == [f"{j.name}_kdist"]  # the job's network
    mounts = {m["Destination"]: m for m in dev["Mounts"]}  # type: ignore[attr-defined]
    assert mounts["/checkpoints"]["Name"] == f"{j.name}_checkpoints"
    assert mounts["/app"]["Type"] == "bind" and mounts["/app"]["Source"] == str(ROOT)
    kernel = subprocess.run(["docker", "exec", f"{j.name}-dev-1", "python3", "-c",
                             "import torch, os; print(torch.__version__, os.environ['HOME'])"],
                            capture_output=True, text=True, timeout=120)
    version, home = kernel.stdout.split()
    assert kernel.returncode == 0 and version.startswith("2.13.0") and home == "/tmp", kernel

    down = j("down", "--volumes")
    assert down.returncode == 0, down.stderr
    assert j.docker_objects() == {"containers": [], "networks": [], "volumes": []}
    assert not token_file.exists(), "`kdist down` removes the token"


def test_dev_port_in_use_is_a_clear_error(job: Callable[..., Job]) -> None:
    first = job("devport", base="smoke-node0.yaml")
    up = first("up", "--dev", "--dev-port", "0", "-d", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    ready = READY.search(up.stderr)
    assert ready, up.stderr[-3000:]
    second = job("devport2", base="smoke-node0.yaml")
    taken = second("up", "--dev", "--dev-port", ready["port"], "-d", timeout=900)
    assert taken.returncode == 1, taken.stderr[-3000:]
    assert f"port {ready['port']} is already in use" in taken.stderr, taken.stderr[-3000:]
    assert "--dev-port PORT (0 picks a free one)" in taken.stderr
    assert f"job {second.name} runs without JupyterLab" in taken.stderr
    assert "Traceback" not in taken.stderr
