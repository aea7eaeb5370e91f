"""One parser for what a torchrun node prints, used by every target. Pure: no I/O, no clock.

A node's output is the agent's glog lines (`LOGLEVEL=INFO`), e.g.

    I1130 03:43:43.627000 19079 torch/distributed/elastic/agent/server/api.py:553]   group_rank=0
    E1130 03:43:49.162000 19079 torch/.../multiprocessing/api.py:1002] failed (exitcode: 1) \
local_rank: 0 (pid: 19141) of binary: ...

the workers' own lines, with `[rankN]:` in front of what a worker writes to stderr when it has
no `@record` error file (its traceback), and, when the agent gives up, the "Root Cause (first
observed failure)" block. `NodeLog.feed` reads the lines one by one (live, or a whole log file)
and keeps: the rendezvous rounds (restart count, group rank, world size, global ranks), the
restarts the agent announced, whether the agent waits in its exit barrier, each worker failure
(exit code, signal, time) and each rank's last traceback. `NodeLog.failure()` joins them into
the node's own failure; `first_failure` picks the job's root cause across nodes.
"""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# `I1130 03:43:49.162000 19079 torch/.../api.py:553] message`
GLOG_RE = re.compile(r"^(?P<level>[IWEF])(?P<time>\d{4} \d\d:\d\d:\d\d\.\d+)\s+\d+ \S+:\d+\] ?"
                     r"(?P<msg>.*)$")
RANK_RE = re.compile(r"^\[rank(?P<rank>\d+)\]:(?P<text>.*)$")
RDZV_FIELD_RE = re.compile(r"^\s+(?P<key>restart_count|master_addr|master_port|group_rank|"
                           r"group_world_size|global_ranks)=(?P<value>\S+)\s*$")
BLOCK_FIELD_LINE_RE = re.compile(r"^\s+\w+=")  # a line of the "Rendezvous complete" block
RDZV_STARTS = ("Rendezvous'ing worker group", "Rendezvous complete for workers")
RESTART_RE = re.compile(r"Worker group (?P<state>\w+)\. (?P<left>\d+)/(?P<max>\d+) attempts left")
WORKER_FAILED_RE = re.compile(r"failed \(exitcode: (?P<code>-?\d+)\) local_rank: (?P<local>\d+) "
                              r"\(pid: (?P<pid>\d+)\)")
BARRIER_RE = re.compile(r"Waiting (?P<seconds>[\d.]+) seconds for other agents to finish")
BARRIER_DONE = ("Done waiting for other agents", "Error waiting on exit barrier")
TRACEBACK = "Traceback (most recent call last):"
CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
AGENT_MODULE = "torch.distributed.elastic."  # the agent's own exceptions (ChildFailedError, ...)
MAX_TRACEBACK = 400  # lines kept of one traceback (a trainer's stderr may go on for ever)
BLOCK_RULE = "====="  # torchrun draws its report between rules of `=`
SUCCEEDED = "worker group successfully finished"
ROOT_TITLE = "Root Cause (first observed failure):"
BLOCK_FIELD_RE = re.compile(r"^\s{2}(?P<key>time|host|rank|exitcode|error_file|traceback)\s*:"
                            r" ?(?P<value>.*)$")
BLOCK_RANK_RE = re.compile(r"^(?P<rank>-?\d+) \(local_rank: (?P<local>-?\d+)\)")
BLOCK_EXIT_RE = re.compile(r"^(?P<code>-?\d+) \(pid: (?P<pid>\d+)\)\s*(\((?P<signal>SIG\w+)\))?")
NO_TRACEBACK = "To enable traceback see"
CARETS_RE = re.compile(r"^\s*[\^~]+\s*$")  # Python 3.11's markers under a traceback line
EXCEPTION_RE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt|Failure|Timeout)\b")
# Errors that only say a peer went away: the cause is on another node (lower case).
PEER_LOST = ("connection closed by peer", "connection reset by peer", "connection reset",
             "caused by a remote worker", "read error", "broken pipe", "connection refused",
             "rendezvousclosederror", "rendezvousconnectionerror", "distnetworkerror",
             "signalexception", "timed out", "socket timeout")


@dataclass(frozen=True)
class Round:
    """One rendezvous this node completed (torchrun's "Rendezvous complete" block)."""

    key: str  # master_addr:master_port, the same on every member of the round
    restart_count: int
    group_rank: int
    world_size: int
    global_ranks: tuple[int, ...]


@dataclass(frozen=True)
class RankError:
    """A worker's `[rankN]:` traceback: the exception line and the lines before it."""

    rank: int
    exception: str
    traceback: tuple[str, ...]


@dataclass(frozen=True)
class WorkerExit:
    """The agent's `failed (exitcode: N) local_rank: L` line."""

    local_rank: int
    rank: int | None  # the global rank in the round it failed in
    exit_code: int
    time: str  # glog's `MMDD HH:MM:SS.ffffff`
    attempt: int  # 0 for the first attempt, then one more per restart
    error: RankError | None = None  # the rank's traceback, when it printed one in this round
    round: str = ""  # the key of the rendezvous round it ran in

    @property
    def exception(self) -> str:
        return self.error.exception if self.error else ""


@dataclass(frozen=True)
class Failure:
    """A node's own failure: which rank, how it ended, its error and traceback."""

    rank: int | None
    exit_code: int
    signal: str  # "SIGKILL" etc., "" when the worker exited by itself
    time: str
    exception: str  # "RuntimeError: ...", "" when the log has none
    traceback: tuple[str, ...]
    attempt: int = 0

    @property
    def secondary(self) -> bool:
        """The error only says that a peer went away (the cause is elsewhere)."""
        return is_peer_error([self.exception, *self.traceback[-3:]])

    def summary(self, tail: int = 6) -> str:
        """`rank 0 exited with code 1: RuntimeError: ...` plus the traceback's last lines."""
        who = f"rank {self.rank}" if self.rank is not None else "a worker"
        how = f"was killed by {self.signal}" if self.signal else f"exited with code {self.exit_code}"
        head = f"{who} {how}" + (f": {self.exception}" if self.exception else "")
        lines = list(self.traceback)
        if lines and lines[-1].strip() == self.exception:
            lines.pop()
        return "\n".join([head, *(f"  {x}" for x in lines[-tail:])])


@dataclass
class NodeLog:
    """Everything one node's output says about its agent and workers, read line by line."""

    phase: str = "starting"  # rendezvous, running, barrier (exit barrier), finished
    rounds: list[Round] = field(default_factory=list)
    restarts: int = 0  # "Worker group FAILED. n/m attempts left; will restart"
    barrier_seconds: float = 0.0  # > 0 while the agent waits in its exit barrier
    barrier_since: str = ""  # glog time it began to wait
    exits: list[WorkerExit] = field(default_factory=list)
    errors: dict[int, RankError] = field(default_factory=dict)  # each rank's last traceback
    report: Failure | None = None  # torchrun's Root Cause block
    plain_error: RankError | None = None  # the last worker traceback without `[rankN]:`
    agent_error: str = ""  # the exception line of the agent's own last traceback
    _plain: list[str] | None = None
    _rdzv: dict[str, str] | None = None
    _tracebacks: dict[int, list[str]] = field(default_factory=dict)
    _block: list[str] | None = None

    @property
    def round(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None

    def feed(self, line: str) -> list[str]:
        """Read one line; returns the lines a quiet terminal shows now (the workers' output).

        The agent's own lines (glog, its failure report, its tracebacks) are never returned; a
        traceback without `[rankN]:` is held until its last line says whose it is.
        """
        line = line.rstrip("\r\n")
        if self._block is not None:
            self._feed_block(line)
            return []
        if self._plain is not None:
            return self._feed_plain(line)
        ranked = RANK_RE.match(line)
        if ranked:
            self._feed_rank(int(ranked["rank"]), ranked["text"])
            return [line]
        glog = GLOG_RE.match(line)
        if glog:
            self._feed_agent(glog["time"], glog["msg"])
            return []
        if line.startswith(BLOCK_RULE) or line.strip() == ROOT_TITLE:
            self._block = [line]
            return []
        if line == TRACEBACK:
            self._plain = [line]
            return []
        return [line]

    def _feed_plain(self, line: str) -> list[str]:
        """A traceback without a rank prefix: a worker's before init_process_group, or the
        agent's own (its last exception is one of torch.distributed.elastic's). Chained
        tracebacks ("The above exception was the direct cause ...") are read as one."""
        assert self._plain is not None
        ended = EXCEPTION_RE.match(self._plain[-1]) is not None
        continued = line.startswith(" ") or not line.strip() or line.startswith(CHAINED) or \
            (not ended and EXCEPTION_RE.match(line)) or (ended and line == TRACEBACK)
        if continued and len(self._plain) < MAX_TRACEBACK:
            self._plain.append(line)
            return []
        return [*self.flush(), *self.feed(line)]

    def flush(self) -> list[str]:
        """End a traceback held without a rank prefix (its process has exited); returns what a
        quiet terminal shows of it (nothing of the agent's own)."""
        held, self._plain = self._plain or [], None
        exception = exception_line([x for x in held if not x.startswith(" ")])
        if exception.startswith(AGENT_MODULE):
            self.agent_error = exception
            return []
        if exception:
            self.plain_error = RankError(-1, exception, tuple(clean_traceback(held)))
        return held

    def feed_all(self, lines: Iterable[str]) -> NodeLog:
        """A whole log (a traceback held at its end is read too)."""
        for line in lines:
            self.feed(line)
        self.flush()
        return self

    def _feed_rank(self, rank: int, text: str) -> None:
        """A worker's stderr line; from a `Traceback` line on, its lines make the rank's error."""
        text = text[1:] if text.startswith(" ") else text
        if text == TRACEBACK:
            self._tracebacks[rank] = []
        lines = self._tracebacks.get(rank)
        if lines is None:
            return
        if len(lines) < MAX_TRACEBACK:
            lines.append(text)
        if not text.startswith(" ") and EXCEPTION_RE.match(text):
            cleaned = clean_traceback(lines)
            tail = [] if cleaned[-1] == text.rstrip() else [text.rstrip()]  # a cut traceback
            self.errors[rank] = RankError(rank, text.strip(), (*cleaned, *tail))

    def _feed_agent(self, time: str, message: str) -> None:
        if self._rdzv is not None and BLOCK_FIELD_LINE_RE.match(message):
            self._feed_rdzv_field(message)
            return
        self._rdzv = None
        if any(text in message for text in RDZV_STARTS):
            self.phase, self._rdzv = "rendezvous", {}
        elif RESTART_RE.search(message):
            self.restarts += 1
        elif (failed := WORKER_FAILED_RE.search(message)) is not None:
            local = int(failed["local"])
            rank = self.global_rank(local)
            error = self.errors.get(rank, self.plain_error) if rank is not None else None
            self.exits.append(WorkerExit(local, rank, int(failed["code"]), time, self.restarts,
                                         error, self.round.key if self.round else ""))
        elif (barrier := BARRIER_RE.search(message)) is not None:
            if self.phase != "barrier":
                self.barrier_since = time
            self.phase, self.barrier_seconds = "barrier", float(barrier["seconds"])
        elif any(text in message for text in BARRIER_DONE):
            self.phase, self.barrier_seconds = "finished", 0.0
        elif SUCCEEDED in message and self.phase != "barrier":
            self.phase = "finished"

    def _feed_rdzv_field(self, message: str) -> None:
        """One `key=value` line of the "Rendezvous complete" block."""
        assert self._rdzv is not None
        match = RDZV_FIELD_RE.match(message)
        if match is None:
            return
        self._rdzv[match["key"]] = match["value"]
        if match["key"] == "group_world_size":
            self._round_done(self._rdzv)
        elif match["key"] == "global_ranks" and self.rounds:
            ranks = tuple(int(x) for x in re.findall(r"-?\d+", match["value"]))
            self.rounds[-1] = dataclasses.replace(self.rounds[-1], global_ranks=ranks)

    def _round_done(self, info: dict[str, str]) -> None:
        self.phase = "running"
        self.errors, self.plain_error = {}, None  # a new round: earlier errors are over
        ranks = tuple(int(x) for x in re.findall(r"-?\d+", info.get("global_ranks", "")))
        self.rounds.append(Round(
            key=f"{info.get('master_addr', '')}:{info.get('master_port', '')}",
            restart_count=_int(info.get("restart_count")), group_rank=_int(info.get("group_rank")),
            world_size=_int(info.get("group_world_size")), global_ranks=ranks))

    def _feed_block(self, line: str) -> None:
        """torchrun's failure report, from one rule of `=` to the next after the Root Cause."""
        assert self._block is not None
        titles = [i for i, x in enumerate(self._block) if x.strip() == ROOT_TITLE]
        if not line.startswith(BLOCK_RULE) or not titles:
            self._block.append(line)
            return
        fields, traceback = block_fields(self._block[titles[0] + 1:])
        self._block = None
        rank = BLOCK_RANK_RE.match(fields.get("rank", ""))
        code = BLOCK_EXIT_RE.match(fields.get("exitcode", ""))
        if rank is not None and code is not None:
            self.report = Failure(int(rank["rank"]), int(code["code"]), code["signal"] or "",
                                  fields.get("time", ""), exception_line(traceback),
                                  tuple(traceback), self.restarts)

    def failure(self) -> Failure | None:
        """This node's own failure: torchrun's report or its last worker exit, with the rank's
        `[rankN]:` traceback where the report has none (no @record)."""
        last = self.exits[-1] if self.exits else None
        if self.report is not None:
            failure = self.report
        elif last is not None:
            failure = Failure(last.rank, last.exit_code, signal_name(last.exit_code), last.time,
                              "", (), last.attempt)
        else:
            return None
        if last is not None:  # the agent's own timestamp orders nodes better than the report's
            failure = dataclasses.replace(failure, time=last.time, attempt=last.attempt)
        error = last.error if last is not None and last.error is not None else \
            self.errors.get(failure.rank, self.plain_error) if failure.rank is not None else None
        if error is not None and (not failure.exception or failure.signal):
            failure = dataclasses.replace(failure, exception=error.exception,
                                          traceback=error.traceback)
        return failure

    def global_rank(self, local_rank: int) -> int | None:
        ranks = self.round.global_ranks if self.round else ()
        return ranks[local_rank] if 0 <= local_rank < len(ranks) else None


def first_failure(failures: Sequence[tuple[str, Failure | None]]) -> int | None:
    """Index of the root cause among nodes' failures: a genuine error before a lost peer's
    follow-on error, then the earliest time; a node without a failure report comes last."""
    known = [(i, f) for i, (_, f) in enumerate(failures) if f is not None]
    if not known:
        return 0 if failures else None
    return min(known, key=lambda item: (item[1].secondary, item[1].time or "~", item[0]))[0]


def certain_failure(logs: Sequence[NodeLog]) -> str:
    """Why retrying cannot help, or "": every node's first attempt failed with the same error
    (a bad import or argument; one node alone proves nothing, its error may be transient), or a
    worker failed with the same error as one in an earlier rendezvous round (the rank may have
    moved to another node)."""
    firsts = [log.exits[0] if log.exits else None for log in logs]
    errors = {f.exception for f in firsts if f is not None}
    if len(logs) > 1 and None not in firsts and len(errors) == 1 \
            and all(f and f.attempt == 0 for f in firsts):
        error = errors.pop()
        if error and not is_peer_error([error]):
            return f"every node's first attempt failed the same way: {error}"
    rounds: dict[str, set[str]] = {}  # error -> the rounds in which a worker exited with it
    for log in logs:
        for e in log.exits:
            if e.exception and not is_peer_error([e.exception]):
                rounds.setdefault(e.exception, set()).add(e.round)
    again = next((error for error, keys in rounds.items() if len(keys) > 1), "")
    return f"the same error again after a restart, so restarts would repeat it: {again}" \
        if again else ""


def stuck_at_barrier(logs: dict[int, NodeLog], minimum: int) -> str:
    """Why the job cannot end well, or "": a node's workers failed after another node finished
    and began to wait in torchrun's exit barrier, and the nodes left to rendezvous again are
    fewer than `minimum` (the waiting node never rejoins; torchrun would wait out the barrier)."""
    waiting = {i: log for i, log in logs.items() if log.phase == "barrier"}
    if not waiting:
        return ""
    since = min(log.barrier_since for log in waiting.values())
    failed = [i for i, log in logs.items()
              if i not in waiting and any(e.time > since for e in log.exits)]
    if not failed or len(logs) - len(waiting) >= minimum:
        return ""
    names = ", ".join(f"node-{i}" for i in sorted(waiting))
    return (f"node-{failed[0]}'s workers failed after {names} finished: fewer than nodes.min="
            f"{minimum} nodes can rendezvous again, so the job cannot succeed any more")


def is_peer_error(lines: Iterable[str]) -> bool:
    """True when an error only reflects another node's loss (connection reset, closed rdzv)."""
    text = " ".join(lines).lower()
    return any(marker in text for marker in PEER_LOST)


def exception_line(lines: Sequence[str]) -> str:
    """The line of a traceback that names the error (`RuntimeError: ...`), or ""."""
    return next((x.strip() for x in reversed(lines) if EXCEPTION_RE.match(x.strip())), "")


def root_cause(texts: Sequence[str]) -> list[str]:
    """A node's failure in a few lines, from its log (the texts, without a `node-N | ` prefix):
    as `NodeLog.failure` reads it (rank, error, the `[rankN]:` traceback when torchrun's report
    has none), else torchrun's Root Cause block, else the log's last lines."""
    texts = [x.rstrip() for x in texts]
    failure = NodeLog().feed_all(texts).failure()
    if failure is not None and failure.exception:
        head, *_ = failure.summary().splitlines()
        tail = [x for x in failure.traceback[-8:] if x.strip() != failure.exception]
        return [head, *tail, failure.exception]
    for i in range(len(texts) - 1, -1, -1):
        if ROOT_TITLE in texts[i]:
            block = []
            for text in texts[i + 1:]:
                if text.strip().startswith("====="):
                    break
                if text.strip():
                    block.append(text)
            return block[:30]
    return [t for t in texts if t.strip()][-8:]


def error_line(block: Sequence[str]) -> str:
    """The one line of a `root_cause` block that names the error (`RuntimeError: ...`), else
    kdist's or torchrun's own error line, else the last line."""
    line = exception_line([x.strip() for x in block])
    if line:
        return line
    for text in reversed(block):
        if text.strip().startswith(("error", "kdist:", "exitcode")):
            return text.strip()
    return block[-1].strip() if block else ""


def signal_name(exit_code: int) -> str:
    """torchrun reports a worker killed by a signal as a negative exit code."""
    if exit_code >= 0:
        return ""
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


def block_fields(lines: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """`key : value` pairs of a Root Cause entry, and the traceback lines that follow them."""
    fields: dict[str, str] = {}
    traceback: list[str] = []
    in_traceback = False
    for line in lines:
        match = BLOCK_FIELD_RE.match(line)
        if match and not in_traceback:
            fields[match["key"]] = match["value"].strip()
            in_traceback = match["key"] == "traceback"
            first = match["value"].strip()
            if in_traceback and first and not first.startswith(NO_TRACEBACK):
                traceback.append(first)
        elif in_traceback:
            traceback.append(line[2:] if line.startswith("  ") else line)
    return fields, clean_traceback(traceback)


def clean_traceback(lines: Sequence[str]) -> list[str]:
    """Traceback lines without blank lines and Python 3.11's `^^^^` markers."""
    return [line.rstrip() for line in lines if line.strip() and not CARETS_RE.match(line)]


def is_agent_line(line: str) -> bool:
    """A torchrun agent log line (glog format): the node log keeps it, the terminal need not."""
    return GLOG_RE.match(line) is not None


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
