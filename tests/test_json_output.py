"""`--output json` of `kdist run`, `kdist up` and `kdist apply --wait`: JSON lines on stdout.

`run` starts real torchrun jobs (marked torch); `apply --wait` talks to the local HTTP stand-in
for the API server of test_k8s_backend; `up` runs a real Compose job when Docker answers
(marked docker) and its JSON formatting is also checked on log lines captured from real runs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner
from test_compose_e2e import Job, image, job, train_args  # noqa: F401 (fixtures)
from test_k8s_backend import CPU, PODS, STS, api, env, finishing, fixture, sequence  # noqa: F401 (fixtures)
from test_kube_client import FakeApi, Reply, status_body
from test_local_run import KDIST, ROOT, explain, write_spec
from test_progress import NODE0_LOG

from kdist.cli import KdistGroup, cli
from kdist.cli.compose import _follow_with_status
from kdist.cli.jsonlines import JsonLines, json_lines
from kdist.cli.run import run
from kdist.progress import RunProgress
from kdist.targets.compose.job import HOPELESS
from kdist.targets.k8s import job as backend
from kdist.torchlog import is_agent_line

SMOKE = ROOT / "trainers" / "examples" / "smoke-node0.yaml"
RESULT_KEYS = ["elapsed", "error", "exit_code", "job", "root_cause", "succeeded", "target", "type"]
CAUSE_KEYS = ["exception", "exit_code", "log", "node", "rank", "signal", "traceback"]


def records(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as JSON (fails on any other line), keys sorted, one result line last."""
    lines = stdout.splitlines()
    assert lines, "no output on stdout"
    parsed = [json.loads(line) for line in lines]
    for line, record in zip(lines, parsed, strict=True):
        assert isinstance(record, dict) and list(record) == sorted(record), line
    assert [r["type"] for r in parsed].count("result") == 1 and parsed[-1]["type"] == "result"
    assert sorted(parsed[-1]) == RESULT_KEYS
    return parsed


def of_type(recs: list[dict[str, Any]], kind: str, event: str = "") -> list[dict[str, Any]]:
    return [r for r in recs if r["type"] == kind and (not event or r["event"] == event)]


def kdist_json(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KDIST, "run", *args, "--output", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# ---- kdist run: real jobs ----------------------------------------------------------------------


@pytest.mark.torch
def test_run_json_lines_of_a_job_that_succeeds(tmp_path: Path) -> None:
    result = kdist_json("-f", str(SMOKE), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, explain(result)
    recs = records(result.stdout)
    final = recs[-1]
    assert (final["exit_code"], final["succeeded"], final["error"], final["root_cause"]) == (
        0, True, None, None)
    assert final["job"]["run_dir"] == str(tmp_path / "run") and final["job"]["final_step"] == 0
    assert [e["node"] for e in of_type(recs, "event", "start")] == [0, 1]
    assert sorted((e["node"], e["code"]) for e in of_type(recs, "event", "exit")) == [(0, 0), (1, 0)]
    statuses = of_type(recs, "status")
    assert len({tuple(s) for s in statuses}) == 1  # every snapshot has the same keys
    assert statuses[-1]["world_size"] == 2 and statuses[-1]["done"] and statuses[-1]["rounds"] == 1
    assert [n["state"] for n in statuses[-1]["nodes"]] == ["exited", "exited"]
    assert "KDIST_METRIC" not in result.stdout  # node logs are on stderr
    assert "node-0 | " in result.stderr and "succeeded: 2 nodes" in result.stderr


@pytest.mark.torch
def test_run_json_result_of_a_failing_job_holds_the_root_cause(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "failing", "2", ["--synthetic", "--max-steps", "20",
                                                 "--fail-at-step", "3", "--batch-size", "16"],
                      "max_restarts: 0\n")
    result = kdist_json("-f", str(spec), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1, explain(result)
    final = records(result.stdout)[-1]
    assert (final["exit_code"], final["succeeded"]) == (1, False)
    assert ("failed (torchrun exit code 1): rank 0 exited with code 1: RuntimeError: injected failure "
            "at step 3") in final["error"]
    cause = final["root_cause"]
    assert sorted(cause) == CAUSE_KEYS
    assert cause["node"] in ("node-0", "node-1") and (cause["rank"], cause["exit_code"]) == (0, 1)
    assert cause["traceback"][-1] == "RuntimeError: injected failure at step 3"
    assert cause["log"] == str(tmp_path / "run" / f"{cause['node']}.log")
    assert "kdist: node-" in result.stderr  # the usual message on stderr too


def test_run_json_reports_an_error_before_the_start(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "opts", "2:3", ["--synthetic"])
    group = KdistGroup(name="kdist", commands=[run])
    result = CliRunner().invoke(group, ["run", "-f", str(spec), "--nodes", "5", "-o", "json"])
    assert result.exit_code == 2
    (final,) = records(result.stdout)
    assert final["error"] == "--nodes 5 is outside nodes 2:3 of the spec"
    assert (final["exit_code"], final["job"], final["target"]) == (2, None, "local")
    assert "kdist: --nodes 5 is outside" in result.stderr


# ---- the console: snapshots only on change, metrics throttled ----------------------------------


def test_snapshots_are_printed_on_change_and_step_changes_throttled(
        capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    out = JsonLines("local", interval=1.0, clock=lambda: now[0])
    status = RunProgress()
    status.node(0)
    out.status(status, 0.1)
    out.status(status, 0.2)  # nothing changed: no line
    status.apply_metric({"event": "step", "step": 1, "loss": 2.5, "world_size": 1})
    out.status(status, 0.3)  # world size changed: at once
    status.apply_metric({"event": "step", "step": 2, "loss": 2.4})
    out.status(status, 0.4)  # only the step: held back
    out.event("kill", 0.5, {"node": 0, "signal": "SIGKILL"})  # flushes the held snapshot first
    status.apply_metric({"event": "step", "step": 3})
    now[0] = 0.6
    out.status(status, 0.6)  # held again ...
    out.result(0)  # ... and flushed before the result
    recs = records(capsys.readouterr().out)
    assert [(r["type"], r.get("step")) for r in recs] == [
        ("status", None), ("status", 1), ("status", 2), ("event", None), ("status", 3),
        ("result", None)]
    assert recs[3] == {"elapsed": 0.5, "event": "kill", "node": 0, "signal": "SIGKILL",
                       "target": "local", "type": "event"}


# ---- kdist up ----------------------------------------------------------------------------------


class Lines:
    """Only what _follow_with_status uses of a ComposeJob: the cleaned log lines, the nodes
    kdist stopped on purpose, and stop()."""

    def __init__(self, lines: list[str], marks: dict[str, str] | None = None) -> None:
        self.lines = lines
        self.marked = marks or {}
        self.stopped: list[str] = []
        self.project = SimpleNamespace(min_nodes=2)

    def follow(self) -> Iterator[str]:
        yield from self.lines

    def marks(self) -> dict[str, str]:
        return self.marked

    def stop(self, reason: str, failed: list[str]) -> None:
        self.stopped.append(reason)


def test_up_json_formatting_of_compose_log_lines() -> None:
    lines = [f"node-0 | {line}" for line in NODE0_LOG.splitlines()]
    lines += ['node-0 | KDIST_METRIC {"event":"step","step":4,"loss":1.5,"world_size":2}',
              "node-1 | (container exited with code 137)"]

    @click.command()
    @click.option("-v", "verbose", is_flag=True)
    @json_lines("compose")
    def follow(verbose: bool) -> None:
        fake = Lines(lines, {"node-1": "killed by kdist kill"})
        _follow_with_status(fake, verbose)  # type: ignore[arg-type]
        assert fake.stopped == []  # node-1 was killed on purpose: node-0 may go on

    result = CliRunner().invoke(follow, ["--output", "json"])
    assert result.exit_code == 0, result.output
    recs = records(result.stdout)
    assert of_type(recs, "event") == [{"code": 137, "elapsed": of_type(recs, "event")[0]["elapsed"],
                                       "event": "exit", "node": 1, "target": "compose",
                                       "type": "event"}]
    last = of_type(recs, "status")[-1]
    assert (last["target"], last["rounds"], last["world_size"], last["step"]) == ("compose", 2, 2, 4)
    assert [(n["node"], n["state"], n["exit_code"]) for n in last["nodes"]] == [
        (0, "barrier", None), (1, "failed", 137)]  # node-0 waits in the exit barrier
    assert "node-1 | (container exited with code 137)" in result.stderr
    text = CliRunner().invoke(follow, ["-v"])
    assert text.stdout.splitlines() == lines  # text, -v: the log lines on stdout, as before
    quiet = CliRunner().invoke(follow, []).stdout.splitlines()
    assert quiet == [x for x in lines if not is_agent_line(x.split(" | ", 1)[1])]
    assert len(quiet) < len(lines) / 2


def test_up_stops_the_nodes_once_the_job_cannot_succeed() -> None:
    """node-1 failed by itself while node-0 waits in torchrun's 300 s exit barrier."""
    lines = [f"node-0 | {line}" for line in NODE0_LOG.splitlines()]
    lines += ["node-1 | (container exited with code 1)", "node-0 | never read"]
    fake = Lines(lines)
    result = CliRunner().invoke(click.command()(
        lambda: _follow_with_status(fake)))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert fake.stopped == [HOPELESS]
    assert ("kdist: node-1 failed, so the job cannot succeed any more; node-0 was waiting in "
            "torchrun's exit barrier (up to 300 s); stopping the other nodes\n") in result.stderr
    assert "never read" not in result.stdout


STORE_LOST = """\
Traceback (most recent call last):
  File "/usr/lib/python3/torch/distributed/elastic/rendezvous/c10d_rendezvous_backend.py", \
line 114, in _call_store
    return getattr(self._store, store_op)(*args, **kwargs)
torch.distributed.DistNetworkError: Broken pipe

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/usr/local/bin/torchrun", line 8, in <module>
    sys.exit(main())
torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to the \
C10d store has failed. See inner exception for details.
(container exited with code 1)"""


def test_up_waits_for_a_node_that_only_lost_the_store() -> None:
    """Its restart policy brings a node back whose agent lost the store; one whose container
    exits 1 with nothing in its log still ends the job (the test above)."""
    lines = ["node-0 | [RANK0] Epoch 3 | Steps: 4"]
    lines += [f"node-1 | {line}" for line in STORE_LOST.splitlines()] + ["node-0 | still read"]
    fake = Lines(lines)
    result = CliRunner().invoke(click.command()(
        lambda: _follow_with_status(fake)))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    assert fake.stopped == [] and "still read" in result.stdout, result.stderr


def test_a_restarted_container_counts_as_running_again() -> None:
    """Docker restarted node-1 (its restart policy): its new lines make it a live node again,
    so a later recovered worker failure is not read as the node's end."""
    from kdist.cli.compose import _observe
    from kdist.progress import RunProgress

    status = RunProgress()
    _observe(status, 1, "(container exited with code 1)", None, 1.0)
    assert status.node(1).ended == "failed"
    _observe(status, 1, "[RANK1] Epoch 5 | Steps: 4", None, 2.0)
    assert status.node(1).ended == "" and status.node(1).alive


@pytest.mark.docker
def test_up_json_lines_of_a_real_compose_job(job: Callable[..., Job]) -> None:  # noqa: F811
    j = job("json", nodes=2, max_restarts=0, args=train_args(20, 0, "--fail-at-step", "3"))
    up = j("up", "--output", "json")
    assert up.returncode == 1, up.stderr[-3000:]
    recs = records(up.stdout)
    final = recs[-1]
    assert (final["exit_code"], final["target"], final["job"]["phase"]) == (1, "compose", "failed")
    assert final["root_cause"]["node"] == "node-0"
    assert any("RuntimeError: injected failure at step 3" in line
               for line in final["root_cause"]["traceback"])
    assert of_type(recs, "status") and "node-0 | " in up.stderr


# ---- kdist apply --wait ------------------------------------------------------------------------


def apply_json(environ: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli, ["apply", "-f", str(CPU), *args], env=environ)
    assert "Traceback" not in result.output
    return result


def test_apply_wait_json_lines(env: dict[str, str], api: FakeApi,  # noqa: F811
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    finishing(api, Reply(404, status_body(404, "NotFound", "not found")),
              Reply(200, fixture("statefulset-pending")),
              Reply(200, fixture("statefulset-pending")),
              Reply(200, fixture("statefulset-running")),
              Reply(200, fixture("statefulset-succeeded")), record=fixture("outcome-succeeded"))
    api.on("GET", PODS, sequence(Reply(200, fixture("pods-pending")),
                                 Reply(200, fixture("pods-pending")),
                                 Reply(200, fixture("pods-running")),
                                 Reply(200, fixture("pods-finished"))))
    result = apply_json(env, "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    recs = records(result.stdout)
    applied = [e["object"] for e in of_type(recs, "event", "applied")]
    assert applied[0] == "networkpolicy.networking.k8s.io/cifar-cpu"
    assert applied[-1] == "statefulset.apps/cifar-cpu"
    assert [s["phase"] for s in of_type(recs, "status")] == ["pending", "running", "succeeded"]
    assert "Unschedulable" in of_type(recs, "status")[0]["nodes"][1]["note"]
    final = recs[-1]
    assert (final["exit_code"], final["target"], final["job"]["phase"]) == (0, "k8s", "succeeded")
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert len(patches) == len(applied)  # the same requests as without json


def test_apply_wait_json_of_a_failed_job(env: dict[str, str], api: FakeApi,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    record = fixture("outcome-failed")
    record["data"]["exit-code"] = "3"
    finishing(api, Reply(404, status_body(404, "NotFound", "not found")),
              Reply(200, fixture("statefulset-failed")), record=record)
    api.on("GET", PODS, Reply(200, fixture("pods-empty")))
    result = apply_json(env, "--wait", "-o", "json")
    assert result.exit_code == 3
    final = records(result.stdout)[-1]
    assert final["error"].startswith("job cifar-cpu failed: torchrun exited with code 3 on ")
    assert final["root_cause"] == {"exit_code": 3, "log": None, "node": record["data"][
        "finished-by"], "rank": None, "signal": None, "traceback": [], "exception": None}


def test_apply_json_without_wait_prints_the_objects(env: dict[str, str], api: FakeApi,  # noqa: F811
                                                    tmp_path: Path) -> None:
    objects = json.loads(apply_json(env, "-o", "json").stdout)
    assert objects["kind"] == "List" and objects["items"][-1]["kind"] == "StatefulSet"
    dry = apply_json({"KUBECONFIG": str(tmp_path / "none")}, "--dry-run=client", "-o", "json")
    assert json.loads(dry.stdout)["items"][0]["kind"] == "NetworkPolicy"
    refused = apply_json(env, "--dry-run=client", "--wait", "-o", "json")
    assert refused.exit_code == 2
    assert records(refused.stdout)[-1]["error"] == "--wait needs a real apply (--dry-run=none)"
