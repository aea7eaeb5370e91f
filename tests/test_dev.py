"""`--dev` without a Docker Engine: the rendered service, image tags, the token file, the CLI.

The golden of the rendered file is in test_golden.py (tests/fixtures/features/dev/); the run
against a real engine is in test_dev_e2e.py.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT

from kdist.cli import cli
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets.compose import dev_job as backend
from kdist.targets.compose import dev_render as dev
from kdist.targets.compose import render as compose
from kdist.targets.compose.job import ComposeJob, DockerError, Engine, project_for

EXAMPLES = ROOT / "trainers" / "examples"
SPEC = ROOT / "tests" / "fixtures" / "features" / "dev" / "kdist.yaml"


def plan_of(path: Path) -> LaunchPlan:
    return LaunchPlan(load_file(path))


def rendered(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["render", "-t", "compose", "-f", str(SPEC), *args])
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_dev_service_only_with_dev() -> None:
    assert dev.DEV_SERVICE not in rendered()["services"]  # type: ignore[operator]
    services = rendered("--dev")["services"]
    assert isinstance(services, dict)
    plain = compose.render(plan_of(SPEC))["services"]
    assert {k: v for k, v in services.items() if k != dev.DEV_SERVICE} == plain


def test_dev_service_is_published_on_loopback_only_and_hardened() -> None:
    svc = dev.dev_service(plan_of(SPEC))
    assert svc["ports"] == [{"target": 8888, "host_ip": "127.0.0.1", "protocol": "tcp",
                             "published": "8888"}]
    assert svc["user"] == "1234:1234" and svc["init"] is True and svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"] and svc["security_opt"] == ["no-new-privileges:true"]
    assert "privileged" not in svc and "cap_add" not in svc and svc["tmpfs"] == ["/tmp:exec"]
    assert svc["networks"] == [compose.NETWORK] and svc["profiles"] == [dev.DEV_PROFILE]
    assert svc["volumes"] == [f"{compose.VOLUME}:/data/ckpt", ".:/app"]
    assert "deploy" in svc and "reservations" not in svc["deploy"]["resources"]


def test_token_is_passed_through_never_written_and_required() -> None:
    svc = dev.dev_service(plan_of(SPEC))
    env = svc["environment"]
    assert "JUPYTER_TOKEN" in env and not any(e.startswith("JUPYTER_TOKEN=") for e in env)
    assert "GREETING=cost $$5" in env  # user values are escaped for Compose, as for the nodes
    script = svc["command"][2]
    assert 'test -n "$$JUPYTER_TOKEN" ||' in script and "exit 64" in script
    for unsafe in ("allow_origin", "token=''", "password", "allow_remote_access=True",
                   "disable_check_xsrf"):
        assert unsafe not in script, unsafe
    assert "--ServerApp.allow_remote_access=False" in script


def test_port_zero_lets_docker_pick_a_loopback_port() -> None:
    (port,) = dev.dev_service(plan_of(SPEC), host_port=0)["ports"]
    assert port == {"target": 8888, "host_ip": "127.0.0.1", "protocol": "tcp"}
    ports = rendered("--dev", "--dev-port", "4242")["services"]["dev"]["ports"]  # type: ignore[index]
    assert ports[0]["published"] == "4242"


@pytest.mark.parametrize(("image", "tag"), [
    ("kdist-trainer:0.1.0", "kdist-trainer:0.1.0-dev"),
    ("trainer", "trainer:latest-dev"),
    ("registry.local:5000/team/trainer", "registry.local:5000/team/trainer:latest-dev"),
    ("registry.local:5000/trainer:v2", "registry.local:5000/trainer:v2-dev"),
    ("trainer@sha256:" + "ab" * 32, "trainer:abababababab-dev"),
    ("t:" + "x" * 128, "t:" + "x" * 124 + "-dev"),
])
def test_dev_image_tag(image: str, tag: str) -> None:
    assert dev.dev_image(image) == tag


@pytest.mark.parametrize(("args", "words"), [
    (["-t", "k8s", "--dev"], "use it with --target compose, not k8s"),
    (["-t", "compose", "--dev-port", "9000"], "--dev-port needs --dev"),
    (["-t", "compose", "--dev", "--dev-port", "70000"], "70000 is not in the range"),
])
def test_cli_rejects_dev_misuse(args: list[str], words: str) -> None:
    result = CliRunner().invoke(cli, ["render", "-f", str(SPEC), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_up_help_documents_dev() -> None:
    out = CliRunner().invoke(cli, ["up", "--help"]).output
    assert "--dev " in out and "127.0.0.1" in out and "--dev-port PORT" in out


def test_token_file_is_private_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dev-token"
    backend.write_token(path, "first")
    backend.write_token(path, "second")
    assert path.read_text() == "second\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["dev-token"], "no temp file left"


def test_dev_server_url() -> None:
    server = backend.DevServer(49153, "abc", Path("t"), "i-dev")
    assert server.url == "http://127.0.0.1:49153/lab?token=abc"


def test_dockerfile_dev_is_packaged_and_works_with_any_base() -> None:
    text = backend.dockerfile()
    for needle in ("ARG BASE_IMAGE=", "FROM ${BASE_IMAGE}", "python3 -m pip install",
                   "jupyterlab==${JUPYTERLAB_VERSION}", "USER ${UID}"):
        assert needle in text, needle
    assert "COPY" not in text and "ADD " not in text, "kdist builds it with an empty context"


class _Jupyter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "token secret"
        self.send_response(200 if ok else 403)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def jupyter_stand_in() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jupyter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_status_code_sends_the_token_and_ignores_proxies(
        jupyter_stand_in: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    assert backend.status_code(jupyter_stand_in) == 403
    assert backend.status_code(jupyter_stand_in, "secret") == 200
    assert backend.status_code(jupyter_stand_in, "wrong") == 403


def test_wrong_token_is_an_error_not_a_wait(jupyter_stand_in: int, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    job = ComposeJob(project_for(plan_of(SPEC), tmp_path), Engine("20.10", ("docker", "compose"), "2.26"))
    monkeypatch.setattr(backend, "_logs_tail", lambda job: "its last log lines: x")
    with pytest.raises(DockerError, match="answered HTTP 403 to kdist's token"):
        backend.wait_ready(job, jupyter_stand_in, "wrong", timeout=5)
    backend.wait_ready(job, jupyter_stand_in, "secret", timeout=5)


def test_compose_commands_include_the_dev_profile(tmp_path: Path) -> None:
    """So that `kdist down` (and Ctrl-C's stop) also remove the dev service."""
    job = ComposeJob(project_for(plan_of(EXAMPLES / "smoke-node0.yaml"), tmp_path),
                     Engine("20.10", ("docker", "compose"), "2.26"))
    argv = job.compose("down")
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--profile"] == ["scale", "dev"]
    assert "--profile" not in job.compose("up", profile=False), "the job's up never starts dev"
