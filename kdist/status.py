"""One model of a running job for every target: its phase, a row per node and per store
process, the exit code once it ended. Pure.

Each target reads its own world and maps it here: Compose containers in
kdist/targets/compose/status.py, Kubernetes pods in kdist/targets/k8s/status.py. `kdist status`
prints `format_state` (text) or `state_dict` (json) of it, whatever the target; `kdist up` and
`kdist apply --wait` end with the same. The root cause of a failure is read from the nodes'
logs by the one torchrun log parser (kdist/torchlog.py) and travels in `JobFailed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdist.errors import KdistError

# The phases of a job, on every target:
#   not-started: nothing of the job runs (never started, or removed);
#   pending: started, but fewer than nodes.min nodes run (Kubernetes: pods not yet scheduled);
#   running: nodes.min or more nodes run;
#   succeeded / failed: the job ended, and how;
#   stopped: every node was stopped on purpose (kdist kill, kdist scale, Ctrl-C).
NOT_STARTED, PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = (
    "not-started", "pending", "running", "succeeded", "failed", "stopped")
PHASES = (NOT_STARTED, PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)
ENDED = (SUCCEEDED, FAILED, STOPPED)


@dataclass(frozen=True)
class NodeRow:
    """One node (or the rendezvous store): a container on Compose, a pod on Kubernetes."""

    name: str  # node-1 (Compose), <job>-1 (Kubernetes), rdzv / <job>-rdzv-... (the store)
    state: str  # the target's own word: running, exited, restarting; Running, Waiting, ...
    running: bool
    exit_code: int | None = None  # the last exit code, when the node has exited once
    restarts: int = 0
    note: str = ""  # why it is not running, or what happened to it
    host: str = ""  # the machine it runs on, where the target says (Kubernetes: the node)


@dataclass(frozen=True)
class JobState:
    target: str
    name: str
    where: str  # "project kdist-x" | "namespace ns, context c"
    phase: str  # one of PHASES
    nodes: tuple[NodeRow, ...] = ()
    store: tuple[NodeRow, ...] = ()
    nodes_min: int = 1
    exit_code: int | None = None  # once the job ended, where the target knows it
    notes: tuple[str, ...] = ()  # what matters about the phase, in order

    def __post_init__(self) -> None:
        if self.phase not in PHASES:  # a target's mapping went wrong: a bug, not bad input
            raise ValueError(f"phase {self.phase!r} is not one of {', '.join(PHASES)}")

    @property
    def running(self) -> int:
        return sum(1 for n in self.nodes if n.running)

    def summary(self) -> str:
        """The phase line: `running: 2 of 3 nodes running (min 2); node-1 restarted 1x`."""
        if self.phase in ENDED:
            head = f"exit code {'unknown' if self.exit_code is None else self.exit_code}"
        elif self.phase == NOT_STARTED:
            head = "nothing runs"
        else:
            head = (f"{self.running} of {len(self.nodes)} nodes running "
                    f"({'needs' if self.phase == PENDING else 'min'} {self.nodes_min})")
        return f"{self.phase}: {head}" + (f"; {', '.join(self.notes)}" if self.notes else "")


@dataclass(frozen=True)
class ScaleChange:
    """What `kdist scale` changed: the node count before and after, the nodes it started or
    stopped where the target names them, and notes."""

    before: int
    after: int
    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the user should know about this change


class JobFailed(KdistError):
    """The job ended without success: the exit code kdist exits with, the failing node and the
    root cause (its traceback) when the logs say."""

    def __init__(self, message: str, exit_code: int | None = 1, node: str = "",
                 cause: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.exit_code = exit_code if exit_code and 0 < exit_code < 256 else 1
        self.node = node
        self.cause = tuple(cause)


def format_state(state: JobState) -> str:
    """`kdist status`: the phase line, then one row per node and store process."""
    head = f"job {state.name} ({state.where}): {state.summary()}"
    rows = [*state.nodes, *state.store]
    if not rows:
        return head
    hosts = any(r.host for r in rows)  # a column only where the target places nodes on machines
    table = [("NODE", "STATE", "EXIT", "RESTARTS", *(("HOST",) if hosts else ()), "NOTE")]
    table += [(r.name, r.state, "-" if r.exit_code is None else str(r.exit_code), str(r.restarts),
               *((r.host or "-",) if hosts else ()), r.note) for r in rows]
    n = len(table[0]) - 1
    widths = [max(len(t[i]) for t in table) for i in range(n)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(t[:n], widths, strict=True)) + "  " + t[n]
             for t in table]
    return "\n".join([head, *(line.rstrip() for line in lines)])


def row_dict(row: NodeRow) -> dict[str, Any]:
    return {"name": row.name, "state": row.state, "running": row.running,
            "exit_code": row.exit_code, "restarts": row.restarts, "note": row.note or None,
            "host": row.host or None}


def state_dict(state: JobState) -> dict[str, Any]:
    """`kdist status -o json` (and the `job` of a result line): every key always present."""
    return {"target": state.target, "name": state.name, "where": state.where,
            "phase": state.phase, "summary": state.summary(), "running": state.running,
            "nodes_min": state.nodes_min, "exit_code": state.exit_code,
            "nodes": [row_dict(r) for r in state.nodes],
            "store": [row_dict(r) for r in state.store]}
