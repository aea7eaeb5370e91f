"""Losing the standalone rendezvous store mid-run does not fail the job: real torchrun
processes (`kdist run`) and a real Docker Engine (`kdist up`, marked docker).

The store is killed from outside, as a crash would: its process under `kdist run`, its
container under `kdist up`. The job still ends with exit 0 and resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_compose_e2e import Attached, Job, image  # noqa: F401  (image: a fixture)
from test_local_run import KDIST, ROOT, check_resumes, write_spec
from test_tutorial_e2e import tutorial_job, wait_for_line  # noqa: F401  (tutorial_job: a fixture)
from tutorial_logs import SAVED, assert_resumed_together

from kdist.plan import STORE_CODE


def store_pids(run_dir: Path) -> list[int]:
    """The run's standalone store: the process running STORE_CODE in the run folder."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and os.readlink(entry / "cwd") == str(run_dir)
                    and STORE_CODE.encode() in (entry / "cmdline").read_bytes()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def event_of(line: str) -> dict[str, Any] | None:
    if "KDIST_METRIC " not in line:
        return None
    return dict(json.loads(line.split("KDIST_METRIC ", 1)[1]))


@pytest.mark.torch
def test_kdist_run_survives_losing_the_store(tmp_path: Path) -> None:
    """SIGKILL the store after step 8 (checkpoint at 8): every node's agent fails, kdist starts
    the store again on its port and the nodes again, and the job resumes at step 9."""
    spec = write_spec(tmp_path, "storeloss", "2",
                      ["--synthetic", "--max-steps", "24", "--checkpoint-every", "4",
                       "--batch-size", "16", "--step-sleep", "0.3"])
    run_dir = (tmp_path / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "-f", str(spec), "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    lines: list[str] = []
    killed: list[int] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            event = event_of(line)
            if event is None:
                continue
            (after if killed else before).append(event)
            if not killed and event == {**event, "event": "checkpoint", "step": 8}:
                killed = store_pids(run_dir)
                assert len(killed) == 1, killed
                os.kill(killed[0], signal.SIGKILL)
        code = proc.wait(timeout=180)
    finally:
        proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    output = "".join(lines)
    assert code == 0, output[-4000:] + stderr[-2000:]
    assert killed, "the job ended before its checkpoint at step 8"
    assert "kdist | store-lost code=-9" in output
    assert "kdist | store-restart" in output
    assert output.count("kdist | node-restart") == 2, output[-4000:]
    starts = [e for e in after if e["event"] == "start"]
    assert starts and starts[0]["resumed_step"] >= 8, after
    check_resumes(before + after, 24)
    assert store_pids(run_dir) == []
    assert "succeeded: 2 nodes, final step 24" in stderr


def kill_store_process(project: str) -> None:
    """SIGKILL the store process inside the project's `rdzv` container (as an OOM kill would);
    `docker kill` would not do: Docker never restarts a container it was told to kill."""
    listed = subprocess.run(["docker", "ps", "-q", "--filter",
                             f"label=com.docker.compose.project={project}", "--filter",
                             "label=com.docker.compose.service=rdzv"],
                            capture_output=True, text=True, timeout=60, check=True)
    [container] = listed.stdout.split()
    code = ("import os\n"
            "for p in (x for x in os.listdir('/proc') if x.isdigit()):\n"
            "    if int(p) not in (1, os.getpid()) and b'TCPStore' in "
            "open(f'/proc/{p}/cmdline', 'rb').read():\n"
            "        os.kill(int(p), 9); print('killed', p)\n")
    killed = subprocess.run(["docker", "exec", container, "python3", "-c", code],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0 and killed.stdout.startswith("killed"), killed


def restart_counts(project: str) -> dict[str, int]:
    listed = subprocess.run(["docker", "ps", "-aq", "--filter",
                             f"label=com.docker.compose.project={project}"],
                            capture_output=True, text=True, timeout=60, check=True)
    inspected = subprocess.run(["docker", "inspect", "--format",
                                '{{index .Config.Labels "com.docker.compose.service"}} '
                                "{{.RestartCount}}", *listed.stdout.split()],
                               capture_output=True, text=True, timeout=60, check=True)
    return {service: int(count) for service, count in
            (line.split() for line in inspected.stdout.splitlines())}


@pytest.mark.docker
@pytest.mark.chaos
def test_kdist_up_survives_losing_the_store(tutorial_job: Job) -> None:  # noqa: F811
    """The tutorial under `kdist up`: the `rdzv` container's store dies after the snapshot of
    epoch 4; Docker restarts `rdzv` and the failed nodes (their restart policies), every rank
    resumes from one snapshot and `kdist up` exits 0."""
    j = tutorial_job
    up = Attached(j)
    wait_for_line(up, f"Epoch 4 | {SAVED}")
    kill_store_process(j.name)
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert_resumed_together(out, ranks=3)  # nodes "2:3": count is 3
    counts = restart_counts(j.name)
    assert counts["rdzv"] >= 1 and counts["node-0"] >= 1 and counts["node-1"] >= 1, counts
    assert json.loads(j("status", "-o", "json").stdout)["phase"] == "succeeded"
