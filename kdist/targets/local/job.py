"""The local target: N simulated nodes as torchrun agents on this host (`kdist run`).

The only module with side effects for this target. Every node is the plan's torchrun command
line (only the rendezvous host/port are local) in its own session, with its own working folder
under the run directory (its log, error file and private /tmp), all of them started in the
job's one shared working directory (the run's `checkpoints` folder, the local stand-in for the
checkpoint volume); the standalone c10d store, when the spec asks for one, runs first as
its own process (started again on its port should it die; see `supervise_store`). Output
is read by one thread per process, written to a log file per process and handed to a
`Console` in arrival order; `KDIST_METRIC` lines also go to `metrics.jsonl`.

Stopping is done by process tree, not by process group: torchrun starts its workers in new
sessions, so a node is every process that descends from its agent or carries its
`KDIST_RUN_ID`/`KDIST_NODE_RANK` markers in its environment (orphans included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

from kdist import policy
from kdist.errors import KdistError, UsageError
from kdist.node.wait import link_project
from kdist.plan import CHECKPOINT_ENV, LaunchPlan
from kdist.progress import NodeProgress, RunProgress, barrier_note, format_elapsed
from kdist.targets.local import LOCAL_HOST, netsim
from kdist.targets.local.listening import running_jobs
from kdist.torchlog import (
    Failure,
    NodeLog,
    certain_failure,
    clean_traceback,
    first_failure,
    stuck_at_barrier,
)

RUN_ID_ENV = "KDIST_RUN_ID"
NODE_RANK_ENV = "KDIST_NODE_RANK"
RUNS_DIR = Path(".kdist") / "runs"  # a run's logs and metrics, one folder per run
JOBS_DIR = Path(".kdist") / "jobs"  # a job's outputs (the working directory), kept across runs
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
LISTEN_SHIM = Path(__file__).resolve().parents[2] / "node" / "loopback"


# ---- options and results ------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """`--kill node-1@20s`: SIGKILL node 1's whole process tree 20 s after the nodes start."""

    node: int
    at: float


@dataclass(frozen=True)
class RunOptions:
    nodes: int | None = None  # overrides nodes.count, within MIN:MAX
    kills: tuple[Kill, ...] = ()
    add_nodes: tuple[float, ...] = ()  # seconds after start at which one more node starts
    run_dir: Path | None = None  # logs; default .kdist/runs/<run-id> (outputs: outputs_dir)
    grace: float = 5.0  # SIGTERM -> SIGKILL when stopping
    linger: float = 60.0  # how long other nodes may run on after one finished successfully
    store_timeout: float = 60.0  # for the standalone store's port to open
    verbose: bool = False  # torchrun's agent lines on the console too (always in the node logs)
    fresh: bool = False  # empty the job's outputs first instead of resuming from them


@dataclass(frozen=True)
class NodeResult:
    index: int
    exit_code: int | None  # None while it runs
    killed: bool = False  # by --kill (expected to die)
    stopped: bool = False  # by kdist (interrupt, fail-fast, or still running after the job)
    at: float = 0.0  # seconds after start when it exited
    lost: bool = False  # killed from outside with no restart left: it left the job (kdist/policy.py)

    @property
    def left(self) -> bool:
        """Left the job without a verdict on it: killed by --kill or lost."""
        return self.killed or self.lost


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: Path
    nodes: tuple[NodeResult, ...]
    final_step: int | None
    elapsed: float
    interrupted: str = ""  # the signal's name when SIGINT/SIGTERM stopped the run
    rounds: int = 0  # rendezvous rounds, restarts and world sizes: from torchrun's agent logs
    restarts: int = 0
    world_sizes: tuple[int, ...] = ()
    outputs: Path = Path()  # the nodes' working directory
    project_writes: tuple[str, ...] = ()  # files written into the project's own folders

    @property
    def succeeded(self) -> bool:
        """At least one node exited 0 and every node that did not leave the job exited 0."""
        return any(n.exit_code == 0 for n in self.nodes) and all(
            n.exit_code == 0 for n in self.nodes if not n.left)

    def summary(self) -> str:
        word = "succeeded" if self.succeeded else "failed"
        word = f"interrupted ({self.interrupted})" if self.interrupted else word
        left = [f"{count} {word}" for word, count in (
            ("killed", sum(n.killed for n in self.nodes)), ("lost", sum(n.lost for n in self.nodes)))
            if count]
        plural = "s" if len(self.nodes) != 1 else ""
        nodes = f"{len(self.nodes)} node{plural}" + (f" ({', '.join(left)})" if left else "")
        step = "" if self.final_step is None else f"final step {self.final_step}, "
        line = (f"run {self.run_id} {word}: {nodes}, {step}"
                f"{format_elapsed(self.elapsed)} elapsed, logs in {self.run_dir}, outputs "
                f"(the working directory) in {self.outputs}")
        if self.world_sizes:
            sizes = " -> ".join(map(str, self.world_sizes))
            line += f"\n  rounds {self.rounds}, restarts {self.restarts}, world sizes {sizes}"
        if self.project_writes:
            shown = ", ".join(self.project_writes[:5]) + (", ..." if len(self.project_writes) > 5 else "")
            line += (f"\n  warning: the trainer wrote into the project's own folders ({shown}); in a "
                     "container they come from the image, read-only, and these writes fail: write "
                     "outputs to paths of their own (docs/outputs.md)")
        return line


class RunFailed(KdistError):
    """The job ran and failed; the message names the root cause."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message)
        self.result = result


class Interrupted(KdistError):
    """SIGINT/SIGTERM stopped the run; exits 130/143 like a shell would."""

    def __init__(self, signum: int, result: RunResult) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; stopped every process "
                         f"of run {result.run_id}")
        self.exit_code = SIGNAL_EXIT.get(signal.Signals(signum), 128 + signum)
        self.result = result


class Console(Protocol):
    """Where the run's output goes; the CLI draws it, tests may collect it."""

    def log(self, source: str, line: str) -> None: ...

    def status(self, status: RunProgress, elapsed: float) -> None: ...

    def event(self, name: str, elapsed: float, fields: dict[str, Any]) -> None: ...


# ---- parsing of the fault-injection options ----------------------------------------------

_SECONDS_RE = re.compile(r"^(?P<n>\d+(\.\d+)?)(?P<unit>ms|s|m)?$")
_KILL_RE = re.compile(r"^(node-?)?(?P<node>\d+)@(?P<at>.+)$")


def parse_seconds(text: str, option: str) -> float:
    """`20s`, `20`, `1.5s`, `500ms`, `2m` -> seconds."""
    match = _SECONDS_RE.match(text.strip())
    if match is None:
        raise UsageError(f"{option}: expected a time like 20s, 1.5s or 2m, got {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match["unit"] or "s"]
    return float(match["n"]) * scale


def parse_kill(text: str) -> Kill:
    """`node-1@20s` (or `1@20`) -> Kill(node=1, at=20.0)."""
    match = _KILL_RE.match(text.strip())
    if match is None:
        raise UsageError(f"--kill: expected NODE@TIME like node-1@20s, got {text!r}")
    return Kill(int(match["node"]), parse_seconds(match["at"], "--kill"))


def check_options(plan: LaunchPlan, options: RunOptions) -> int:
    """The number of nodes to start; UsageError if the options cannot work with the spec."""
    nodes = plan.spec.nodes
    count = nodes.count if options.nodes is None else options.nodes
    if not nodes.min <= count <= nodes.max:
        raise UsageError(f"--nodes {count} is outside nodes {nodes} of the spec")
    total = count + len(options.add_nodes)
    if total > nodes.max:
        raise UsageError(f"--add-node would start {total} nodes; the spec allows at most "
                         f"{nodes.max} (nodes: {nodes})")
    for kill in options.kills:
        if kill.node >= total:
            raise UsageError(f"--kill node-{kill.node}: the run has nodes node-0..node-{total - 1}")
    return count


# Measured on 2 cores: 16 simulated nodes complete with 1 s keep-alives; 32 never settle (agents
# starved of CPU miss heartbeats, drop out of the round and rejoin); with 5 s x 3 they complete.
CROWDED_NODES_PER_CORE = 8
ROOMY_KEEP_ALIVE = (5, 3)  # interval (s), attempts: torch's own defaults


def roomy_plan(plan: LaunchPlan, nodes: int, cores: int) -> LaunchPlan | None:
    """The plan with 5 s x 3 keep-alives when the simulation crowds the cores, else None.

    Only for this host's simulation: the rendered targets keep the spec's timeouts.
    """
    rdzv = plan.spec.rendezvous
    interval, attempts = ROOMY_KEEP_ALIVE
    crowded = nodes * plan.spec.procs_per_node > CROWDED_NODES_PER_CORE * cores
    if not crowded or rdzv.keep_alive_interval * rdzv.keep_alive_max_attempt >= interval * attempts:
        return None
    roomy = dataclasses.replace(rdzv, keep_alive_interval=interval, keep_alive_max_attempt=attempts)
    return LaunchPlan(dataclasses.replace(plan.spec, rendezvous=roomy))


def resolve_entrypoint(plan: LaunchPlan, cwd: Path) -> LaunchPlan:
    """The plan with its entrypoint made absolute (nodes start in the job's working directory)."""
    path = Path(plan.spec.entrypoint)
    full = path if path.is_absolute() else (cwd / path).resolve()
    if not full.is_file():
        raise UsageError(f"entrypoint {plan.spec.entrypoint} not found (looked for {full}); "
                         "kdist run resolves it against the current directory")
    return LaunchPlan(dataclasses.replace(plan.spec, entrypoint=str(full)))


# ---- processes ---------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) from /proc/<pid>/stat, or None when the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def _environ(pid: int) -> set[bytes]:
    try:
        return set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return set()


def find_processes(roots: Iterable[int], markers: dict[str, str]) -> set[int]:
    """Live processes descending from `roots` or carrying every `markers` env entry."""
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _proc_stat(int(name))) is not None:
            table[int(name)] = stat
    wanted = {f"{k}={v}".encode() for k, v in markers.items()}
    found = {pid for pid in roots if pid in table}
    found |= {pid for pid in table if wanted and wanted <= _environ(pid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if table[pid][1] != "Z" and pid != os.getpid()}


def signal_processes(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(roots: Iterable[int], markers: dict[str, str]) -> int:
    """SIGKILL every matching process until none is left (new ones may appear meanwhile)."""
    roots, killed = list(roots), set()
    for _ in range(50):
        pids = find_processes(roots, markers)
        if not pids:
            break
        signal_processes(pids, signal.SIGKILL)
        killed |= pids
        time.sleep(0.02)
    return len(killed)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCAL_HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOCAL_HOST) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


@dataclass
class Proc:
    """One started process (a node's torchrun agent or the store) and its output pump."""

    name: str  # "node-1", "store"
    index: int  # node index; -1 for the store
    popen: subprocess.Popen[bytes]
    log_path: Path
    reader: threading.Thread
    started: float
    exit_code: int | None = None
    eof: bool = False
    killed: bool = False
    stopped: bool = False
    lost: bool = False
    exited_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.exit_code is not None and self.eof


def pump(stream: IO[bytes], log_path: Path, name: str, lines: queue.Queue[tuple[str, str | None]]
         ) -> None:
    """Copy a process's output to its log file and the queue, line by line; None at EOF."""
    with stream, open(log_path, "ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            lines.put((name, raw.decode("utf-8", "replace").rstrip("\r\n")))
    lines.put((name, None))


def start_process(name: str, index: int, argv: list[str], cwd: Path, env: dict[str, str],
                  log_path: Path, lines: queue.Queue[tuple[str, str | None]]) -> Proc:
    cwd.mkdir(parents=True, exist_ok=True)
    popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    assert popen.stdout is not None
    reader = threading.Thread(target=pump, args=(popen.stdout, log_path, name, lines),
                              name=f"kdist-{name}", daemon=True)
    reader.start()
    return Proc(name, index, popen, log_path, reader, time.monotonic())


@contextlib.contextmanager
def trap_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT/SIGTERM to `handler` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def listen_env(address: str) -> dict[str, str]:
    """What keeps the stores torch opens in a node's processes on `address` (not every
    interface): kdist/node/loopback/sitecustomize.py first on PYTHONPATH."""
    path = [str(LISTEN_SHIM), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"KDIST_LISTEN_HOST": address, "PYTHONPATH": os.pathsep.join(path)}


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def check_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise UsageError(f"kdist run needs torch in this Python ({sys.executable}): "
                         "pip install 'kdist[train]'")


# ---- the run -----------------------------------------------------------------------------


@dataclass
class Timer:
    at: float
    action: str  # "kill" | "add"
    node: int = -1


@dataclass
class LocalRun:
    """One `kdist run`: start the store and the nodes, watch them, stop them, judge the job."""

    plan: LaunchPlan
    options: RunOptions
    console: Console
    run_id: str = ""
    run_dir: Path = Path()
    port: int = 0
    status: RunProgress = field(default_factory=RunProgress)
    store: Proc | None = None
    nodes: list[Proc] = field(default_factory=list)
    lines: queue.Queue[tuple[str, str | None]] = field(default_factory=queue.Queue)
    timers: list[Timer] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    t0: float = 0.0
    reason: str = ""  # why kdist stopped the job early, if it did
    stopping: bool = False  # kdist is stopping the nodes: their last words go to the logs only
    store_lost_at: float = -1.0  # monotonic time the store was last found dead (-1: never)
    node_restarts: dict[int, int] = field(default_factory=dict)  # lost nodes started again
    metrics: IO[str] | None = None
    net: netsim.Placement = field(default_factory=netsim.HostNetwork)  # spec `network:`
    project: Path = Path()  # where kdist runs: the project folder
    outputs: Path = Path()
    linked: list[str] = field(default_factory=list)  # project entries linked by this run
    since: float = 0.0  # wall time the nodes were about to start

    def elapsed(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def run(self, count: int) -> RunResult:
        self.run_id = new_run_id(self.plan.name)
        self.run_dir = (self.options.run_dir or RUNS_DIR / self.run_id).resolve()
        self.outputs = outputs_dir(self.plan, self.options).resolve()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.options.fresh:
                shutil.rmtree(self.outputs, ignore_errors=True)
            self.outputs.mkdir(parents=True, exist_ok=True)
            earlier = any(not p.is_symlink() for p in self.outputs.iterdir())
            self.linked = link_project(str(self.project), str(self.outputs))
        except OSError as e:
            raise KdistError(f"cannot prepare {e.filename or self.run_dir}: {e.strerror}") from None
        self.since = time.time()
        self.event("outputs", path=str(outputs_dir(self.plan, self.options)), resumes=earlier)
        self.port = free_port()
        self.timers = sorted([Timer(k.at, "kill", k.node) for k in self.options.kills]
                             + [Timer(at, "add") for at in self.options.add_nodes],
                             key=lambda t: t.at)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics, \
                trap_signals(self.signals.append), \
                netsim.placement(self.plan.spec.network) as self.net:
            self.metrics = metrics
            try:
                self.start_store()
                self.t0 = time.monotonic()
                for _ in range(count if not self.signals else 0):
                    self.start_node()
                self.watch()
            finally:
                self.stop_all()
                self.metrics = None
        return self.result()

    # -- starting

    @property
    def workdir(self) -> Path:
        """Every node's working directory: the job's stand-in for the checkpoint volume, with a
        link to each top-level entry of the project (kdist/node/wait.py, link_project)."""
        return self.outputs

    def base_env(self) -> dict[str, str]:
        env = {**os.environ, **self.plan.env(), RUN_ID_ENV: self.run_id}
        env[CHECKPOINT_ENV] = str(self.workdir)
        return env

    def start_store(self) -> None:
        if not self.plan.standalone_store:
            return
        argv = [sys.executable, *self.plan.store_argv(self.port, bind=self.net.store_host)[1:]]
        self.store = start_process("store", -1, argv, self.run_dir, self.base_env(),
                                   self.run_dir / "store.log", self.lines)
        deadline = time.monotonic() + self.options.store_timeout
        while not port_open(self.port, self.net.store_host):
            self.drain(0.1)
            if self.signals:
                return
            if self.store.popen.poll() is not None or time.monotonic() > deadline:
                raise KdistError(f"the rendezvous store did not start on port {self.port}; "
                                 f"see {self.store.log_path}")

    def start_node(self, index: int | None = None) -> Proc:
        """Start node `index` (default: a new one); an existing index is started again."""
        index = len(self.nodes) if index is None else index
        is_host = index == 0 and not self.plan.standalone_store
        host = self.net.store_host if self.plan.standalone_store else self.net.node(0).address
        argv = self.plan.torchrun_argv(host, self.port, is_host=is_host)
        net = self.net.node(index)
        cmd = [*net.prefix, sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        node_dir = self.run_dir / f"node-{index}"
        tmp = node_dir / "tmp"  # the pod's private /tmp emptyDir
        tmp.mkdir(parents=True, exist_ok=True)
        # HOME stays the user's, as under plain torchrun: ~/.netrc, ~/.cache (Hugging Face,
        # torch hub) and tokens are where the trainer looks (pods: HOME=/tmp, docs/outputs.md)
        env = {**self.base_env(), **dict(net.env), NODE_RANK_ENV: str(index),
               "TORCHELASTIC_ERROR_FILE": str(node_dir / "error.json"), "TMPDIR": str(tmp),
               **listen_env(net.address)}
        proc = start_process(f"node-{index}", index, cmd, self.workdir, env,
                             self.run_dir / f"node-{index}.log", self.lines)
        if index < len(self.nodes):
            self.nodes[index] = proc
            self.status.nodes[index] = NodeProgress()
        else:
            self.nodes.append(proc)
        self.status.node(index)
        self.event("start", node=index, pid=proc.popen.pid, is_host=is_host)
        return proc

    def event(self, name: str, **fields: Any) -> None:
        """A kdist event: to the console and to metrics.jsonl (`kdist.<name>`)."""
        record = {"event": f"kdist.{name}", **fields}
        self.record(-1, record)
        self.console.event(name, self.elapsed(), fields)

    def record(self, node: int, metric: dict[str, Any]) -> None:
        if self.metrics is not None:
            line = {"node": node, "elapsed": round(self.elapsed(), 3), "wall": time.time(),
                    **metric}
            self.metrics.write(json.dumps(line, sort_keys=True) + "\n")
            self.metrics.flush()

    # -- watching

    def watch(self) -> None:
        """Until every node has exited and its output is read, or a signal arrives."""
        while not all(n.finished for n in self.nodes):
            self.drain(0.2)
            if self.signals:
                return
            self.fire_timers()
            self.supervise_store()
            self.reap()
            if self.should_stop():
                self.stop_nodes()
                return
            self.console.status(self.status, self.elapsed())

    def drain(self, timeout: float) -> None:
        """Hand queued output lines to the status model and the console."""
        try:
            item = self.lines.get(timeout=timeout)
            while True:
                self.take(*item)
                item = self.lines.get_nowait()
        except queue.Empty:
            return

    def take(self, name: str, line: str | None) -> None:
        proc = self.store if name == "store" else self.nodes[int(name.split("-")[1])]
        assert proc is not None
        if line is None:
            proc.eof = True
            return
        shown = [line]
        if proc.index >= 0:
            metric = self.status.observe(proc.index, line)
            if metric is not None:
                self.record(proc.index, metric)
            shown = self.status.nodes[proc.index].shown
            for event, fields in self.status.events:
                self.event(event, **fields)
            self.status.events.clear()
        if self.signals or self.stopping:
            return  # after Ctrl-C or a stop, the agents' tracebacks stay in the node logs
        for text in [line] if self.options.verbose else shown:
            self.console.log(name, text)

    def fire_timers(self) -> None:
        while self.timers and self.timers[0].at <= self.elapsed():
            timer = self.timers.pop(0)
            if timer.action == "add":
                if self.status.done:
                    self.event("add-node-skipped", reason="the job is done")
                else:
                    self.event("add-node", node=self.start_node().index)
            else:
                self.kill_node(timer.node)

    def kill_node(self, index: int) -> None:
        if index >= len(self.nodes) or self.nodes[index].popen.returncode is not None:
            self.event("kill-skipped", node=index, reason="not running")
            return
        proc = self.nodes[index]
        proc.killed = True
        markers = {RUN_ID_ENV: self.run_id, NODE_RANK_ENV: str(index)}
        count = kill_tree([proc.popen.pid], markers)
        self.event("kill", node=index, signal="SIGKILL", processes=count)

    def reap(self) -> None:
        for proc in self.nodes:
            if proc.exit_code is None and (code := proc.popen.poll()) is not None:
                proc.exit_code, proc.exited_at = code, self.elapsed()
                # torchrun stops its workers itself; sweep orphans so the pipe reaches EOF
                kill_tree([], {RUN_ID_ENV: self.run_id, NODE_RANK_ENV: str(proc.index)})
                if self.lost_to_store(proc):
                    self.restart_node(proc, "the rendezvous store was lost")
                    continue
                if (lost := self.lost(proc)) is not None:
                    self.leave_or_restart(proc, lost)
                    continue
                self.status.node_exited(proc.index, code, proc.killed)
                self.event("exit", node=proc.index, code=code, killed=proc.killed)

    # -- losing the store: the supervisor starts it again on the same port, as the Deployment
    # (k8s) and the restart policy (compose) do. torch's TCPStore clients never reconnect, so
    # every agent fails at its next look at the store; a node that failed that way is started
    # again (up to max_restarts times, as Kubernetes restarts its container) and its new agent
    # joins a fresh rendezvous round: training resumes from the last checkpoint.

    def supervise_store(self) -> None:
        store = self.store
        if store is None or store.popen.poll() is None:
            return
        self.store_lost_at = time.monotonic()
        self.event("store-lost", code=store.popen.returncode)
        store.reader.join(timeout=5)
        self.drain(0)
        self.start_store()
        if self.store is not None and self.store is not store:
            self.event("store-restart", pid=self.store.popen.pid, port=self.port)

    def lost_to_store(self, proc: Proc) -> bool:
        """Whether `proc` failed because the store went away (and has restarts left)."""
        return (proc.exit_code not in (None, 0) and not proc.killed and not proc.stopped
                and proc.started < self.store_lost_at and self.restarts_left(proc))

    def restarts_left(self, proc: Proc) -> bool:
        return self.node_restarts.get(proc.index, 0) < self.plan.spec.max_restarts

    def restart_node(self, proc: Proc, reason: str) -> None:
        proc.reader.join(timeout=5)  # its output first, while the index still names it
        self.drain(0)
        attempt = self.node_restarts.get(proc.index, 0) + 1
        self.node_restarts[proc.index] = attempt
        self.event("node-restart", node=proc.index, code=proc.exit_code, attempt=attempt,
                   reason=reason)
        self.start_node(proc.index)

    # -- losing a node from outside (the OOM killer, a kill, a dying host): kdist/policy.py's
    # rule. It leaves the job, which goes on while nodes.min remain; like a restarted pod or
    # container it is started again within max_restarts and joins the next round.

    def lost(self, proc: Proc) -> policy.Loss | None:
        if proc.exit_code in (None, 0) or proc.killed or proc.stopped or self.stopping:
            return None
        proc.reader.join(timeout=5)  # its last lines first: they may hold its own error
        self.drain(0)
        return policy.loss(proc.index, proc.exit_code, self.status.node(proc.index).log.failure())

    def leave_or_restart(self, proc: Proc, lost: policy.Loss) -> None:
        returns = self.restarts_left(proc)
        others = sum(1 for p in self.nodes if p.exit_code is None)
        self.event("lost", node=proc.index, code=proc.exit_code, why=lost.why,
                   message=lost.message(others, len(self.nodes), self.plan.spec.nodes.min, returns))
        if returns:
            self.restart_node(proc, f"it was lost ({lost.why})")
            return
        proc.lost = True
        self.status.node_exited(proc.index, proc.exit_code or 0, killed=True)

    def should_stop(self) -> bool:
        """True when the job's outcome is settled but some nodes would keep running."""
        self.reason = stop_reason(self.node_results(), self.plan.spec.nodes.min,
                                  any(t.action == "add" for t in self.timers),
                                  self.elapsed(), self.options.linger)
        if not self.reason and self.plan.spec.max_restarts > 0:
            logs = [self.status.node(p.index).log for p in self.nodes if not (p.killed or p.lost)]
            certain = certain_failure(logs)
            self.reason = f"{certain}; stopped the job instead of restarting" if certain else ""
        if not self.reason:
            alive = {p.index: self.status.node(p.index).log for p in self.nodes
                     if p.exit_code is None}
            self.reason = stuck_at_barrier(alive, self.plan.spec.nodes.min)
        if self.reason:
            self.reason += barrier_note(self.status)
        return bool(self.reason)

    # -- stopping

    def stop_nodes(self) -> None:
        self.stopping = True
        for proc in self.nodes:
            if proc.exit_code is None:
                proc.stopped = True
        self.stop_all()

    def processes(self) -> list[Proc]:
        return [*self.nodes, *([self.store] if self.store is not None else [])]

    def live_roots(self) -> list[int]:
        """Pids of our children not yet reaped (a reaped pid may belong to someone else now)."""
        return [p.popen.pid for p in self.processes() if p.popen.returncode is None]

    def stop_all(self) -> None:
        """SIGTERM every process of the run, wait up to the grace period, then SIGKILL."""
        markers = {RUN_ID_ENV: self.run_id}
        for proc in self.nodes:
            proc.stopped = proc.stopped or proc.exit_code is None
        signal_processes(find_processes(self.live_roots(), markers), signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace
        while time.monotonic() < deadline and len(self.signals) < 2:
            self.drain(0.1)
            self.reap()
            if not find_processes(self.live_roots(), markers):
                break
        kill_tree(self.live_roots(), markers)
        for proc in self.processes():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        self.reap()
        for proc in self.processes():
            proc.reader.join(timeout=5)
        self.drain(0)

    # -- judging

    def node_results(self) -> tuple[NodeResult, ...]:
        return tuple(NodeResult(p.index, p.exit_code, p.killed, p.stopped, p.exited_at, p.lost)
                     for p in self.nodes)

    def result(self) -> RunResult:
        nodes = self.node_results()
        interrupted = signal.Signals(self.signals[0]).name if self.signals else ""
        return RunResult(self.run_id, self.run_dir, nodes, self.status.step, self.elapsed(),
                         interrupted, len(self.status.rounds), self.status.restarts,
                         tuple(self.status.world_sizes), self.outputs,
                         project_writes(self.project, self.outputs, self.since))


def stop_reason(nodes: Sequence[NodeResult], minimum: int, adds_pending: bool,
                now: float, linger: float) -> str:
    """Why the nodes still running should be stopped now, or "" to let them run.

    The outcome is settled when a node failed by itself (the job cannot succeed any more),
    or when fewer than nodes.min are left and none will be added (rendezvous would wait for
    join_timeout). After a node finished successfully the others get `linger` seconds
    (torchrun's exit barrier holds them only until all are done). A lost store is no reason:
    supervise_store starts it again and nodes that failed with it are restarted.
    """
    running = [n for n in nodes if n.exit_code is None]
    if not running:
        return ""
    failed = [n for n in nodes if n.exit_code not in (None, 0) and not n.left]
    if failed:
        return f"node-{failed[0].index} failed; stopped the other nodes"
    done = [n for n in nodes if n.exit_code == 0]
    if done:
        if now - min(n.at for n in done) <= linger:
            return ""
        names = ", ".join(f"node-{n.index}" for n in running)
        return f"{names} still running {linger:.0f}s after node-{done[0].index} finished"
    return "" if adds_pending else policy.too_few(len(running), minimum)


def run_local(plan: LaunchPlan, options: RunOptions, console: Console) -> RunResult:
    """Run the job on this host; RunFailed/Interrupted unless it succeeded."""
    check_torch()
    netsim.check_available(plan.spec.network)
    count = check_options(plan, options)
    plan = resolve_entrypoint(plan, Path.cwd())
    check_outputs_free(plan, options)
    run = LocalRun(plan, options, console, project=Path.cwd().resolve())
    result = run.run(count)
    if run.signals:
        raise Interrupted(run.signals[0], result)
    if not result.succeeded:
        raise RunFailed(failure_message(result, run.reason), result)
    return result


def outputs_dir(plan: LaunchPlan, options: RunOptions) -> Path:
    """The nodes' working directory: the job's, kept across runs (a second run resumes from its
    checkpoint, as `kdist up` and `kdist apply` do), or RUN_DIR/checkpoints with --run-dir."""
    if options.run_dir is not None:
        return options.run_dir / "checkpoints"
    return JOBS_DIR / plan.name / "checkpoints"


def check_outputs_free(plan: LaunchPlan, options: RunOptions) -> None:
    """Two runs of one job would write into the same outputs: refuse the second."""
    if options.run_dir is not None:
        return
    if running := running_jobs(plan.name, RUN_ID_ENV):
        raise UsageError(f"job {plan.name} is already running here (run {min(running)}), with "
                         f"its outputs in {outputs_dir(plan, options)}: wait for it, stop it, or "
                         "give this run a folder of its own with --run-dir")


def project_writes(project: Path, outputs: Path, since: float) -> tuple[str, ...]:
    """Files under the project's folders that the working directory links to, written since
    `since` (what a node's trainer wrote through a link; byte code and hidden folders aside)."""
    found = []
    for link in sorted(outputs.iterdir()) if outputs.is_dir() else []:
        target = Path(os.path.realpath(link))
        if not link.is_symlink() or not target.is_dir() or link.name.startswith("."):
            continue
        if project not in target.parents:
            continue
        for folder, dirs, files in os.walk(target):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            for name in files:
                path = Path(folder, name)
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime >= since:
                        found.append(str(path.relative_to(project)))
    return tuple(found)


def failure_message(result: RunResult, reason: str) -> str:
    """The root cause: the node whose own failure started it, its rank, error and traceback.

    Among nodes that failed by themselves, a genuine error comes before an error caused by a
    lost peer (gloo's "Connection closed by peer"), then the earliest failure in time.
    """
    failed = failed_nodes(result)
    if not failed:
        return f"the job failed: {reason or 'no node finished successfully'}"
    (first, cause), *others = failed
    lines = [f"node-{first.index} failed (torchrun exit code {first.exit_code}): "
             + (cause.summary() if cause else "no failure in its log")]
    for other, more in others:
        rank = f"rank {more.rank}, " if more and more.rank is not None else ""
        error = f": {more.exception}" if more and more.exception else ""
        lines.append(f"  also failed: node-{other.index} ({rank}exit code {other.exit_code}){error}")
    lines.append(f"  log: {result.run_dir / f'node-{first.index}.log'}")
    if reason:
        lines.append(f"  kdist: {reason}")
    return "\n".join(lines)


def failed_nodes(result: RunResult) -> list[tuple[NodeResult, Failure | None]]:
    """Nodes whose workers failed, with their failures, the job's root cause first.

    Nodes kdist stopped count too when their log shows a failure (fail-fast stops them)."""
    causes = {n.index: node_failure(result.run_dir, n.index) for n in result.nodes if not n.left}
    failed = [n for n in result.nodes if not n.left and n.exit_code != 0
              and (not n.stopped or causes[n.index] is not None)]
    ordered: list[tuple[NodeResult, Failure | None]] = []
    rest = [(n, causes[n.index]) for n in failed]
    while rest:
        at = first_failure([(f"node-{n.index}", c) for n, c in rest])
        ordered.append(rest.pop(at or 0))
    return ordered


def node_failure(run_dir: Path, index: int) -> Failure | None:
    """The node's own failure from its log, the traceback filled from error.json (@record)."""
    try:
        text = (run_dir / f"node-{index}.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    failure = NodeLog().feed_all(text.splitlines()).failure()
    if failure is not None and not failure.traceback:
        stack = error_file_traceback(run_dir / f"node-{index}" / "error.json")
        failure = dataclasses.replace(failure, traceback=stack)
    return failure


def error_file_traceback(path: Path) -> tuple[str, ...]:
    """The traceback lines of a torchelastic error file (the agent's copy of the worker's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        stack = message.get("extraInfo", {}).get("py_callstack") or message.get("message", "")
        return tuple(clean_traceback(str(stack).splitlines()))
    return (str(message),) if message else ()
