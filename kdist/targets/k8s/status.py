"""A Kubernetes job's phase and per-pod rows from API objects, and their mapping into kdist's one
status model (kdist/status.py). Pure: dicts in, dataclasses out.

The phase (kdist.status.PHASES), in order of precedence:
- not-started: there is no StatefulSet named after the job.
- succeeded / failed: the job's record (ConfigMap <job>-outcome) holds an `outcome`, which the
  node whose torchrun exited writes before scaling the StatefulSet to 0 (so it holds when pods
  are gone).
- pending: fewer than nodes.min node containers are running (per-pod reasons say why:
  Unschedulable, ImagePullBackOff, CrashLoopBackOff, ...).
- running: otherwise. Restarting nodes (restartCount, last exit code) show in their rows.
A node out of retries leaves the job: its finish sidecar records `left.<pod>` (the exit code)
in the record, and it no longer counts as running.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kdist.node.finish import EXIT_CODE, FINISHED_BY, LEFT, OUTCOME
from kdist.status import (
    FAILED,
    NOT_STARTED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    JobState,
    NodeRow,
)

COMPONENT_LABEL = "app.kubernetes.io/component"
# the outcome the finishing node writes (kdist/node/finish.py) -> the job's phase
OUTCOMES = {"Succeeded": SUCCEEDED, "Failed": FAILED}


@dataclass(frozen=True)
class PodRow:
    """One pod: its phase, its main container's state, and why it is not running."""

    name: str
    component: str  # "node" or "rdzv"
    index: int | None  # the node's ordinal (<job>-N); None for the store
    phase: str  # the pod's status.phase
    state: str  # Running | Waiting | Terminated | Terminating | Pending | Failed | ...
    ready: bool
    restarts: int
    reason: str = ""  # CrashLoopBackOff, ImagePullBackOff, Unschedulable, OOMKilled, Evicted, ...
    message: str = ""
    exit_code: int | None = None  # of the current, terminated container
    last_exit_code: int | None = None  # of the previous run (lastState.terminated)
    last_reason: str = ""
    node_name: str = ""

    @property
    def running(self) -> bool:
        return self.state == "Running"

    @property
    def restarting(self) -> bool:
        return self.restarts > 0 or self.reason == "CrashLoopBackOff"

    def note(self) -> str:
        parts = []
        if self.reason:
            parts.append(f"{self.reason}: {self.message}" if self.message else self.reason)
        if self.last_exit_code is not None:
            why = f" ({self.last_reason})" if self.last_reason else ""
            parts.append(f"last exit {self.last_exit_code}{why}")
        return "; ".join(parts)


@dataclass(frozen=True)
class LeftNode:
    """A node that ran out of retries and left the job (`kdist.dev/left-<pod>`)."""

    pod: str
    exit_code: int | None


@dataclass(frozen=True)
class K8sJobStatus:
    name: str
    namespace: str
    phase: str
    nodes_min: int
    nodes_max: int
    replicas: int  # the StatefulSet's spec.replicas (0 once a finished job stopped itself)
    nodes: tuple[PodRow, ...] = ()
    store: tuple[PodRow, ...] = ()
    exit_code: int | None = None  # from kdist.dev/exit-code when finished
    finished_by: str = ""  # the pod that reported the outcome
    left: tuple[LeftNode, ...] = ()

    @property
    def running(self) -> int:
        gone = {n.pod for n in self.left}
        return sum(1 for n in self.nodes if n.running and n.name not in gone)

    @property
    def finished(self) -> bool:
        return self.phase in OUTCOMES.values()



def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _index(job: str, pod_name: str) -> int | None:
    prefix, _, ordinal = pod_name.rpartition("-")
    return int(ordinal) if prefix == job and ordinal.isdigit() else None


def _main_container(pod: dict[str, Any], component: str) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == component:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _unscheduled(status: dict[str, Any]) -> tuple[str, str]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or "")
    return "", ""


def _container_state(cs: dict[str, Any]) -> tuple[str, str, str, int | None]:
    """(state, reason, message, exit code) of a containerStatus."""
    state = cs.get("state") or {}
    if "running" in state:
        return "Running", "", "", None
    if "terminated" in state:
        t = state["terminated"] or {}
        return "Terminated", str(t.get("reason") or ""), str(t.get("message") or ""), \
            _int(t.get("exitCode"))
    w = state.get("waiting") or {}
    return "Waiting", str(w.get("reason") or ""), str(w.get("message") or ""), None


def pod_row(job: str, pod: dict[str, Any]) -> PodRow:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    component = str((meta.get("labels") or {}).get(COMPONENT_LABEL, ""))
    phase = str(status.get("phase") or "Pending")
    cs = _main_container(pod, component)
    if cs:
        state, reason, message, exit_code = _container_state(cs)
    else:  # not scheduled, or evicted: the pod's own conditions/reason say why
        state, exit_code = phase, None
        reason, message = _unscheduled(status)
        reason = reason or str(status.get("reason") or "")
        message = message or str(status.get("message") or "")
    if meta.get("deletionTimestamp"):
        state = "Terminating"
    last = (cs.get("lastState") or {}).get("terminated") or {}
    return PodRow(
        name=str(meta.get("name", "")), component=component,
        index=_index(job, str(meta.get("name", ""))) if component == "node" else None,
        phase=phase, state=state, ready=bool(cs.get("ready")), restarts=_int(cs.get("restartCount")) or 0,
        reason=reason, message=" ".join(message.split()), exit_code=exit_code,
        last_exit_code=_int(last.get("exitCode")) if last else None,
        last_reason=str(last.get("reason") or ""),
        node_name=str((pod.get("spec") or {}).get("nodeName") or ""),
    )


def job_status(name: str, namespace: str, nodes_min: int, nodes_max: int,
               statefulset: dict[str, Any] | None, pods: list[dict[str, Any]],
               record: dict[str, Any] | None = None) -> K8sJobStatus:
    """The job's status from its StatefulSet (None when absent), its pods (nodes and store) and
    its outcome record (the ConfigMap the finish sidecar writes; None when absent)."""
    rows = [pod_row(name, p) for p in pods]
    nodes = tuple(sorted((r for r in rows if r.component == "node"),
                         key=lambda r: (r.index is None, r.index or 0, r.name)))
    store = tuple(sorted((r for r in rows if r.component == "rdzv"), key=lambda r: r.name))
    status = K8sJobStatus(name=name, namespace=namespace, phase=NOT_STARTED, nodes_min=nodes_min,
                          nodes_max=nodes_max, replicas=0, nodes=nodes, store=store)
    if statefulset is None:
        return status
    notes = (record or {}).get("data") or {}
    replicas = _int((statefulset.get("spec") or {}).get("replicas"))
    replicas = 1 if replicas is None else replicas  # the API's default
    left = tuple(LeftNode(k[len(LEFT):], _int(v)) for k, v in sorted(notes.items())
                 if k.startswith(LEFT))
    status = replace(status, left=left)
    outcome = notes.get(OUTCOME)
    if outcome in OUTCOMES:
        return replace(status, phase=OUTCOMES[str(outcome)], replicas=replicas,
                       exit_code=_int(notes.get(EXIT_CODE)),
                       finished_by=str(notes.get(FINISHED_BY) or ""))
    return replace(status, phase=PENDING if status.running < nodes_min else RUNNING,
                   replicas=replicas)


def _node_row(pod: PodRow, left: dict[str, int | None]) -> NodeRow:
    gone = pod.name in left
    notes = [pod.note()] if pod.note() else []
    if gone:
        notes.append(f"left the job (exit {left[pod.name]})")
    exit_code = pod.exit_code if pod.exit_code is not None else pod.last_exit_code
    return NodeRow(name=pod.name, state=pod.state, running=pod.running and not gone,
                   exit_code=exit_code, restarts=pod.restarts, note="; ".join(notes),
                   host=pod.node_name)


def _notes(status: K8sJobStatus) -> list[str]:
    """What matters about the phase: who reported the outcome and the pods still stopping; or
    why nodes do not run, restarts, the store, nodes that left the job."""
    if status.phase == NOT_STARTED:
        return [f"no StatefulSet {status.name} in namespace {status.namespace}"]
    if status.finished:
        by = [f"reported by {status.finished_by}"] if status.finished_by else []
        return by + ([f"{len(status.nodes)} pods stopping"] if status.nodes else [])
    notes = [f"{n.name} {n.reason or n.state}" for n in status.nodes
             if not n.running and (n.reason or n.state != "Running")]
    notes += [f"{n.name} restarted {n.restarts}x"
              + (f" (last exit {n.last_exit_code})" if n.last_exit_code is not None else "")
              for n in status.nodes if n.running and n.restarts]
    notes += [f"store {s.name} {s.reason or s.state}" for s in status.store if not s.running]
    return notes + [f"{n.pod} left the job (exit {n.exit_code})" for n in status.left]


def to_state(status: K8sJobStatus, context: str) -> JobState:
    """The job in kdist's one status model: a row per pod, and `_notes`."""
    left = {n.pod: n.exit_code for n in status.left}
    return JobState(target="k8s", name=status.name,
                    where=f"namespace {status.namespace}, context {context}", phase=status.phase,
                    nodes=tuple(_node_row(p, left) for p in status.nodes),
                    store=tuple(_node_row(p, {}) for p in status.store),
                    nodes_min=status.nodes_min, exit_code=status.exit_code,
                    notes=tuple(_notes(status)))
