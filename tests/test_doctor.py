"""`kdist doctor`: every check made to fail for real on this machine, and the happy path."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import ROOT

from kdist.cli import KdistGroup
from kdist.cli.tools import diff, doctor
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.spec.model import JobSpec
from kdist.targets import PACKAGES
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s
from kdist.tools.diff import compare
from kdist.tools.doctor import CHECKS, check_gpu_sets, visible_gpus
from kdist.validate.rules import RULES


# kdist's context settings too: click caches a command's help option on first use, so a group
# without `-h` would change `kdist doctor -h` for later tests (tests/test_docs.py's golden).
@click.group(cls=KdistGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A group like kdist's, with the commands under test."""


cli.add_command(doctor)
cli.add_command(diff)


def write_spec(tmp_path: Path, **fields: Any) -> Path:
    doc: dict[str, Any] = {"name": "doc", "image": "trainer:1.0", "entrypoint": "train.py",
                           "nodes": 1, "resources": {"shm": "1Mi"}}
    doc.update(fields)
    path = tmp_path / "kdist.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["doctor", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def checks(*args: str) -> dict[str, dict[str, str]]:
    """Run with -o json; the checks by name."""
    result = invoke(*args, "-o", "json")
    doc = json.loads(result.stdout)
    assert doc["ok"] == (result.exit_code == 0)
    return {c["check"]: c for c in doc["checks"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (as a busy rendezvous port would be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def shm_bytes() -> int:
    st = os.statvfs("/dev/shm")
    return st.f_frsize * st.f_blocks


# ---- local target ------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_a_spec_that_fits_passes_for_the_local_target(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, rendezvous={"port": free_port()})
    result = invoke("-f", str(spec))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    for name in ("python", "torch", "port", "shm", "interface", "gpus"):
        assert any(line.split()[:2] == [name, "ok"] for line in result.stdout.splitlines()), name
    assert "checks passed for target local" in result.stdout


def test_a_busy_rendezvous_port_fails(tmp_path: Path, listening: int) -> None:
    spec = write_spec(tmp_path, rendezvous={"port": listening})
    result = invoke("-f", str(spec))
    assert result.exit_code == 1
    assert f"rendezvous port {listening} on 127.0.0.1: already in use" in result.stdout
    assert "fix: stop what holds it" in result.stdout and "rendezvous.port" in result.stdout
    assert "1 failed" in result.stderr


def test_a_missing_network_interface_fails(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, network_interface="kdist-nope0", rendezvous={"port": free_port()})
    found = checks("-f", str(spec))["interface"]
    assert found["status"] == "fail"
    assert "network interface 'kdist-nope0' (spec.network_interface) is not on this host" \
        in found["detail"]
    assert "lo" in found["detail"].split("it has: ")[1].split(", ")  # the interfaces it has
    assert "network_interface" in found["fix"]


def test_present_interface_is_ok(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, network_interface="lo", rendezvous={"port": free_port()})
    assert checks("-f", str(spec))["interface"]["status"] == "ok"


def test_dev_shm_smaller_than_the_spec_fails_with_several_processes(tmp_path: Path) -> None:
    want = 2 * shm_bytes() // 2**20
    spec = write_spec(tmp_path, procs_per_node=2, resources={"shm": f"{want}Mi", "memory": f"{want}Mi"},
                      rendezvous={"port": free_port()})
    found = checks("-f", str(spec))["shm"]
    assert found["status"] == "fail"
    assert found["detail"].startswith("/dev/shm is ")
    assert f"smaller than resources.shm {want}Mi" in found["detail"]
    assert "resources.shm" in found["fix"]


def test_dev_shm_smaller_than_the_spec_warns_with_one_process(tmp_path: Path) -> None:
    want = 2 * shm_bytes() // 2**20
    spec = write_spec(tmp_path, resources={"shm": f"{want}Mi", "memory": f"{want}Mi"},
                      rendezvous={"port": free_port()})
    found = checks("-f", str(spec))["shm"]
    assert found["status"] == "warn" and "Bus error" in found["detail"]


def test_gpus_requested_on_a_machine_without_gpus(tmp_path: Path) -> None:
    if visible_gpus()[0]:
        pytest.skip("this machine has GPUs")
    spec = write_spec(tmp_path, resources={"shm": "1Mi", "gpu": 1},
                      rendezvous={"port": free_port()})
    local = checks("-f", str(spec))["gpus"]
    assert local["status"] == "fail"
    assert local["detail"].startswith("the spec asks for 1 GPU per node, but 0 GPUs visible")
    assert checks("-f", str(spec), "--in-node")["gpus"]["status"] == "fail"
    assert checks("-f", str(spec), "--target", "k8s")["gpus"]["status"] == "warn"


# ---- --in-node -----------------------------------------------------------------------------


def test_in_node_dns_failure_is_one_line_on_stderr(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    result = invoke("-f", str(spec), "--in-node", "--rdzv-host", "kdist-store.invalid")
    assert result.exit_code == 1
    fails = [line for line in result.stderr.splitlines() if line.startswith("kdist doctor: FAIL")]
    assert len(fails) == 1
    assert fails[0].startswith("kdist doctor: FAIL dns: cannot resolve the rendezvous host "
                               "kdist-store.invalid: ")
    assert "; fix: " in fails[0]
    names = [line.split()[3].rstrip(":") for line in result.stdout.splitlines()]
    assert names == ["shm", "interface", "gpus"]  # the node-local checks that passed


def test_in_node_resolves_the_store_host_as_rendered_for_kubernetes(tmp_path: Path) -> None:
    standalone = checks("-f", str(write_spec(tmp_path)), "--in-node")["dns"]
    assert "rendezvous host doc-rdzv" in standalone["detail"]  # not resolvable outside a cluster
    node0 = checks("-f", str(write_spec(tmp_path, rendezvous={"store": "node0"})), "--in-node")
    assert "rendezvous host doc-0.doc" in node0["dns"]["detail"]
    assert "publishNotReadyAddresses" in node0["dns"]["fix"]


def test_in_node_small_shm_fails(tmp_path: Path) -> None:
    want = 2 * shm_bytes() // 2**20
    spec = write_spec(tmp_path, procs_per_node=2, resources={"shm": f"{want}Mi", "memory": f"{want}Mi"})
    result = invoke("-f", str(spec), "--in-node", "--rdzv-host", "localhost")
    assert result.exit_code == 1
    assert "kdist doctor: FAIL shm: /dev/shm is " in result.stderr
    assert f"smaller than resources.shm {want}Mi" in result.stderr
    assert "kdist doctor: ok dns: rendezvous host localhost resolves" in result.stdout


# ---- compose target: Docker ---------------------------------------------------------------


def docker_problem() -> str:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, check=False)
    return "" if info.returncode == 0 else f"`docker info` failed: {info.stderr.strip()[:200]}"


def test_docker_check_is_ok_with_a_running_engine(tmp_path: Path) -> None:
    problem = docker_problem()
    if problem:
        pytest.skip(f"no Docker Engine: {problem}")
    found = checks("-f", str(write_spec(tmp_path)), "--target", "compose")
    assert found["docker"]["status"] == "ok"
    assert found["docker"]["detail"].startswith("Docker Engine ")
    assert ", Compose 2." in found["docker"]["detail"]
    assert found["gpu-sets"]["status"] == "ok"


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
def test_docker_check_fails_on_a_dead_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:  # a socket file nobody listens on
        sock.bind(str(dead))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    result = invoke("-f", str(write_spec(tmp_path)), "--target", "compose")
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if line.startswith("docker "))
    assert row.split()[1] == "fail"
    assert "the Docker engine is not running or not reachable" in row and str(dead) in row
    assert "fix: start the Docker Engine" in result.stdout


def test_compose_gpu_sets_must_be_distinct(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, nodes=3, resources={"shm": "1Mi", "gpu": 2})
    rendered = compose.render(LaunchPlan(load_file(spec)))
    assert check_gpu_sets(rendered).status == "ok"
    devices = rendered["services"]["node-2"]["deploy"]["resources"]["reservations"]["devices"]
    devices[0]["device_ids"] = ["0", "5"]  # node-2 now shares GPU 0 with node-0
    found = check_gpu_sets(rendered)
    assert found.status == "fail"
    assert "GPU 0: node-0, node-2" in found.detail and "Duplicate GPU detected" in found.detail
    assert "compose-gpu-devices" in found.fix


# ---- k8s target: the kube context -----------------------------------------------------------


def test_kube_context_with_a_closed_port_fails_naming_the_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # closed again: nothing listens there
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "gone",
              "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "gone", "context": {"cluster": "c", "user": "u"}}]}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config), encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = invoke("-f", str(write_spec(tmp_path)), "--target", "k8s")
    assert result.exit_code == 1
    row = next(line for line in result.stdout.splitlines() if line.startswith("kube "))
    assert row.split()[1] == "fail"
    assert f"cannot reach the Kubernetes API server https://127.0.0.1:{port}" in row
    assert "(context 'gone'): connection refused" in row


def test_no_kubeconfig_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    found = checks("-f", str(write_spec(tmp_path)), "--target", "k8s")["kube"]
    assert found["status"] == "fail"
    assert found["detail"].startswith(f"no kubeconfig ({missing} does not exist)")
    assert "KUBECONFIG" in found["fix"]


# ---- the CLI boundary ------------------------------------------------------------------------


def test_a_bad_spec_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "kdist.yaml"
    bad.write_text("name: x\nimage: y\nentrypoint: t.py\nnodes: 1\nresources: {shm: lots}\n")
    result = invoke("-f", str(bad))
    assert result.exit_code == 2 and "resources.shm" in result.stderr
    missing = invoke("-f", str(tmp_path / "missing.yaml"))
    assert missing.exit_code != 0 and "missing.yaml" in missing.stderr


def test_registering_the_commands_imports_no_backend() -> None:
    code = ("import sys, kdist.cli.tools; "
            "print(sorted(m for m in sys.modules if m.startswith('kdist') or m == 'yaml'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(out.stdout.strip())
    assert "kdist.cli.tools" in loaded
    # the command modules, the target registry (kdist.targets and each target's __init__, the
    # status model), the errors and the json records; no backend, renderer or yaml
    registry = ["kdist.targets", "kdist.status", *(f"kdist.targets.{p}" for p in PACKAGES)]
    assert [m for m in loaded if not m.startswith("kdist.cli")
            and m not in ("kdist", "kdist.errors", "kdist.jsonout", *registry)] == []


# ---- docs/troubleshooting.md names only things that exist ------------------------------------


def test_troubleshooting_names_real_rules_checks_fields_and_rows() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    rules = set(re.findall(r"rule `([a-z0-9-]+)`", text))
    assert rules and rules <= set(RULES), rules - set(RULES)
    checked = set(re.findall(r"check `([a-z-]+)`", text))
    assert checked and checked <= set(CHECKS), checked - set(CHECKS)
    for field in set(re.findall(r"field `([a-z_.]+)", text)):
        cls: Any = JobSpec
        for part in field.split("."):
            types = {f.name: f.type for f in dataclasses.fields(cls)}
            assert part in types, f"docs/troubleshooting.md: no spec field {field}"
            cls = getattr(sys.modules["kdist.spec.model"], str(types[part]).split(" |")[0], None)
    p = LaunchPlan(load_file(ROOT / "tests" / "fixtures" / "features" / "minimal" / "kdist.yaml"))
    names = {r.name for r in compare(compose.render(p), k8s.render(p))}
    rows = set(re.findall(r"row `([a-z ]+)`", text))
    assert rows and rows <= names, rows - names


# ---- --in-node without a spec file (an init step in the trainer image) ----------------------


@pytest.fixture
def no_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without kdist.yaml, and none of the variables a node may have."""
    monkeypatch.chdir(tmp_path)
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "PET_RDZV_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_in_node_without_a_spec_fails_on_a_small_shm(no_spec: Path) -> None:
    want = 2 * shm_bytes() // 2**20
    result = invoke("--in-node", "--shm", f"{want}Mi", "--rdzv-host", "localhost")
    assert result.exit_code == 1
    fails = [line for line in result.stderr.splitlines() if line.startswith("kdist doctor: FAIL")]
    assert len(fails) == 1 and fails[0].startswith("kdist doctor: FAIL shm: /dev/shm is ")
    assert f"smaller than --shm {want}Mi" in fails[0]
    assert "; fix: give the node a bigger /dev/shm (docker run --shm-size" in fails[0]
    assert "kdist doctor: ok dns: rendezvous host localhost resolves" in result.stdout


def test_in_node_without_a_spec_reads_the_node_environment(
        no_spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "localhost:29400")
    result = invoke("--in-node", "--shm", "1Mi")
    assert result.exit_code == 0, result.output
    assert "kdist doctor: ok shm: /dev/shm is " in result.stdout
    assert "asked for --shm 1Mi" in result.stdout
    assert "kdist doctor: ok interface: network interface 'lo' is present" in result.stdout
    assert "kdist doctor: ok dns: rendezvous host localhost resolves" in result.stdout
    assert "all 4 checks passed in this node" in result.stdout

    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "kdist-nope0")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    found = checks("--in-node")
    assert found["interface"]["status"] == "fail"
    assert "'kdist-nope0' (NCCL_SOCKET_IFNAME) is not on this host" in found["interface"]["detail"]
    assert "set NCCL_SOCKET_IFNAME" in found["interface"]["fix"]


def test_in_node_without_a_spec_or_host_only_warns(no_spec: Path) -> None:
    result = invoke("--in-node")
    assert result.exit_code == 0, result.output
    assert "kdist doctor: warn dns: no rendezvous host to resolve" in result.stdout
    assert "no size asked (--shm)" in result.stdout and "no GPUs asked (--gpus)" in result.stdout
    dns = checks("--in-node", "--rdzv-host", "kdist-store.invalid")["dns"]
    assert dns["status"] == "fail" and "kdist-store.invalid" in dns["detail"]


def test_in_node_options_override_the_spec(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, resources={"shm": "1Mi"})
    want = 2 * shm_bytes() // 2**20
    found = checks("-f", str(spec), "--in-node", "--rdzv-host", "localhost", "--shm", f"{want}Mi",
                   "--interface", "kdist-nope0")
    assert found["shm"]["status"] == "fail"  # an asked-for minimum fails even with one process
    assert f"smaller than --shm {want}Mi" in found["shm"]["detail"]
    assert "'kdist-nope0' (--interface)" in found["interface"]["detail"]


def test_in_node_spec_problems_are_still_errors(no_spec: Path) -> None:
    missing = invoke("-f", "missing.yaml", "--in-node")  # named: must exist
    assert missing.exit_code != 0 and "missing.yaml" in missing.stderr
    assert invoke("--shm", "1Gi").exit_code == 2  # node options need --in-node
    bad = invoke("--in-node", "--shm", "lots")
    assert bad.exit_code == 2 and "--shm 'lots' is not a size" in bad.stderr
    assert invoke().exit_code != 0  # host checks still need the spec
