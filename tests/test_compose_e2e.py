"""`kdist up/down/logs/status/scale/kill` against the real Docker Engine (marked `docker`).

Each test runs its own small job (a unique project name) through the real CLI, from the
repository root (the build context of trainers/Dockerfile), and removes it with
`kdist down --volumes`. The image is built once per session from trainers/Dockerfile (torch from
PyPI, or from wheels/ when it holds them; Docker's layer cache makes later builds quick).
Skipped, with the reason, only when no Docker Engine answers `docker info`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

IMAGE = "kdist-trainer:0.1.0"
EXAMPLES = ROOT / "trainers" / "examples"
KDIST = [sys.executable, "-c",
         "import sys; from kdist.cli import main; sys.argv[0] = 'kdist'; main()"]
METRIC_RE = re.compile(r"^(?P<node>\S+)\s*\| (?P<ts>\S+) KDIST_METRIC (?P<json>\{.*\})\s*$")

pytestmark = pytest.mark.docker


def _engine_problem() -> str:
    """Why no Docker Engine can be used here ("" when one answers)."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"`docker info` failed: {(info.stderr or info.stdout).strip()[:200]}"
    return ""


@pytest.fixture(scope="session")
def image() -> str:
    """The trainer image, built once per session (Docker's cache makes later builds quick)."""
    problem = _engine_problem()
    if problem:
        pytest.skip(f"no Docker Engine: {problem}")
    build = subprocess.run(["docker", "build", "-t", IMAGE, "-f", "trainers/Dockerfile", "."],
                           cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, f"docker build failed:\n{build.stderr[-3000:]}"
    return IMAGE


def kdist(*args: str, timeout: float = 300,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KDIST, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def counting_docker(folder: Path) -> tuple[dict[str, str], Path]:
    """An environment whose `docker` is the real one behind a script that logs each call."""
    real, log = shutil.which("docker"), folder / "docker-calls.log"
    assert real is not None
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "docker"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, log


class Job:
    """A small job spec with a unique name, written to tmp_path; `down --volumes` at the end."""

    def __init__(self, tmp_path: Path, label: str, base: str = "cpu-gloo.yaml", **fields: Any):
        spec = yaml.safe_load((EXAMPLES / base).read_text())
        spec.update(fields, name=f"e2e-{label}-{uuid.uuid4().hex[:6]}")
        spec = {k: v for k, v in spec.items() if v is not None}  # None: drop the key
        self.name = str(spec["name"])
        self.file = tmp_path / f"{self.name}.yaml"
        self.file.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.attached: Attached | None = None

    def __call__(self, command: str, *args: str, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        option = "--file" if command == "logs" else "-f"
        return kdist(command, option, str(self.file), *args, timeout=timeout, env=env)

    def docker_objects(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.name}"
        out = {}
        for kind, argv in {"containers": ["ps", "-a"], "networks": ["network", "ls"],
                           "volumes": ["volume", "ls"]}.items():
            listed = subprocess.run(["docker", *argv, "-q", "--filter", label],
                                    capture_output=True, text=True, check=True)
            out[kind] = listed.stdout.split()
        return out

    def read_volume(self, pattern: str) -> list[str]:
        """Files from the checkpoint volume, read with a throwaway container."""
        got = subprocess.run(["docker", "run", "--rm", "-v", f"{self.name}_checkpoints:/c", IMAGE,
                              "sh", "-c", f"cat /c/{pattern}"],
                             capture_output=True, text=True, check=True)
        return got.stdout.splitlines()

    def metrics(self) -> list[dict[str, Any]]:
        """Every KDIST_METRIC of every node, ordered by the engine's timestamps."""
        logs = self("logs", "--timestamps")
        assert logs.returncode == 0, logs.stderr
        rows = []
        for line in logs.stdout.splitlines():
            m = METRIC_RE.match(line)
            if m:
                rows.append((_ts(m["ts"]), {**json.loads(m["json"]), "node": m["node"]}))
        return [r for _, r in sorted(rows, key=lambda r: r[0])]

    def teardown(self) -> None:
        if self.attached is not None and self.attached.proc.poll() is None:
            self.attached.proc.terminate()  # a failed test's `kdist up`: it stops the job
            self.attached.proc.wait(timeout=120)
        self("down", "--volumes")
        shutil.rmtree(ROOT / ".kdist" / "compose" / self.name, ignore_errors=True)


def _ts(stamp: str) -> tuple[str, float]:
    """RFC 3339 with nanoseconds (trailing zeros dropped) -> a sortable key."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return head, float(f"0.{frac or 0}")


class Attached:
    """`kdist up` (attached) in the background, its stdout collected line by line."""

    def __init__(self, job: Job) -> None:
        self.stderr = job.file.with_suffix(".stderr")
        with self.stderr.open("w") as err:  # a file, so a chatty build can never block the pipe
            self.proc = subprocess.Popen([*KDIST, "up", "-f", str(job.file)], cwd=ROOT, text=True,
                                         stdout=subprocess.PIPE, stderr=err)
        job.attached = self
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(m) for m in _metrics(self.lines)):
                return
            assert self.proc.poll() is None, "kdist up ended early:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.3)
        raise AssertionError(f"no such metric within {timeout:.0f} s:\n" + "\n".join(self.lines[-30:])
                             + "\n" + self.stderr.read_text()[-2000:])

    def finish(self, timeout: float = 400) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return code, "\n".join(self.lines), self.stderr.read_text()


def _metrics(lines: list[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        _, sep, payload = line.partition("KDIST_METRIC ")
        if sep:
            yield json.loads(payload)


@pytest.fixture
def job(tmp_path: Path, image: str) -> Iterator[Callable[..., Job]]:
    made: list[Job] = []

    def make(label: str, base: str = "cpu-gloo.yaml", **fields: Any) -> Job:
        made.append(Job(tmp_path, label, base, **fields))
        return made[-1]

    yield make
    for j in made:
        j.teardown()


def train_args(steps: int, sleep: float = 0.0, *extra: str) -> list[str]:
    args = ["--synthetic", "--max-steps", str(steps), "--checkpoint-every", "10",
            "--batch-size", "16", *extra]
    return args + (["--step-sleep", str(sleep)] if sleep else [])


# ---- tests -------------------------------------------------------------------------------------


def test_two_nodes_finish_with_identical_parameters(job: Callable[..., Job]) -> None:
    j = job("two", nodes=2, args=train_args(40, 0, "--dump-params", "/checkpoints/params"))
    up = j("up")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert f"kdist: job {j.name} succeeded" in up.stderr
    assert re.search(r"^node-0 \| KDIST_METRIC", up.stdout, re.M)
    assert re.search(rf"^job {j.name} \(project {j.name}\): succeeded", up.stdout, re.M)
    dumps = [json.loads(line) for line in j.read_volume("params.rank*.json")]
    assert sorted(d["rank"] for d in dumps) == [0, 1]
    assert {d["step"] for d in dumps} == {40} and {d["world_size"] for d in dumps} == {2}
    assert len({d["param_sha256"] for d in dumps}) == 1, dumps
    status = j("status", "-o", "json")
    assert json.loads(status.stdout)["phase"] == "succeeded"
    some = j("logs", "--node", "0", "--node", "rdzv")
    assert some.returncode == 0, some.stderr
    prefixes = {line.split(" | ", 1)[0].strip() for line in some.stdout.splitlines()}
    assert prefixes == {"node-0", "rdzv"}, prefixes


@pytest.mark.parametrize("victim", ["node-2", pytest.param("node-0", marks=pytest.mark.chaos)])
def test_killed_node_others_resume_from_checkpoint(job: Callable[..., Job], victim: str) -> None:
    """node-0 too: with the standalone store (the default) losing node 0 is survivable."""
    j = job(f"kill{victim[-1]}", nodes="2:3", args=train_args(50, 0.25))
    up = Attached(j)
    up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= 15)
    killed = j("kill", victim)
    assert killed.returncode == 0, killed.stderr
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert_resumed(j, world_size=2)
    nodes = {n["name"]: n for n in json.loads(j("status", "-o", "json").stdout)["nodes"]}
    assert nodes[victim]["note"] == "killed by kdist kill"
    assert nodes[victim]["exit_code"] == 137


def assert_resumed(j: Job, world_size: int, steps: int = 50) -> None:
    """The last restart's ranks resumed from the newest checkpoint, together, and finished."""
    metrics = j.metrics()
    # an agent restarted by a peer's failure says restart 0: a resumed step shows the restart too
    starts = [i for i, m in enumerate(metrics)
              if m["event"] == "start" and (m["restart"] >= 1 or m["resumed_step"] > 0)]
    assert starts, "no restart after the loss"
    last = starts[-1]
    resumed = metrics[last]["resumed_step"]
    checkpoints = [m["step"] for m in metrics[:last] if m["event"] == "checkpoint"]
    assert resumed == max(checkpoints) >= 10
    assert {m["resumed_step"] for m in metrics[last:] if m["event"] == "start"} == {resumed}
    first_step = next(m for m in metrics[last:] if m["event"] == "step")
    assert first_step["step"] == resumed + 1
    done = [m for m in metrics if m["event"] == "done"]
    assert done and done[-1]["step"] == steps and done[-1]["world_size"] == world_size


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def status_of(j: Job) -> dict[str, Any]:
    got = j("status", "-o", "json")
    assert got.returncode in (0, 1), got.stderr
    return dict(json.loads(got.stdout))


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(1)


def logged_step(j: Job, step: int) -> bool:
    return any(m["event"] == "step" and m["step"] >= step for m in j.metrics())


@pytest.mark.chaos
@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_a_node_docker_killed_from_outside_is_lost_and_the_job_succeeds(
        job: Callable[..., Job], detached: bool) -> None:
    """`docker kill` (an operator, a script, not kdist): Docker disables the restart policy of a
    container it was told to kill, so node-1 stays down; the other two finish the job."""
    j = job("outside" + "d" * detached, nodes="2:3", args=train_args(50, 0.25))
    if detached:
        started = j("up", "-d")
        assert started.returncode == 0, started.stderr
        wait_until(lambda: logged_step(j, 15), 300, "step 15")
    else:
        up = Attached(j)
        up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= 15)
    killed = docker("kill", f"{j.name}-node-1-1")
    assert killed.returncode == 0, killed.stderr
    if detached:
        wait_until(lambda: status_of(j)["phase"] != "running", 300, "the job ends")
    else:
        code, out, _ = up.finish()
        assert code == 0, out[-3000:]
        assert ("kdist | node-1 lost (killed by SIGKILL, no error in its log); 2 of 3 nodes go "
                "on (min 2)") in out
    assert_resumed(j, world_size=2)
    state = status_of(j)
    assert state["phase"] == "succeeded", state
    nodes = {n["name"]: n for n in state["nodes"]}
    assert nodes["node-1"]["note"] == "lost: killed by SIGKILL from outside kdist"
    assert nodes["node-1"]["exit_code"] == 137
    # every container of the job ends with it: `rdzv` exits once no node is connected
    wait_until(lambda: not status_of(j)["store"][0]["running"], 90, "rdzv stops")
    assert status_of(j)["store"][0]["exit_code"] == 0


@pytest.mark.chaos
def test_losing_a_node_below_min_fails_the_job_at_once_and_says_so(job: Callable[..., Job]) -> None:
    """nodes: 2 and node-1 killed through Docker (no restart): the job cannot go on."""
    j = job("belowmin", nodes=2, args=train_args(200, 0.25))
    up = Attached(j)
    up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= 15)
    assert docker("kill", f"{j.name}-node-1-1").returncode == 0
    code, out, err = up.finish()  # how soon: benchmarks/bench_compose.py --outside
    assert code == 137, out[-2000:] + err[-2000:]
    assert ("kdist | node-1 lost (killed by SIGKILL, no error in its log); 1 of 2 nodes left, "
            "fewer than nodes.min=2: the job cannot go on") in out
    assert (f"kdist: job {j.name} failed: node-1 lost (killed by SIGKILL from outside kdist); "
            "fewer than nodes.min=2 nodes were left to finish it") in err
    assert status_of(j)["phase"] == "failed"


@pytest.mark.chaos
def test_a_node_whose_process_is_killed_on_the_host_is_restarted_and_rejoins(
        job: Callable[..., Job]) -> None:
    """SIGKILL to node-1's init process from the host, as the OOM killer or a crash would end
    it: its restart policy brings the container back and it rejoins at full size."""
    j = job("hostkill", nodes="2:3", args=train_args(60, 0.25))
    up = Attached(j)
    up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= 15)
    pid = docker("inspect", "--format", "{{.State.Pid}}", f"{j.name}-node-1-1").stdout.strip()
    assert int(pid) > 0
    os.kill(int(pid), signal.SIGKILL)
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert "kdist | node-1 lost (killed by SIGKILL, no error in its log)" in out
    assert_resumed(j, world_size=3, steps=60)
    restarts = docker("inspect", "--format", "{{.RestartCount}}", f"{j.name}-node-1-1")
    assert restarts.stdout.strip() == "1"
    assert status_of(j)["phase"] == "succeeded"


@pytest.mark.chaos
def test_a_rank_out_of_memory_is_named_and_the_job_succeeds(job: Callable[..., Job]) -> None:
    """The last rank allocates past its container's memory limit once: the kernel kills it,
    kdist names the OOM kill, torchrun restarts the workers and the job finishes."""
    j = job("oom", nodes="2:3", resources={"cpu": "1", "memory": "1Gi", "shm": "256Mi"},
            args=train_args(40, 0.2, "--hog-at-step", "15"))
    up = Attached(j)
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert re.search(r"kdist \| node-\d: a worker \(rank 2\) was OOM-killed at the container's "
                     r"memory limit \(resources.memory: 1Gi\)", out), out[-3000:]
    assert_resumed(j, world_size=3, steps=40)
    assert status_of(j)["phase"] == "succeeded"


def test_scale_up_joins_next_round_and_scale_down_stops_highest(job: Callable[..., Job]) -> None:
    j = job("scale", nodes={"min": 2, "max": 3, "count": 2}, args=train_args(80, 0.25))
    up = Attached(j)
    up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= 8)
    assert json.loads(j("status", "-o", "json").stdout)["nodes"][2]["state"] == "not created"
    scaled = j("scale", "3")
    assert scaled.returncode == 0 and "started node-2" in scaled.stderr, scaled.stderr
    up.wait_for(lambda m: m.get("event") == "step" and m["world_size"] == 3)
    first3 = next(m["step"] for m in _metrics(up.lines) if m.get("world_size") == 3
                  and m["event"] == "step")
    up.wait_for(lambda m: m.get("event") == "step" and m["step"] >= first3 + 5)
    shrunk = j("scale", "2")
    assert shrunk.returncode == 0 and "stopped node-2" in shrunk.stderr, shrunk.stderr
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    done = [m for m in _metrics(up.lines) if m["event"] == "done"]
    assert done and done[-1]["step"] == 80 and done[-1]["world_size"] == 2
    nodes = json.loads(j("status", "-o", "json").stdout)["nodes"]
    assert nodes[2]["note"] == "stopped by kdist scale"
    outside = j("scale", "4")
    assert outside.returncode == 2 and "allows 2 to 3" in outside.stderr


def test_down_of_a_job_that_never_ran_says_so(job: Callable[..., Job]) -> None:
    down = job("never")("down")
    assert down.returncode == 0
    assert re.search(r"^kdist: nothing to remove: job e2e-never-\w+ has no containers and no "
                     r"checkpoint volume$", down.stderr, re.M), down.stderr


def test_down_removes_containers_and_network_and_volumes_only_when_asked(
        job: Callable[..., Job]) -> None:
    """The node0-store smoke example, end to end, then `down` and `down --volumes`."""
    j = job("down", base="smoke-node0.yaml")
    up = j("up")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert '"event":"smoke","world_size":2' in up.stdout
    objects = j.docker_objects()
    assert objects["containers"] and objects["networks"] and objects["volumes"]
    down = j("down")
    assert down.returncode == 0, down.stderr
    objects = j.docker_objects()
    assert objects["containers"] == [] and objects["networks"] == []
    assert len(objects["volumes"]) == 1, "plain `down` keeps the checkpoint volume"
    down = j("down", "--volumes")
    assert down.returncode == 0, down.stderr
    assert j.docker_objects() == {"containers": [], "networks": [], "volumes": []}


def test_failing_job_exits_nonzero_with_the_root_cause(job: Callable[..., Job]) -> None:
    j = job("fail", nodes=2, max_restarts=0, args=train_args(20, 0, "--fail-at-step", "3"))
    up = j("up")
    assert up.returncode == 1, up.stderr[-3000:]
    first = next(line for line in up.stderr.splitlines() if line.startswith("kdist: job"))
    assert "root cause on node-0: RuntimeError: injected failure at step 3" in first, first
    assert "Traceback (most recent call last)" not in up.stderr.split("traceback :")[0]
    env, calls = counting_docker(j.file.parent / "shim")
    status = json.loads(j("status", "-o", "json", env=env).stdout)
    assert (status["phase"], status["root_cause"]["node"]) == ("failed", "node-0")
    assert status["root_cause"]["exception"] == "RuntimeError: injected failure at step 3"
    # one snapshot: after the engine check (docker info, compose version), one ps, one inspect
    # and one logs serve the state, the torchrun summary and the root cause
    made = calls.read_text().splitlines()
    job_calls = [next(w for w in ("ps", "inspect", "logs") if w in line.split()) for line in made
                 if not line.startswith(("info ", "compose version"))]
    assert job_calls == ["ps", "inspect", "logs"], made
    table = j("status").stdout  # `kdist up -d` users see the cause in the table's last lines
    assert "root cause on node-0: RuntimeError: injected failure at step 3" in table, table


def test_a_failure_certain_to_repeat_exits_with_the_workers_code(job: Callable[..., Job]) -> None:
    """With restarts left, the same error on the retry makes the job hopeless: kdist stops the
    nodes (the failing one too, so its container ends with 143) and exits with the worker's
    own exit code, 1, as the root cause says."""
    j = job("again", nodes=2, max_restarts=1, args=train_args(20, 0, "--fail-at-step", "3"))
    up = j("up")
    assert up.returncode == 1, up.stderr[-3000:]
    assert "stopping the other nodes" in up.stderr, up.stderr[-3000:]
    status = json.loads(j("status", "-o", "json").stdout)
    assert status["root_cause"]["exception"] == "RuntimeError: injected failure at step 3"
    assert status["root_cause"]["exit_code"] == 1


def test_tutorial_trainer_raising_gets_the_same_root_cause_as_kdist_run(
        job: Callable[..., Job]) -> None:
    """No @record, no KDIST_METRIC: kdist.torchlog reads rank 0's `[rank0]:` traceback from the
    container's log, as for `kdist run` (tests/test_local_run.py). No snapshot is saved before
    the raise (save_every 10), so the image's read-only /app does not matter here."""
    j = job("tutraise", base="tutorial.yaml", nodes=2, max_restarts=0,
            args=["30", "10", "--epoch-sleep", "0.5", "--raise-at", "2"])
    up = j("up")
    assert up.returncode == 1, up.stderr[-3000:]
    lines = up.stderr.splitlines()
    first = next(line for line in lines if line.startswith("kdist: job"))
    assert re.search(r"root cause on node-[01]: RuntimeError: tutorial trainer: deliberate failure "
                     r"at epoch 2$", first), first
    at = lines.index(first)
    assert lines[at + 1] == ("  rank 0 exited with code 1: RuntimeError: tutorial trainer: "
                             "deliberate failure at epoch 2"), lines[at:]
    assert any('raise RuntimeError(f"tutorial trainer' in line for line in lines[at:])
    assert not re.search(r"^node-\d\s*\| [IWE]\d{4} ", up.stdout, re.M)  # agent lines: logs only
    status = json.loads(j("status", "-o", "json").stdout)
    assert status["root_cause"]["exception"] == ("RuntimeError: tutorial trainer: deliberate "
                                                 "failure at epoch 2")  # no @record needed
    agents = status["torchrun"]
    assert (agents["rounds"], agents["restarts"], agents["world_sizes"]) == (1, 0, [2])
    assert sorted(agents["members"]) == ["node-0", "node-1"]  # in group-rank order
    assert re.search(r"^torchrun: 1 rendezvous round, 0 restarts, world sizes 2, members "
                     r"node-[01], node-[01]$", j("status").stdout, re.M)


def test_missing_image_is_a_clear_error(job: Callable[..., Job]) -> None:
    j = job("noimage", nodes=2, image="kdist-e2e-missing:0.0.0", compose=None)
    up = j("up", "--no-build", timeout=120)
    assert up.returncode == 1
    assert "image kdist-e2e-missing:0.0.0 is not on this machine" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr
