"""A Compose job's containers (from `docker compose ps` and `docker inspect`), and their mapping
into kdist's one status model (kdist/status.py). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from kdist import policy
from kdist.status import (
    FAILED,
    NOT_STARTED,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    JobState,
    NodeRow,
)

ACTIVE_STATES = frozenset({"running", "restarting", "paused"})


@dataclass(frozen=True)
class Container:
    service: str
    name: str
    id: str
    state: str  # created, running, restarting, paused, exited, dead
    exit_code: int
    health: str = ""
    restarts: int = 0
    oom_killed: bool = False
    finished_at: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def stopped(self) -> bool:
        return self.state in ("exited", "dead")


@dataclass(frozen=True)
class NodeStatus:
    service: str
    container: Container | None
    stopped_by: str = ""  # why kdist stopped it on purpose ("" when it did not)
    standby: bool = False  # in the `scale` profile: `up` does not start it, `kdist scale` does
    halted: bool = False  # kdist sent it the stop signal (on purpose, or after its own error)

    @property
    def state(self) -> str:
        return self.container.state if self.container is not None else "not created"

    @property
    def exit_code(self) -> int | None:
        c = self.container
        return c.exit_code if c is not None and c.stopped else None

    @property
    def running(self) -> bool:
        return self.container is not None and self.container.active

    @property
    def lost(self) -> str:
        """Why the node was lost (kdist/policy.py): its container ended by a signal nobody in
        the job sent, or out of memory; "" when it ended by itself or kdist stopped it."""
        c = self.container
        if c is None or not c.stopped or self.stopped_by or self.halted or not c.exit_code:
            return ""
        if c.oom_killed:
            return "out of memory (OOM-killed at its memory limit)"
        name = policy.exit_signal(c.exit_code, container=True)
        return f"killed by {name} from outside kdist" if name else ""

    @property
    def failed(self) -> bool:
        """It failed by an error of its own (a lost node is not a verdict on the job)."""
        return bool(self.exit_code) and not self.stopped_by and not self.lost

    @property
    def note(self) -> str:
        c = self.container
        if c is None:
            return "standby (kdist scale starts it)" if self.standby else ""
        if c.stopped and self.stopped_by:
            return self.stopped_by
        if self.lost:
            return f"lost: {self.lost}"
        if c.oom_killed:  # a worker was, and torchrun restarted it
            return "a worker ran out of memory (OOM-killed at its memory limit) and was restarted"
        return ""


@dataclass(frozen=True)
class JobStatus:
    name: str
    store: Container | None
    nodes: tuple[NodeStatus, ...]

    @property
    def phase(self) -> str:
        """One of kdist.status.PHASES (Compose has no pending: a started node runs or has ended).

        Lost nodes do not fail a job that others finished; a job that lost nodes and that no
        node finished failed (too few were left)."""
        started = [n for n in self.nodes if n.container is not None and n.state != "created"]
        if not started:
            return NOT_STARTED
        if any(n.running for n in started):
            return RUNNING
        if any(n.failed for n in started):
            return FAILED
        if any(n.exit_code == 0 for n in started):
            return SUCCEEDED
        return FAILED if any(n.lost for n in started) else STOPPED

    @property
    def failed_nodes(self) -> list[NodeStatus]:
        """The nodes the job failed by: those that failed by themselves, else the lost ones."""
        own = [n for n in self.nodes if n.failed]
        if own or self.phase != FAILED:
            return own
        return [n for n in self.nodes if n.lost]

    def node(self, service: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.service == service), None)


def _row(service: str, c: Container | None, note: str, exit_code: int | None) -> NodeRow:
    return NodeRow(name=service, state=c.state if c is not None else "not created",
                   running=c is not None and c.active, exit_code=exit_code,
                   restarts=c.restarts if c is not None else 0, note=note)


def to_state(status: JobStatus, project: str, nodes_min: int) -> JobState:
    """The job in kdist's one status model; the store's health is its note."""
    store = status.store
    stores = () if store is None else (
        _row(store.service, store, store.health, store.exit_code if store.stopped else None),)
    nodes = tuple(_row(n.service, n.container, n.note, n.exit_code) for n in status.nodes)
    codes = [n.exit_code for n in status.failed_nodes if n.exit_code is not None]
    ended = status.phase in (SUCCEEDED, FAILED)
    exit_code = (codes[0] if codes else 0 if status.phase == SUCCEEDED else None) if ended else None
    return JobState(target="compose", name=status.name, where=f"project {project}",
                    phase=status.phase, nodes=nodes, store=stores, nodes_min=nodes_min,
                    exit_code=exit_code)
