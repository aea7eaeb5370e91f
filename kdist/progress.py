"""The live progress of a job kdist follows (`kdist run`, `kdist up`), read from the lines its
nodes print: the status line, the JSON snapshots and the fail-fast decisions. (What a target
reports about its containers or pods is kdist/status.py's model.)

Pure: no I/O and no clock. The runner feeds every output line of every node to
`RunProgress.observe`: torchrun's own lines (rendezvous rounds, restarts, failures) are read by
kdist.torchlog, one `NodeLog` per node; the trainer's optional `KDIST_METRIC {json}` lines
(start, step, checkpoint, done, smoke) add the step, loss and throughput.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kdist.torchlog import NodeLog

METRIC_PREFIX = "KDIST_METRIC "


@dataclass
class NodeProgress:
    """What one node's torchrun agent is doing, as far as its log says."""

    log: NodeLog = field(default_factory=NodeLog)
    exit_code: int | None = None
    ended: str = ""  # exited, failed, killed
    shown: list[str] = field(default_factory=list)  # the last line's part for a quiet terminal

    @property
    def phase(self) -> str:
        """starting, rendezvous, running, barrier, finished; exited, failed, killed at the end."""
        return self.ended or self.log.phase

    @property
    def alive(self) -> bool:
        return not self.ended

    @property
    def group_rank(self) -> int | None:
        return self.log.round.group_rank if self.log.round else None

    @property
    def group_world_size(self) -> int:
        return self.log.round.world_size if self.log.round else 0

    @property
    def worker_failures(self) -> int:
        return len(self.log.exits)


@dataclass
class RunProgress:
    """The whole job: per-node states, the rendezvous rounds, the trainer's latest metrics."""

    nodes: dict[int, NodeProgress] = field(default_factory=dict)
    rounds: dict[str, dict[int, int]] = field(default_factory=dict)  # key -> node -> group rank
    sizes: dict[str, int] = field(default_factory=dict)  # key -> world size
    round_restarts: dict[str, int] = field(default_factory=dict)  # key -> highest restart_count
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # for the runner
    starts: int = 0  # trainer `start` events: 1 + number of worker-group restarts
    metric_world_size: int = 0
    step: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    checkpoint: int | None = None
    done: bool = False

    @property
    def restarts(self) -> int:
        """Restarts torchrun announced (or the trainer's `start` events, if it sends them)."""
        logged = [n.log.restarts for n in self.nodes.values()]
        logged += [r.restart_count for n in self.nodes.values() for r in n.log.rounds]
        return max([self.starts - 1, 0, *logged])

    @property
    def world_size(self) -> int:
        """The latest rendezvous round's world size (else the trainer's, if it said)."""
        return list(self.sizes.values())[-1] if self.sizes else self.metric_world_size

    @property
    def world_sizes(self) -> list[int]:
        """World sizes of the rounds in order, repeats of the same size once."""
        sizes: list[int] = []
        for size in self.sizes.values():
            if not sizes or sizes[-1] != size:
                sizes.append(size)
        return sizes

    @property
    def nodes_up(self) -> int:
        return sum(1 for n in self.nodes.values() if n.alive)

    def node(self, index: int) -> NodeProgress:
        return self.nodes.setdefault(index, NodeProgress())

    def observe(self, index: int, line: str) -> dict[str, Any] | None:
        """Update from one output line of node `index`; returns the metric it carried, if any."""
        node = self.node(index)
        metric = parse_metric(line)
        if metric is not None:
            self.apply_metric(metric)
            node.shown = [line]
            return metric
        rounds = len(node.log.rounds)
        node.shown = node.log.feed(line)
        if len(node.log.rounds) > rounds:
            self._joined(index, node)
        return None

    def _joined(self, index: int, node: NodeProgress) -> None:
        """A node completed a rendezvous; once every member has, the round is an event."""
        info = node.log.rounds[-1]
        members = self.rounds.setdefault(info.key, {})
        self.sizes[info.key] = info.world_size
        members[index] = info.group_rank
        # an agent restarted by a peer's failure (not its own) still says restart_count=0
        restart = max(self.round_restarts.get(info.key, 0), info.restart_count)
        self.round_restarts[info.key] = restart
        if len(members) == info.world_size:
            number = list(self.rounds).index(info.key) + 1
            order = [f"node-{i}" for i in sorted(members, key=members.__getitem__)]
            fields = {"round": number, "world_size": info.world_size, "restart": restart,
                      "members": order}
            self.events.append(("round" if number == 1 else "resumed", fields))

    def apply_metric(self, metric: dict[str, Any]) -> None:
        event = metric.get("event")
        if isinstance(metric.get("world_size"), int):
            self.metric_world_size = metric["world_size"]
        if event == "start":
            self.starts += 1
        elif event == "step":
            self.step = _int_or(metric.get("step"), self.step)
            self.loss = _float_or(metric.get("loss"), self.loss)
            self.samples_per_s = _float_or(metric.get("samples_per_s"), self.samples_per_s)
        elif event == "checkpoint":
            self.checkpoint = _int_or(metric.get("step"), self.checkpoint)
        elif event == "done":
            self.done = True
            self.step = _int_or(metric.get("step"), self.step)

    def node_exited(self, index: int, code: int, killed: bool = False) -> None:
        node = self.node(index)
        node.exit_code = code
        node.ended = "killed" if killed else ("exited" if code == 0 else "failed")

    def members(self) -> list[int]:
        """The nodes of the latest rendezvous round, in group-rank order."""
        if not self.rounds:
            return []
        members = list(self.rounds.values())[-1]
        return sorted(members, key=members.__getitem__)

    def torchrun_dict(self) -> dict[str, Any]:
        """What torchrun's agent lines said: rounds, restarts, world sizes, the last members."""
        return {"rounds": len(self.rounds), "restarts": self.restarts,
                "world_sizes": self.world_sizes, "members": [f"node-{i}" for i in self.members()]}

    def waiting_in_barrier(self) -> list[int]:
        """Nodes whose agent waits in torchrun's exit barrier for the others."""
        return [i for i, n in self.nodes.items() if n.alive and n.log.phase == "barrier"]


def barrier_note(status: RunProgress) -> str:
    """`; node-0 was waiting in torchrun's exit barrier ...` for the nodes that were, or ""."""
    waiting = status.waiting_in_barrier()
    if not waiting:
        return ""
    names = ", ".join(f"node-{i}" for i in waiting)
    seconds = max(status.nodes[i].log.barrier_seconds for i in waiting)
    verb = "was" if len(waiting) == 1 else "were"
    return f"; {names} {verb} waiting in torchrun's exit barrier (up to {seconds:.0f} s)"


def parse_metric(line: str) -> dict[str, Any] | None:
    """`KDIST_METRIC {"event": ...}` -> the dict; None for any other line or bad JSON."""
    at = line.find(METRIC_PREFIX)
    if at < 0:
        return None
    try:
        value = json.loads(line[at + len(METRIC_PREFIX):])
    except ValueError:
        return None
    return value if isinstance(value, dict) and "event" in value else None


def _int_or(value: object, default: int | None) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return default


def _float_or(value: object, default: float | None) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def format_elapsed(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def format_progress(status: RunProgress, elapsed: float) -> str:
    """One status line: `[00:42] nodes 3/3 up | rounds 2 | restarts 1 | world 3 | step ...`."""
    parts = [
        f"[{format_elapsed(elapsed)}] nodes {status.nodes_up}/{len(status.nodes)} up",
        f"rounds {len(status.rounds)}",
        f"restarts {status.restarts}",
        f"world {status.world_size or '-'}",
    ]
    if status.step is not None:
        loss = f" loss {status.loss:.4f}" if status.loss is not None else ""
        parts.append(f"step {status.step}{loss}")
    if status.samples_per_s is not None:
        parts.append(f"{status.samples_per_s:.0f} samples/s")
    if status.done:
        parts.append("done")
    return " | ".join(parts)
