"""One rule for every target: a node that is lost leaves the job; the job fails only when it can
no longer succeed. Pure.

A node is lost when it ended by a signal nobody inside the job sent (the OOM killer, a kill from
outside, preemption, a crashed host) rather than by an error of its own: its torchrun agent was
killed (a local process: a negative exit code; a container or shell: 128+N), or its workers were
killed by a signal with no error in the log, or the engine says it ran out of memory. A lost node
is not a verdict on the job: the others re-form the group while at least nodes.min remain, and
the target brings the node back within its restarts (kdist run restarts it, Compose's restart
policy, the StatefulSet). The job fails when fewer than nodes.min can go on, when a node failed
by an error of its own (its peers would meet the same error), or when the same error repeats
(kdist/torchlog.py certain_failure). The Kubernetes finisher (kdist/node/finish.py) follows the
same rule on the cluster.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from kdist.torchlog import Failure

# exit codes of a container or shell whose main process died by a signal: 128 + N
SHELL_SIGNAL_BASE = 128
LOST_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGTERM,
                signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


@dataclass(frozen=True)
class Loss:
    """Why a node counts as lost: `killed by SIGKILL`, `out of memory (OOM-killed)`."""

    node: int
    why: str
    oom: bool = False

    def message(self, remaining: int, total: int, minimum: int, returns: bool) -> str:
        """`node-1 lost (killed by SIGKILL, no error in its log); 2 of 3 nodes go on (min 2)`."""
        head = f"node-{self.node} lost ({self.why}, no error in its log)"
        if remaining < minimum:
            tail = (f"{remaining} of {total} nodes left, fewer than nodes.min={minimum}"
                    + ("; waiting for it to come back" if returns else ": the job cannot go on"))
        else:
            tail = f"{remaining} of {total} nodes go on (min {minimum})"
            tail += "; it rejoins when it is back" if returns else ""
        return f"{head}; {tail}"


def exit_signal(exit_code: int | None, container: bool = False) -> str:
    """The name of the signal that killed the node's main process, "" if it exited by itself.

    Processes report it as a negative code; containers and shells as 128+N.
    """
    if exit_code is None:
        return ""
    number = -exit_code if exit_code < 0 else exit_code - SHELL_SIGNAL_BASE if container else 0
    try:
        sig = signal.Signals(number)
    except ValueError:
        return ""
    return sig.name if sig in LOST_SIGNALS else ""


def loss(node: int, exit_code: int | None, failure: Failure | None, container: bool = False,
         oom: bool = False) -> Loss | None:
    """The node's loss, or None when it ended by itself (succeeded, or failed by its own error)."""
    if oom:
        return Loss(node, "out of memory: OOM-killed", oom=True)
    if failure is not None and failure.exception and not failure.secondary:
        return None  # its own error, whatever happened to the agent afterwards
    if name := exit_signal(exit_code, container):
        return Loss(node, f"killed by {name}")
    if failure is not None and failure.signal and not failure.exception:
        return Loss(node, f"its workers were killed by {failure.signal}")
    return None


def too_few(remaining: int, minimum: int) -> str:
    """Why the job is over when too few nodes are left, or ""."""
    if remaining >= minimum:
        return ""
    return (f"{remaining} node(s) left, fewer than nodes.min={minimum}: the job cannot continue")
