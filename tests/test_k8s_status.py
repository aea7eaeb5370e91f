"""kdist.targets.k8s.status over recorded API objects (tests/fixtures/k8s_api): phase and per-pod rows."""

from __future__ import annotations

import json
from typing import Any

from conftest import FIXTURES

from kdist.targets.k8s.status import K8sJobStatus, job_status, pod_row, to_state

API = FIXTURES / "k8s_api"


def load(name: str) -> Any:
    return json.loads((API / f"{name}.json").read_text(encoding="utf-8"))


def status(sts: str | None, pods: str, nodes_min: int = 2, nodes_max: int = 3,
           record: str | None = None) -> K8sJobStatus:
    return job_status("cifar-cpu", "default", nodes_min, nodes_max,
                      load(sts) if sts else None, load(pods)["items"],
                      load(record) if record else None)


def summary(s: K8sJobStatus) -> str:
    return to_state(s, "kind-kdist").summary()


def test_running() -> None:
    s = status("statefulset-running", "pods-running")
    assert (s.phase, s.running, s.replicas, s.finished) == ("running", 3, 3, False)
    assert [(n.name, n.index, n.state, n.ready, n.node_name) for n in s.nodes] == [
        ("cifar-cpu-0", 0, "Running", True, "kdist-worker"),
        ("cifar-cpu-1", 1, "Running", True, "kdist-worker2"),
        ("cifar-cpu-2", 2, "Running", True, "kdist-worker")]
    assert [(p.name, p.component, p.index, p.state) for p in s.store] == [
        ("cifar-cpu-rdzv-6b8f9d7c5-x4k2p", "rdzv", None, "Running")]
    assert summary(s) == "running: 3 of 3 nodes running (min 2)"


def test_pending_with_unschedulable_and_image_pull_reasons() -> None:
    s = status("statefulset-pending", "pods-pending")
    assert (s.phase, s.running) == ("pending", 1)
    unsched, pull = s.nodes[1], s.nodes[2]
    assert (unsched.phase, unsched.state, unsched.reason, unsched.node_name) == (
        "Pending", "Pending", "Unschedulable", "")
    assert unsched.message.startswith("0/3 nodes are available: 1 node(s) had untolerated taint")
    assert (pull.state, pull.reason, pull.ready) == ("Waiting", "ImagePullBackOff", False)
    assert "pull access denied" in pull.message
    assert summary(s) == ("pending: 1 of 3 nodes running (needs 2); cifar-cpu-1 Unschedulable, "
                           "cifar-cpu-2 ImagePullBackOff")


def test_a_restarting_node_is_shown_per_pod_while_the_job_runs() -> None:
    s = status("statefulset-running", "pods-restarting")
    assert (s.phase, s.running) == ("running", 2)  # 2 of 3 are enough with nodes 2:3
    crash, oom = s.nodes[1], s.nodes[2]
    assert (crash.state, crash.reason, crash.restarts, crash.last_exit_code, crash.last_reason) == (
        "Waiting", "CrashLoopBackOff", 3, 1, "Error")
    assert crash.restarting
    assert crash.note().startswith("CrashLoopBackOff: back-off 40s restarting failed container=node")
    assert crash.note().endswith("; last exit 1 (Error)")
    assert (oom.state, oom.restarts, oom.last_exit_code, oom.last_reason) == (
        "Running", 1, 137, "OOMKilled")
    assert oom.note() == "last exit 137 (OOMKilled)"
    assert summary(s) == ("running: 2 of 3 nodes running (min 2); cifar-cpu-1 CrashLoopBackOff, "
                           "cifar-cpu-2 restarted 1x (last exit 137)")


def test_restarting_below_min_is_pending() -> None:
    s = status("statefulset-running", "pods-restarting", nodes_min=3, nodes_max=3)
    assert s.phase == "pending"


def test_succeeded_from_the_record_when_scaled_to_zero() -> None:
    s = status("statefulset-succeeded", "pods-finished", record="outcome-succeeded")
    assert (s.phase, s.exit_code, s.finished_by, s.replicas, s.finished) == (
        "succeeded", 0, "cifar-cpu-1", 0, True)
    assert [(n.name, n.state) for n in s.nodes] == [("cifar-cpu-0", "Terminating")]
    assert summary(s) == "succeeded: exit code 0; reported by cifar-cpu-1, 1 pods stopping"
    gone = status("statefulset-succeeded", "pods-empty", record="outcome-succeeded")
    assert (gone.phase, gone.nodes, summary(gone)) == (
        "succeeded", (), "succeeded: exit code 0; reported by cifar-cpu-1")


def test_failed_from_the_record() -> None:
    s = status("statefulset-failed", "pods-empty", record="outcome-failed")
    assert (s.phase, s.exit_code, s.finished_by) == ("failed", 1, "cifar-cpu-0")
    assert summary(s) == "failed: exit code 1; reported by cifar-cpu-0"


def test_not_found_without_a_statefulset() -> None:
    s = status(None, "pods-empty")
    assert (s.phase, s.replicas, s.finished) == ("not-started", 0, False)
    assert summary(s) == "not-started: nothing runs; no StatefulSet cifar-cpu in namespace default"


def test_an_unknown_outcome_value_is_ignored() -> None:
    record = load("outcome-succeeded")
    record["data"] = {"outcome": "Maybe"}
    s = job_status("cifar-cpu", "default", 2, 3, load("statefulset-running"),
                   load("pods-running")["items"], record)
    assert s.phase == "running"


def test_evicted_pod_reason_comes_from_pod_status() -> None:
    pod = {"metadata": {"name": "cifar-cpu-2", "labels": {"app.kubernetes.io/component": "node"}},
           "status": {"phase": "Failed", "reason": "Evicted",
                      "message": "The node was low on resource: memory."}}
    row = pod_row("cifar-cpu", pod)
    assert (row.index, row.state, row.reason, row.message) == (
        2, "Failed", "Evicted", "The node was low on resource: memory.")
