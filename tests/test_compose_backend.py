"""The pure parts of the Compose backend and CLI, and the image's files (no Docker Engine needed).

What needs an engine is in test_compose_e2e.py. Compose v1 and a missing plugin cannot be
installed here, so those two answers come from stand-in `docker` scripts on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT

from kdist.cli import cli
from kdist.cli.jobs import format_torchrun
from kdist.errors import UsageError
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.status import format_state, state_dict
from kdist.targets.compose import job as backend
from kdist.targets.compose import render as render_compose
from kdist.targets.compose.job import (
    ComposeJob,
    Container,
    DockerError,
    DockerUnavailable,
    Engine,
    ImageMissing,
    PortInUse,
    clean_line,
    explain,
    log_text,
    parse_ps,
    project_for,
)
from kdist.targets.compose.status import JobStatus, NodeStatus, to_state
from kdist.torchlog import error_line, root_cause

EXAMPLES = ROOT / "trainers" / "examples"
ENGINE = Engine("20.10.24", ("docker", "compose"), "2.26.1")

TORCHRUN_FAILURE = """\
node-0 | [rank0]: RuntimeError: injected failure at step 3
node-0 | E1124 00:43:28.1 7 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)
node-0 | torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
node-0 | ============================================================
node-0 | trainers/train.py FAILED
node-0 | ------------------------------------------------------------
node-0 | Failures:
node-0 |   <NO_OTHER_FAILURES>
node-0 | ------------------------------------------------------------
node-0 | Root Cause (first observed failure):
node-0 | [0]:
node-0 |   time      : 2026-11-24_00:43:27
node-0 |   host      : node-0
node-0 |   rank      : 0 (local_rank: 0)
node-0 |   exitcode  : 1 (pid: 10)
node-0 |   traceback : Traceback (most recent call last):
node-0 |     File "/app/trainers/train.py", line 412, in run_epoch
node-0 |       raise RuntimeError(f"injected failure at step {cfg.fail_at_step}")
node-0 |   RuntimeError: injected failure at step 3
node-0 |
node-0 | ============================================================
"""


def plan_of(name: str) -> LaunchPlan:
    return LaunchPlan(load_file(EXAMPLES / name))


def container(service: str, state: str = "running", code: int = 0, **kw: object) -> Container:
    return Container(service, f"job-{service}-1", "abc", state, code, **kw)  # type: ignore[arg-type]


# ---- docker's answers -> clear errors ------------------------------------------------------------


@pytest.mark.parametrize(("output", "kind", "words"), [
    ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon "
     "running?", DockerUnavailable, "engine is not running"),
    ("permission denied while trying to connect to the Docker daemon socket at "
     "unix:///var/run/docker.sock", DockerUnavailable, "docker` group"),
    ("Error response from daemon: driver failed programming external connectivity: Bind for "
     "0.0.0.0:29400 failed: port is already allocated", PortInUse, "port 29400 is already in use"),
    ("listen tcp4 0.0.0.0:8080: bind: address already in use", PortInUse, "port 8080"),
    ('Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup '
     "registry-1.docker.io: no such host", ImageMissing, "image img:1 is not on this machine"),
    ("pull access denied for img, repository does not exist or may require 'docker login'",
     ImageMissing, "kdist up --build"),
    ("docker: 'compose' is not a docker command.", DockerUnavailable, "Compose v2 is not installed"),
    ("service \"node-0\" refers to undefined network x: invalid compose project", DockerError,
     "docker compose up failed: service"),
])
def test_docker_errors_are_explained(output: str, kind: type, words: str) -> None:
    error = explain(output, "docker compose up", "img:1")
    assert type(error) is kind
    assert words in str(error)
    assert "Traceback" not in str(error)


def _fake_bin(tmp_path: Path, scripts: dict[str, str]) -> dict[str, str]:
    for name, body in scripts.items():
        path = tmp_path / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}


DOCKER_WITHOUT_COMPOSE = """\
case "$1" in
  info) echo 20.10.24 ;;
  compose) echo "docker: 'compose' is not a docker command." >&2; exit 1 ;;
esac
"""


@pytest.mark.parametrize(("scripts", "words"), [
    ({"docker": DOCKER_WITHOUT_COMPOSE, "docker-compose": "echo 1.29.2\n"},
     "found Compose v1"),
    ({"docker": DOCKER_WITHOUT_COMPOSE}, "Compose v2 is not installed"),
    ({"docker": "echo 'Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon "
                "running?' >&2; exit 1\n"}, "Docker engine is not running"),
], ids=["compose-v1", "no-compose", "engine-down"])
def test_cli_says_what_is_missing(tmp_path: Path, scripts: dict[str, str], words: str) -> None:
    (tmp_path / "bin").mkdir()
    env = _fake_bin(tmp_path / "bin", scripts)
    code = "from kdist.cli import main; main()"
    spec = str(EXAMPLES / "cpu-gloo.yaml")
    got = subprocess.run([sys.executable, "-c", code, "status", "-f", spec], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 3, got.stderr
    assert words in got.stderr and "Traceback" not in got.stderr


def test_standalone_docker_compose_v2_is_used_when_the_plugin_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _fake_bin(tmp_path, {"docker": DOCKER_WITHOUT_COMPOSE, "docker-compose": "echo v2.24.0\n"})
    monkeypatch.setenv("PATH", env["PATH"])
    engine = backend.detect()
    assert engine.compose == (str(tmp_path / "docker-compose"),) and engine.compose_version == "2.24.0"


# ---- parsing -------------------------------------------------------------------------------------


def test_ps_json_lines_and_array() -> None:
    rows = [{"Service": "node-0", "State": "running"}, {"Service": "rdzv", "State": "exited"}]
    lines = "\n".join(json.dumps(r) for r in rows) + "\n"
    assert parse_ps(lines) == rows
    assert parse_ps(json.dumps(rows)) == rows
    assert parse_ps("") == [] and parse_ps("[]") == []


@pytest.mark.parametrize(("raw", "clean"), [
    ("\x1b[2Knode-0-1  | KDIST_METRIC {}", "node-0 | KDIST_METRIC {}"),
    ("node-10-1  | text | with bars", "node-10 | text | with bars"),
    ("rdzv-1  | kdist: rendezvous store listening", "rdzv   | kdist: rendezvous store listening"),
    ("node-1-1 exited with code 137", "node-1 | (container exited with code 137)"),
    ("plain line", "plain line"),
])
def test_log_lines_get_one_node_prefix(raw: str, clean: str) -> None:
    width = 6 if raw.startswith("rdzv") else 0
    assert clean_line(raw, width) == clean


def test_root_cause_is_torchruns_summary() -> None:
    block = root_cause([log_text(x) for x in TORCHRUN_FAILURE.splitlines()])
    assert block[0] == "rank 0 exited with code 1: RuntimeError: injected failure at step 3"
    assert error_line(block) == "RuntimeError: injected failure at step 3"
    assert not backend.is_peer_error(block)
    peer = ["  RuntimeError: [pair.cc:553] Connection closed by peer [172.24.0.4]:18621."]
    assert backend.is_peer_error(peer)


def test_root_cause_of_compose_logs_is_the_local_one() -> None:
    """The same parser as `kdist run`: real node logs with compose's `node-N | ` prefix."""
    fixtures = Path(__file__).parent / "fixtures" / "torchrun" / "raise-no-restarts"
    blocks = [root_cause([log_text(f"node-{i} | {x}") for x in (fixtures / f"node-{i}.log")
                          .read_text(encoding="utf-8").splitlines()]) for i in (0, 1)]
    assert blocks[0][0] == ("rank 0 exited with code 1: RuntimeError: tutorial trainer: deliberate "
                            "failure at epoch 3")
    assert not backend.is_peer_error(blocks[0]) and backend.is_peer_error(blocks[1])
    assert blocks[1][0].startswith("rank 1 was killed by SIGABRT: RuntimeError: ")


def test_root_cause_without_summary_is_the_log_tail() -> None:
    lines = ["node-1 | a", "node-1 | ", *(f"node-1 | line {i}" for i in range(20)),
             "node-1 | kdist: rendezvous store rdzv:29400 not reachable after 300s"]
    block = root_cause([log_text(x) for x in lines])
    assert len(block) == 8 and block[-1].startswith("kdist: rendezvous store")
    assert error_line(block).startswith("kdist: rendezvous store")


# ---- job state -----------------------------------------------------------------------------------


def status_of(*nodes: NodeStatus) -> JobStatus:
    return JobStatus("job", container("rdzv"), nodes)


def test_phases() -> None:
    ok = NodeStatus("node-0", container("node-0", "exited", 0))
    killed = NodeStatus("node-1", container("node-1", "exited", 137), backend.KILLED)
    crashed = NodeStatus("node-1", container("node-1", "exited", 1))
    running = NodeStatus("node-2", container("node-2"))
    standby = NodeStatus("node-2", None, standby=True)
    assert status_of(NodeStatus("node-0", None)).phase == "not-started"
    assert status_of(ok, running).phase == "running"
    assert status_of(ok, killed, standby).phase == "succeeded"
    assert status_of(ok, crashed).phase == "failed"
    assert status_of(killed).phase == "stopped"  # nothing finished the job
    assert status_of(ok, crashed).failed_nodes == [crashed]
    assert standby.note.startswith("standby") and killed.note == backend.KILLED


def test_a_node_kdist_stopped_after_its_own_error_failed_and_was_not_lost() -> None:
    """SIGTERM (143) from kdist's stop after the node's own error (the FAILING mark): failed.
    The same exit with no mark came from outside kdist: lost."""
    outside = NodeStatus("node-0", container("node-0", "exited", 143))
    failing = NodeStatus("node-0", container("node-0", "exited", 143), "", halted=True)
    assert outside.lost == "killed by SIGTERM from outside kdist" and not outside.failed
    assert failing.lost == "" and failing.failed
    assert status_of(failing).failed_nodes == [failing]
    assert backend._purpose(backend.FAILING) == "" and backend._purpose(backend.KILLED)


def test_oom_is_ranked_first_and_peer_errors_last() -> None:
    oom = NodeStatus("node-1", container("node-1", "exited", 137, oom_killed=True,
                                         finished_at="2"))
    real = NodeStatus("node-0", container("node-0", "exited", 1, finished_at="3"))
    peer = NodeStatus("node-2", container("node-2", "exited", 1, finished_at="1"))
    items = [(peer, (["Connection reset by peer"], 1)), (real, (["RuntimeError: x"], 1)),
             (oom, (["?"], 137))]
    assert min(items, key=backend._cause_rank)[0] is oom
    assert min(items[:2], key=backend._cause_rank)[0] is real


def test_status_table_and_json() -> None:
    status = status_of(NodeStatus("node-0", container("node-0", "exited", 0, restarts=1)),
                       NodeStatus("node-1", container("node-1", "exited", 137), backend.KILLED),
                       NodeStatus("node-2", None, standby=True))
    state = to_state(status, "job", 2)
    table = format_state(state).splitlines()
    assert table[0] == "job job (project job): succeeded: exit code 0"
    assert table[1].split() == ["NODE", "STATE", "EXIT", "RESTARTS", "NOTE"]
    assert table[2].split() == ["node-0", "exited", "0", "1"]
    assert table[3].split()[:4] == ["node-1", "exited", "137", "0"] and "kdist kill" in table[3]
    assert table[4].split()[:2] == ["node-2", "not"] and "standby" in table[4]
    data = state_dict(state)
    assert (data["target"], data["phase"], data["exit_code"]) == ("compose", "succeeded", 0)
    assert data["nodes"][2] == {"name": "node-2", "state": "not created", "running": False,
                                "exit_code": None, "restarts": 0, "host": None,
                                "note": "standby (kdist scale starts it)"}
    assert data["nodes"][1]["note"] == backend.KILLED


def test_status_says_what_torchruns_agents_logged() -> None:
    """Rounds, restarts, world sizes and members from real node logs (node-1 killed)."""
    from kdist.progress import RunProgress

    agents = RunProgress()
    assert format_torchrun(agents) == "torchrun: no rendezvous round completed yet"
    folder = Path(__file__).parent / "fixtures" / "torchrun" / "node-lost"
    for index in range(3):
        for line in (folder / f"node-{index}.log").read_text(encoding="utf-8").splitlines():
            agents.observe(index, line)
    assert format_torchrun(agents) == ("torchrun: 2 rendezvous rounds, 1 restart, world sizes "
                                       "3 -> 2, members node-0, node-2")
    assert agents.torchrun_dict() == {"rounds": 2, "restarts": 1, "world_sizes": [3, 2],
                                      "members": ["node-0", "node-2"]}


# ---- project, argv, validation (no engine touched) ---------------------------------------------


def test_project_from_the_spec(tmp_path: Path) -> None:
    p = project_for(plan_of("cpu-gloo.yaml"), tmp_path)
    assert p.nodes == ("node-0", "node-1", "node-2") and p.store == "rdzv"
    assert (p.min_nodes, p.max_nodes, p.count) == (2, 3, 3)
    assert p.file == tmp_path.resolve() / ".kdist" / "compose" / "cifar-cpu" / "docker-compose.yaml"
    assert p.volume == "cifar-cpu_checkpoints"
    assert project_for(plan_of("smoke-node0.yaml"), tmp_path).store == ""


def test_a_snapshot_reads_the_logs_once_and_cuts_them_per_node(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job = ComposeJob(project_for(plan_of("cpu-gloo.yaml"), tmp_path), ENGINE)
    printed = ["node-0 | a", "node-1 | b", "node-0 | c", "rdzv   | d", "node-0 | e"]
    reads: list[tuple[object, ...]] = []

    def read(*args: object) -> list[str]:
        reads.append(args)
        return printed

    monkeypatch.setattr(job, "_read_logs", read)  # what `docker compose logs` printed
    with job.snapshot():
        assert list(job.logs()) == printed  # in the order docker compose printed them
        assert list(job.logs(services=["node-0"], tail=2)) == ["node-0 | c", "node-0 | e"]
        assert list(job.logs(services=["1"], tail=0)) == []
    assert reads == [(False, (), None, False)]  # one reading, of every service, in full


def test_compose_argv_names_the_project_file_and_directory(tmp_path: Path) -> None:
    job = ComposeJob(project_for(plan_of("cpu-gloo.yaml"), tmp_path), ENGINE)
    argv = job.compose("ps")
    assert argv[:2] == ["docker", "compose"] and argv[-1] == "ps"
    assert argv[argv.index("--project-name") + 1] == "cifar-cpu"
    assert argv[argv.index("--project-directory") + 1] == str(tmp_path.resolve())
    assert argv[argv.index("--profile") + 1] == render_compose.SCALE_PROFILE
    assert "--profile" not in job.compose("up", profile=False)


def test_scale_and_node_names_are_checked_before_docker_runs(tmp_path: Path) -> None:
    job = ComposeJob(project_for(plan_of("cpu-gloo.yaml"), tmp_path), ENGINE)
    with pytest.raises(UsageError, match=r"allows 2 to 3"):
        job.scale(4)
    with pytest.raises(UsageError, match=r"allows 2 to 3"):
        job.scale(1)
    assert job.resolve("1") == "node-1" and job.resolve("rdzv") == "rdzv"
    with pytest.raises(UsageError, match="has rdzv, node-0, node-1, node-2"):
        job.resolve("node-3")


def test_marks_survive_in_the_state_folder(tmp_path: Path) -> None:
    job = ComposeJob(project_for(plan_of("cpu-gloo.yaml"), tmp_path), ENGINE)
    assert job.marks() == {}
    job._mark(["node-2"], backend.KILLED)
    job._mark(["node-1"], backend.SCALED_DOWN)
    job._mark(["node-1"], None)
    assert job.marks() == {"node-2": backend.KILLED}
    assert json.loads((job.project.dir / backend.MARKS_FILE).read_text()) == job.marks()


# ---- GPU settings (cannot run here): structure of the rendered dict ------------------------------


def test_gpu_nodes_get_distinct_device_sets_and_nccl_env() -> None:
    plan = plan_of("gpu-nccl.yaml")
    services = render_compose.render(plan)["services"]
    nodes = {k: v for k, v in services.items() if k.startswith("node-")}
    assert len(nodes) == plan.spec.nodes.max == 4
    seen: set[str] = set()
    for name, svc in nodes.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        ids = device["device_ids"]
        assert len(ids) == len(set(ids)) == plan.spec.resources.gpu, name
        assert not seen & set(ids), f"{name} shares a GPU with another node"
        seen |= set(ids)
        env = svc["environment"]
        assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
        assert env["NCCL_DEBUG"] == "WARN"
        assert svc["shm_size"] == "8g"
        assert "--nproc-per-node 2" in svc["command"][2]
    assert "rdzv" in services and "deploy" not in services["rdzv"]


# ---- the CLI and the image's files ---------------------------------------------------------------


def test_compose_commands_have_help() -> None:
    for name in ("up", "down", "kill", "status", "logs", "scale"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
    logs = CliRunner().invoke(cli, ["logs", "--help"]).output
    assert "-f, --follow" in logs and "compose|k8s" in logs


def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "kdist.yaml"
    spec.write_text("name: x\nimage: i\nentrypoint: e.py\nnodes: 2\nresources: {memory: 4 GB}\n")
    result = CliRunner().invoke(cli, ["up", "-f", str(spec)])
    assert result.exit_code == 2 and "resources.memory" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_dockerfile_and_dockerignore() -> None:
    text = (ROOT / "trainers" / "Dockerfile").read_text()
    for needle in ("ARG BASE_IMAGE=python:3.11-slim", "FROM ${BASE_IMAGE}", "ARG TORCH_INDEX_URL=",
                   "--no-index --find-links /tmp/wheels", "--uid \"${UID}\"", "ARG UID=1000",
                   "WORKDIR /app", "COPY trainers/ /app/trainers/", "chown \"${UID}:${GID}\" /checkpoints",
                   "USER ${UID}:${GID}"):
        assert needle in text, needle
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", ".kdist", ".pytest_cache"} <= set(ignored)
    assert not any(p.startswith("wheels") for p in ignored)


def test_example_specs_use_the_default_image_tag() -> None:
    cpu = yaml.safe_load((EXAMPLES / "cpu-gloo.yaml").read_text())
    assert cpu["image"] == "kdist-trainer:0.1.0"
    assert cpu["compose"]["build"] == {"context": ".", "dockerfile": "trainers/Dockerfile"}


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not installed")
def test_unreachable_engine_with_the_real_docker_cli(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    (tmp_path / "trainers").mkdir()  # the spec's entrypoint, checked before the engine
    (tmp_path / "trainers" / "train.py").write_text("")
    code = "from kdist.cli import main; main()"
    got = subprocess.run([sys.executable, "-c", code, "up", "-d", "-f",
                          str(EXAMPLES / "cpu-gloo.yaml")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 3
    assert got.stderr.startswith("kdist: the Docker engine is not running or not reachable")
    assert "Traceback" not in got.stderr
    assert not (tmp_path / ".kdist").exists(), "nothing is written when the engine is missing"
