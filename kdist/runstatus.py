"""The live status of a local run, read from the lines its processes print.

Pure: no I/O and no clock. The runner feeds every output line of every node to
`JobStatus.observe`; this module recognises two kinds of lines:

- the trainer's `KDIST_METRIC {json}` lines (start, step, checkpoint, done, smoke);
- torchrun's own log lines (glog format, `LOGLEVEL=INFO`), e.g.

      I1124 00:36:53.177000 24042 torch/distributed/elastic/agent/server/api.py:553] \
[default] Rendezvous complete for workers. Result:
      I1124 ... api.py:553]   group_world_size=3

and, after a failure, torchrun's "Root Cause (first observed failure)" block.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

METRIC_PREFIX = "KDIST_METRIC "

# `I1124 00:36:53.177000 24042 torch/distributed/elastic/agent/server/api.py:553] message`
_GLOG_RE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ?(?P<msg>.*)$")
_RDZV_FIELD_RE = re.compile(r"^\s+(?P<key>restart_count|master_addr|master_port|group_rank|"
                            r"group_world_size)=(?P<value>\S+)\s*$")
_RESTART_RE = re.compile(r"Worker group (?P<state>\w+)\. (?P<left>\d+)/(?P<max>\d+) attempts left")
_RDZV_STARTS = ("Rendezvous'ing worker group", "Rendezvous complete for workers")


@dataclass
class NodeState:
    """What one node's torchrun agent is doing, as far as its log says."""

    phase: str = "starting"  # rendezvous, running, finished; exited, failed, killed at the end
    group_rank: int | None = None
    group_world_size: int = 0
    worker_failures: int = 0  # "Worker group FAILED. n/m attempts left"
    exit_code: int | None = None
    rdzv: dict[str, str] = field(default_factory=dict)  # the block being read

    @property
    def alive(self) -> bool:
        return self.phase not in ("exited", "failed", "killed")


@dataclass
class JobStatus:
    """The whole job: per-node states plus the trainer's latest metrics."""

    nodes: dict[int, NodeState] = field(default_factory=dict)
    rounds: set[str] = field(default_factory=set)  # distinct rendezvous results (master addr)
    starts: int = 0  # trainer `start` events: 1 + number of worker-group restarts
    world_size: int = 0
    step: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    checkpoint: int | None = None
    done: bool = False

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    @property
    def nodes_up(self) -> int:
        return sum(1 for n in self.nodes.values() if n.alive)

    def node(self, index: int) -> NodeState:
        return self.nodes.setdefault(index, NodeState())

    def observe(self, index: int, line: str) -> dict[str, Any] | None:
        """Update from one output line of node `index`; returns the metric it carried, if any."""
        metric = parse_metric(line)
        if metric is not None:
            self.apply_metric(metric)
            return metric
        message = torchrun_message(line)
        if message is not None:
            self.apply_torchrun(self.node(index), message)
        return None

    def apply_metric(self, metric: dict[str, Any]) -> None:
        event = metric.get("event")
        if isinstance(metric.get("world_size"), int):
            self.world_size = metric["world_size"]
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

    def apply_torchrun(self, node: NodeState, message: str) -> None:
        field_match = _RDZV_FIELD_RE.match(message)
        if node.phase == "rendezvous" and field_match:
            node.rdzv[field_match["key"]] = field_match["value"]
            if field_match["key"] == "group_world_size":
                self._rendezvous_done(node)
        elif any(text in message for text in _RDZV_STARTS):
            node.phase, node.rdzv = "rendezvous", {}
        elif _RESTART_RE.search(message):
            node.worker_failures += 1
        elif "worker group successfully finished" in message:
            node.phase = "finished"

    def _rendezvous_done(self, node: NodeState) -> None:
        info = node.rdzv
        node.phase = "running"
        node.group_rank = _int_or(info.get("group_rank"), None)
        node.group_world_size = _int_or(info.get("group_world_size"), 0) or 0
        self.rounds.add(f"{info.get('master_addr', '')}:{info.get('master_port', '')}")
        if not self.world_size:
            self.world_size = node.group_world_size

    def node_exited(self, index: int, code: int, killed: bool = False) -> None:
        node = self.node(index)
        node.exit_code = code
        node.phase = "killed" if killed else ("exited" if code == 0 else "failed")


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


def torchrun_message(line: str) -> str | None:
    """The message part of a torchrun (glog-formatted) log line, or None."""
    match = _GLOG_RE.match(line)
    return match["msg"] if match else None


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


def format_status(status: JobStatus, elapsed: float) -> str:
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


# ---- torchrun's failure report ------------------------------------------------------------

_ROOT_TITLE = "Root Cause (first observed failure):"
_BLOCK_FIELD_RE = re.compile(r"^\s{2}(?P<key>time|host|rank|exitcode|error_file|traceback)\s*:"
                             r" ?(?P<value>.*)$")
_RANK_RE = re.compile(r"^(?P<rank>-?\d+) \(local_rank: (?P<local>-?\d+)\)")
_EXIT_RE = re.compile(r"^(?P<code>-?\d+) \(pid: (?P<pid>\d+)\)\s*(\((?P<signal>SIG\w+)\))?")
_NO_TRACEBACK = "To enable traceback see"
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "caused by a remote worker")
_CARETS_RE = re.compile(r"^\s*[\^~]+\s*$")  # 3.11 error markers under a line


@dataclass(frozen=True)
class RootCause:
    """torchrun's "Root Cause (first observed failure)" entry."""

    rank: int
    local_rank: int
    exit_code: int
    signal: str  # "SIGKILL" etc., "" when the worker exited by itself
    time: str
    error_file: str
    traceback: tuple[str, ...]  # empty when torchrun had none (no @record in the trainer)

    @property
    def secondary(self) -> bool:
        """The error only says that a peer went away (the cause is elsewhere)."""
        text = "\n".join(self.traceback[-3:])
        return any(marker in text for marker in _PEER_LOST)

    def summary(self, tail: int = 6) -> str:
        """`rank 0 exited with code 1` plus the traceback's last lines, indented."""
        how = f"was killed by {self.signal}" if self.signal else f"exited with code {self.exit_code}"
        lines = [f"rank {self.rank} (local rank {self.local_rank}) {how}"]
        lines += [f"  {x}" for x in self.traceback[-tail:]]
        return "\n".join(lines)


def parse_root_cause(lines: Sequence[str]) -> RootCause | None:
    """The root cause in the last failure report among `lines` (one node's output), if any."""
    starts = [i for i, line in enumerate(lines) if line.strip() == _ROOT_TITLE]
    if not starts:
        return None
    fields, traceback = _block_fields(lines[starts[-1] + 1:])
    rank = _RANK_RE.match(fields.get("rank", ""))
    code = _EXIT_RE.match(fields.get("exitcode", ""))
    if rank is None or code is None:
        return None
    return RootCause(
        rank=int(rank["rank"]), local_rank=int(rank["local"]), exit_code=int(code["code"]),
        signal=code["signal"] or "", time=fields.get("time", ""), error_file=fields.get("error_file", ""),
        traceback=tuple(traceback),
    )


def _block_fields(lines: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`key : value` pairs of one failure entry, and the traceback lines that follow it."""
    fields: dict[str, str] = {}
    traceback: list[str] = []
    in_traceback = False
    for line in lines:
        if line.startswith("====="):
            break
        match = _BLOCK_FIELD_RE.match(line)
        if match and not in_traceback:
            fields[match["key"]] = match["value"].strip()
            in_traceback = match["key"] == "traceback"
            first = match["value"].strip()
            if in_traceback and first and not first.startswith(_NO_TRACEBACK):
                traceback.append(first)
        elif in_traceback:
            traceback.append(line[2:] if line.startswith("  ") else line)
    return fields, clean_traceback(traceback)


def clean_traceback(lines: Sequence[str]) -> list[str]:
    """Traceback lines without blank lines and Python 3.11's `^^^^` markers."""
    return [line.rstrip() for line in lines if line.strip() and not _CARETS_RE.match(line)]
