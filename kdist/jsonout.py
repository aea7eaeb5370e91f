"""The records of `--output json` (`kdist run`, `kdist up`, `kdist apply --wait`). Pure.

One JSON object per line, keys sorted, every key always present (null when unknown):

- `{"type": "status", "target": ..., "elapsed": ...}` plus the job's state: for `run` and `up`
  the nodes, rendezvous rounds, restarts, world sizes (read from torchrun's agent lines), step,
  loss, samples/s (from the trainer's optional KDIST_METRIC lines); for `apply --wait` the
  Kubernetes phase and per-pod rows;
- `{"type": "event", "target": ..., "event": NAME, "elapsed": ...}` plus the event's fields
  (kdist run: start, exit, kill, kill-skipped, add-node, add-node-skipped, round, resumed;
  up: exit, round, resumed; apply: applied);
- one last `{"type": "result", "target": ..., "exit_code": N, "succeeded": ..., "error": ...,
  "root_cause": ..., "job": ..., "elapsed": ...}`: the exit code kdist exits with, the error
  message (null on success) and, when a node failed, its root cause.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdist.progress import RunProgress
    from kdist.status import JobState

# status fields that change with every training step: throttled, not emitted on each change
METRIC_FIELDS = ("step", "loss", "samples_per_s", "checkpoint")


def dumps(record: Mapping[str, Any]) -> str:
    """One line of JSON, keys sorted."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _seconds(elapsed: float) -> float:
    return round(max(elapsed, 0.0), 1)


def job_status(status: RunProgress, elapsed: float, target: str) -> dict[str, Any]:
    """A `run`/`up` snapshot: the same facts as the terminal status line, per node too."""
    nodes = [{"node": index, "state": n.phase, "group_rank": n.group_rank,
              "group_world_size": n.group_world_size or None,
              "worker_failures": n.worker_failures, "exit_code": n.exit_code}
             for index, n in sorted(status.nodes.items())]
    return {
        "type": "status", "target": target, "elapsed": _seconds(elapsed),
        "nodes": nodes, "nodes_up": status.nodes_up, "rounds": len(status.rounds),
        "restarts": status.restarts, "world_size": status.world_size or None,
        "world_sizes": status.world_sizes,
        "step": status.step, "loss": status.loss, "samples_per_s": status.samples_per_s,
        "checkpoint": status.checkpoint, "done": status.done,
    }


def job_state(state: JobState, elapsed: float) -> dict[str, Any]:
    """An `apply --wait` snapshot: kdist status's JSON (phase, summary, a row per pod)."""
    from kdist.status import state_dict

    return {**state_dict(state), "type": "status", "elapsed": _seconds(elapsed)}


def event(target: str, name: str, elapsed: float, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A kdist event; its fields sit next to `event` (they never override the fixed keys)."""
    return {**fields, "type": "event", "target": target, "event": name,
            "elapsed": _seconds(elapsed)}


def root_cause(node: str | None, exit_code: int | None, rank: int | None = None, signal: str = "",
               traceback: Sequence[str] = (), log: str | None = None,
               exception: str = "") -> dict[str, Any]:
    """Which node's own failure ended the job; `rank`, `signal`, `log`, `exception` null when
    unknown (`exception` is the error line, e.g. `RuntimeError: ...`)."""
    return {"node": node, "exit_code": exit_code, "rank": rank, "signal": signal or None,
            "traceback": list(traceback), "log": log, "exception": exception or None}


def job_failure(error: Exception) -> dict[str, Any] | None:
    """The root cause a JobFailed carries (`kdist up`, `kdist apply --wait`), or None."""
    from kdist.status import JobFailed
    from kdist.torchlog import error_line

    if not isinstance(error, JobFailed) or not error.node:
        return None
    return root_cause(error.node, error.exit_code, traceback=error.cause,
                      exception=error_line(error.cause) if error.cause else "")


def result(target: str, exit_code: int, elapsed: float, error: str | None = None,
           cause: Mapping[str, Any] | None = None,
           job: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The last line: how kdist exits, and why when it is not 0."""
    return {"type": "result", "target": target, "exit_code": exit_code,
            "succeeded": exit_code == 0, "error": error, "root_cause": dict(cause) if cause else None,
            "job": dict(job) if job is not None else None, "elapsed": _seconds(elapsed)}


def without(record: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}
