"""The Compose target's job: runs `docker` and `docker compose` (kdist.targets.compose.dev_job
adds --dev).

Every function returns data or raises a KdistError subclass whose message says what went wrong
and what to do; nothing here prints or exits (kdist/cli/compose.py turns the data into output).

The compose file for a job lives at `.kdist/compose/<name>/docker-compose.yaml` under the folder
kdist runs in (the project directory: the spec's `compose.build.context` is relative to it), next
to `stopped.json`, which records the nodes kdist stopped on purpose (`kdist kill`, `kdist scale`)
so that their exit codes do not count against the job.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdist.errors import KdistError, UsageError
from kdist.fsio import write_all
from kdist.plan import STORE_COMPONENT, LaunchPlan
from kdist.status import FAILED, NOT_STARTED, RUNNING, STOPPED, JobFailed, JobState, ScaleChange
from kdist.targets import LogQuery
from kdist.targets.compose.dev_render import DEV_PROFILE
from kdist.targets.compose.netem import helper_name
from kdist.targets.compose.render import SCALE_PROFILE, node_service
from kdist.targets.compose.status import Container, JobStatus, NodeStatus, to_state
from kdist.torchlog import NodeLog, error_line, is_peer_error, root_cause

STATE_DIR = Path(".kdist") / "compose"
COMPOSE_FILE = "docker-compose.yaml"
MARKS_FILE = "stopped.json"
DEV_TOKEN_FILE = "dev-token"  # `kdist up --dev`: the JupyterLab token, mode 0600
KILLED = "killed by kdist kill"
SCALED_DOWN = "stopped by kdist scale"
INTERRUPTED = "stopped: kdist up was interrupted"
HOPELESS = "stopped by kdist: the job could not succeed any more"
FAILING = "failing"  # a node kdist stopped after its own error: its exit still counts as failed
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PREFIX_RE = re.compile(r"^(?P<svc>[A-Za-z0-9][-A-Za-z0-9_.]*?)-(?P<num>\d+)\s*\|\s?(?P<text>.*)$")
EXITED_RE = re.compile(r"^(?P<svc>[A-Za-z0-9][-A-Za-z0-9_.]*?)-\d+ exited with code (?P<code>-?\d+)$")
SIGTERM_EXIT = 143  # a container stopped with SIGTERM (docker compose stop)
INSPECT_TIMEOUT = 60.0
COMMAND_TIMEOUT = 600.0


# ---- errors ------------------------------------------------------------------------------------


class DockerError(KdistError):
    """`docker` or `docker compose` failed; the message says why and what to do."""


class DockerUnavailable(DockerError):
    """No usable Docker Engine, or no Compose v2."""

    exit_code = 3


class ImageMissing(DockerError):
    """The job's image is not on this machine and could not be pulled."""


class PortInUse(DockerError):
    """A port the project publishes is taken on this host."""


def _tail(text: str, lines: int = 3) -> str:
    kept = [ANSI_RE.sub("", x).strip() for x in text.strip().splitlines() if x.strip()]
    return " / ".join(kept[-lines:]) or "no output"


def explain(output: str, action: str, image: str = "") -> DockerError:
    """Map docker's error output to an error with a clear cause and a next step (pure)."""
    low = output.lower()
    if "cannot connect to the docker daemon" in low or "is the docker daemon running" in low \
            or "error during connect" in low:
        return DockerUnavailable(f"the Docker engine is not running or not reachable "
                                 f"({_tail(output, 1)}): start it (`sudo systemctl start docker`) or "
                                 "point DOCKER_HOST at it")
    if "permission denied" in low and ("docker.sock" in low or "docker daemon" in low):
        return DockerUnavailable("permission denied on the Docker socket: add your user to the "
                                 "`docker` group (then log in again) or use rootless Docker")
    if "port is already allocated" in low or "address already in use" in low:
        port = re.search(r"(?:0\.0\.0\.0|\[::\]|127\.0\.0\.1)?:(\d+)", output)
        which = f"port {port.group(1)}" if port else "a published port"
        return PortInUse(f"{action}: {which} is already in use on this host; stop what holds it "
                         f"(`docker ps`, `ss -ltnp`) or change the port ({_tail(output, 1)})")
    pulling = ("pull access denied", "repository does not exist", "manifest unknown",
               "not found: manifest", "failed to resolve reference", "no such host",
               "error pulling image", "registry-1.docker.io", "no such image")
    if any(p in low for p in pulling):
        what = f"image {image}" if image else "the image"
        return ImageMissing(f"{what} is not on this machine and could not be pulled "
                            f"({_tail(output, 1)}): build it (`docker build -t {image or 'IMAGE'} "
                            "-f trainers/Dockerfile .`), or add compose.build to the spec and run "
                            "`kdist up --build`")
    if "is not a docker command" in low and "compose" in low:
        return DockerUnavailable(COMPOSE_MISSING)
    return DockerError(f"{action} failed: {_tail(output)}")


COMPOSE_MISSING = ("Docker Compose v2 is not installed (`docker compose version` fails): install "
                   "the Compose plugin (Debian/Ubuntu: docker-compose-plugin or docker-compose-v2)")


# ---- running docker ----------------------------------------------------------------------------


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a docker command to completion, capturing its output; a missing binary is explained."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False, env=env)
    except FileNotFoundError:
        raise DockerUnavailable(f"`{argv[0]}` is not on PATH: install Docker Engine with the "
                                "Compose v2 plugin") from None
    except subprocess.TimeoutExpired:
        raise DockerError(f"`{' '.join(argv[:3])}` did not finish within {timeout:.0f} s; "
                          "is the Docker engine healthy?") from None


def _major(version: str) -> int:
    match = re.match(r"v?(\d+)", version.strip())
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Engine:
    """A Docker Engine that answers, and how to call Compose v2 on this machine."""

    server_version: str
    compose: tuple[str, ...]  # ("docker", "compose") or a standalone v2 docker-compose
    compose_version: str


def detect() -> Engine:
    """Check that the engine answers and Compose v2 exists, or say exactly what is missing."""
    if shutil.which("docker") is None:
        raise DockerUnavailable("the `docker` CLI is not on PATH: install Docker Engine with the "
                                "Compose v2 plugin")
    info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=INSPECT_TIMEOUT)
    server = info.stdout.strip()
    if info.returncode != 0 or not server or "error" in server.lower():
        error = explain(info.stderr + info.stdout, "docker info")
        if isinstance(error, DockerUnavailable):
            raise error
        raise DockerUnavailable(f"the Docker engine does not answer: {error}")
    plugin = run(["docker", "compose", "version", "--short"], timeout=INSPECT_TIMEOUT)
    if plugin.returncode == 0 and _major(plugin.stdout) >= 2:
        return Engine(server, ("docker", "compose"), plugin.stdout.strip().lstrip("v"))
    legacy = shutil.which("docker-compose")
    if legacy is None:
        raise DockerUnavailable(COMPOSE_MISSING)
    version = run([legacy, "version", "--short"], timeout=INSPECT_TIMEOUT).stdout.strip()
    if _major(version) >= 2:
        return Engine(server, (legacy,), version.lstrip("v"))
    raise DockerUnavailable(f"found Compose v1 ({legacy}, version {version or 'unknown'}), which "
                            "kdist does not support: install Compose v2 (the `docker compose` "
                            "plugin: docker-compose-plugin or docker-compose-v2)")


class _Lines:
    """A process whose merged stdout/stderr is read line by line on a thread (for polling)."""

    EOF = object()

    def __init__(self, argv: Sequence[str]) -> None:
        try:
            self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                         errors="replace")
        except FileNotFoundError:
            raise DockerUnavailable(f"`{argv[0]}` is not on PATH") from None
        self.queue: queue.Queue[object] = queue.Queue()
        self.tail: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(self.EOF)

    def get(self, timeout: float) -> object:
        """The next line, `EOF`, or None when nothing arrived within `timeout`."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, str):
            self.tail = [*self.tail[-39:], item]
        return item

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


# ---- pure helpers ------------------------------------------------------------------------------


def parse_ps(text: str) -> list[dict[str, Any]]:
    """`docker compose ps --format json`: one object per line (v2.21+) or one JSON array."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
        return [r for r in rows if isinstance(r, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def clean_line(line: str, width: int = 0) -> str:
    """A compose log line as `node-1 | text`: the container number and colour codes dropped."""
    line = ANSI_RE.sub("", line).rstrip("\r")
    match = PREFIX_RE.match(line)
    if match:
        return f"{match.group('svc'):<{width}} | {match.group('text')}"
    exited = EXITED_RE.match(line)
    if exited:
        return f"{exited.group('svc'):<{width}} | (container exited with code {exited.group('code')})"
    return line


def log_text(line: str) -> str:
    """The container's own text of a cleaned log line (without the `node-1 | ` prefix)."""
    head, sep, text = line.partition(" | ")
    return text if sep and " " not in head.strip() else line


def node_index(service: str) -> int:
    return int(service.rsplit("-", 1)[1]) if re.fullmatch(r"node-\d+", service) else -1


# ---- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """A job's Compose project: its name, where its file lives, and the shape from the spec."""

    name: str
    workdir: Path  # --project-directory: build contexts in the spec are relative to it
    nodes: tuple[str, ...]  # every node service, node-0 .. node-{max-1}
    min_nodes: int
    max_nodes: int
    count: int  # nodes started by `up`; the others live in the `scale` profile
    store: str  # the standalone store's service, "" when node 0 hosts the store
    image: str
    memory: str
    netem: bool = False  # spec `network:`: each node has a `node-N-netem` helper service

    @property
    def dir(self) -> Path:
        return self.workdir / STATE_DIR / self.name

    @property
    def file(self) -> Path:
        return self.dir / COMPOSE_FILE

    @property
    def services(self) -> tuple[str, ...]:
        return ((self.store,) if self.store else ()) + self.nodes

    @property
    def volume(self) -> str:
        """The checkpoint volume's engine name (Compose prefixes the project name)."""
        return f"{self.name}_checkpoints"


def project_for(plan: LaunchPlan, workdir: Path) -> Project:
    s = plan.spec
    return Project(
        name=plan.name, workdir=workdir.resolve(),
        nodes=tuple(node_service(i) for i in range(s.nodes.max)),
        min_nodes=s.nodes.min, max_nodes=s.nodes.max, count=s.nodes.count,
        store=STORE_COMPONENT if plan.standalone_store else "", image=s.image,
        memory=s.resources.memory, netem=s.network is not None,
    )  # fmt: skip


def _purpose(mark: str) -> str:
    """Why kdist stopped a node on purpose, from its mark ("" for a node stopped after its own
    error: that is not on purpose)."""
    return "" if mark == FAILING else mark


def _cause_rank(item: tuple[NodeStatus, tuple[list[str], int]]) -> tuple[bool, bool, str]:
    """Order failed nodes: OOM first, then real errors before peers' follow-on errors, then time."""
    node, (block, _) = item
    c = node.container
    return (not (c is not None and c.oom_killed), is_peer_error(block), c.finished_at if c else "")


# ---- the job -----------------------------------------------------------------------------------


class ComposeJob:
    """One job's Compose project on this machine's engine: start, watch, scale, kill, remove."""

    def __init__(self, project: Project, engine: Engine) -> None:
        self.project = project
        self.engine = engine
        self._snap: dict[str, Any] | None = None  # within snapshot(): containers, logs

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, the containers and the finished logs are read once and reused: `kdist
        status` is one `ps`, one `inspect` and one `logs` whatever it shows."""
        self._snap = {}
        try:
            yield
        finally:
            self._snap = None

    @classmethod
    def open(cls, plan: LaunchPlan, workdir: Path, rewrite: bool = False) -> ComposeJob:
        """Check the engine, then use the job's compose file (rendered when missing or `rewrite`).

        Commands other than `up` keep the file `up` wrote: it describes what is running.
        """
        from kdist.targets import render

        job = cls(project_for(plan, workdir), detect())
        if rewrite or not job.project.file.exists():
            job.write_file(render(plan, "compose"))
        return job

    def write_file(self, text: str) -> None:
        write_all({self.project.file: text})

    # -- plumbing

    def compose(self, *args: str, profile: bool = True) -> list[str]:
        """The full `docker compose` argv for this project (with the scale and dev profiles by default)."""
        p = self.project
        argv = [*self.engine.compose, "--ansi", "never", "--project-name", p.name,
                "--file", str(p.file), "--project-directory", str(p.workdir)]
        if profile:  # `dev` too: down, stop and logs include `kdist up --dev`'s JupyterLab
            argv += ["--profile", SCALE_PROFILE, "--profile", DEV_PROFILE]
        return argv + list(args)

    def _check(self, *args: str, action: str, profile: bool = True) -> subprocess.CompletedProcess[str]:
        result = run(self.compose(*args, profile=profile))
        if result.returncode != 0:
            raise explain(result.stderr + result.stdout, action, self.project.image)
        return result

    def _inspect(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`docker inspect` by container id (short ids as keys); vanished containers are left out."""
        if not ids:
            return {}
        result = run(["docker", "inspect", *ids], timeout=INSPECT_TIMEOUT)
        try:
            rows = json.loads(result.stdout or "[]")
        except ValueError:
            return {}
        return {str(r.get("Id", ""))[:12]: r for r in rows if isinstance(r, dict)}

    def containers(self) -> list[Container]:
        if self._snap is not None and "containers" in self._snap:
            return list(self._snap["containers"])
        found = self._read_containers()
        if self._snap is not None:
            self._snap["containers"] = found
        return found

    def _read_containers(self) -> list[Container]:
        rows = parse_ps(self._check("ps", "--all", "--format", "json", action="docker compose ps").stdout)
        details = self._inspect([str(r["ID"]) for r in rows if r.get("ID")])
        out = []
        for r in rows:
            d = details.get(str(r.get("ID", ""))[:12], {})
            state = d.get("State") or {}
            out.append(Container(
                service=str(r.get("Service", "")), name=str(r.get("Name", "")),
                id=str(r.get("ID", "")), state=str(state.get("Status") or r.get("State", "")).lower(),
                exit_code=int(state.get("ExitCode", r.get("ExitCode")) or 0),
                health=str(r.get("Health") or ""), restarts=int(d.get("RestartCount") or 0),
                oom_killed=bool(state.get("OOMKilled")), finished_at=str(state.get("FinishedAt", "")),
            ))  # fmt: skip
        return out

    def oom_kills(self, service: str) -> int:
        """How many times the kernel's OOM killer struck in the service's container. Docker sets
        State.OOMKilled only once the container exits; its `oom` events come at once."""
        container = next((c for c in self.containers() if c.service == service), None)
        if container is None:
            return 0
        got = run(["docker", "events", "--since", "0", "--until", str(int(time.time()) + 1),
                   "--filter", f"container={container.id}", "--filter", "event=oom",
                   "--format", "{{.Status}}"], timeout=INSPECT_TIMEOUT)
        return got.stdout.split().count("oom") if got.returncode == 0 else 0

    def marks(self) -> dict[str, str]:
        """Nodes kdist stopped on purpose, with the reason."""
        try:
            data = json.loads((self.project.dir / MARKS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _set_marks(self, marks: dict[str, str]) -> None:
        write_all({self.project.dir / MARKS_FILE: json.dumps(marks, indent=2, sort_keys=True) + "\n"})

    def _mark(self, services: Sequence[str], reason: str | None) -> None:
        marks = self.marks()
        for service in services:
            if reason:
                marks[service] = reason
            else:
                marks.pop(service, None)
        self._set_marks(marks)

    def resolve(self, node: str) -> str:
        """`node-1`, `1` or `rdzv` -> the service name, or a UsageError listing the choices."""
        service = node_service(int(node)) if node.isdigit() else node
        if service not in self.project.services:
            raise UsageError(f"unknown node {node!r}: job {self.project.name} has "
                             f"{', '.join(self.project.services)}")
        return service

    # -- queries

    def state(self) -> JobState:
        """The job in kdist's one status model (kdist/status.py)."""
        return to_state(self.status(), self.project.name, self.project.min_nodes)

    def read_logs(self, query: LogQuery) -> Iterator[str]:
        if not self.containers():
            raise UsageError(f"job {self.project.name} has no containers (not started, or removed "
                             "by kdist down): `kdist up` starts it")
        return self.logs(follow=query.follow, services=query.nodes, tail=query.tail,
                         timestamps=query.timestamps)

    def status(self) -> JobStatus:
        by_service: dict[str, Container] = {}
        for c in self.containers():
            by_service.setdefault(c.service, c)
        marks = self.marks()
        nodes = tuple(NodeStatus(s, by_service.get(s), _purpose(marks.get(s, "")),
                                 i >= self.project.count, s in marks)
                      for i, s in enumerate(self.project.nodes))
        store = by_service.get(self.project.store) if self.project.store else None
        return JobStatus(self.project.name, store, nodes)

    def logs(self, follow: bool = False, services: Sequence[str] = (), tail: int | None = None,
             timestamps: bool = False) -> Generator[str, None, None]:
        """Log lines as `node-1 | text` (all services by default); with `follow`, until Ctrl-C."""
        if self._snap is not None and not follow and not timestamps:
            yield from self._snapshot_logs(services, tail)
            return
        yield from self._read_logs(follow, services, tail, timestamps)

    def _read_logs(self, follow: bool, services: Sequence[str], tail: int | None,
                   timestamps: bool) -> Generator[str, None, None]:
        args = ["logs", "--no-color", *(["--follow"] if follow else []),
                *(["--tail", str(tail)] if tail is not None else []),
                *(["--timestamps"] if timestamps else [])]
        width = max(len(s) for s in self.project.services)
        lines = _Lines(self.compose(*args, *(self.resolve(s) for s in services)))
        try:
            while (item := lines.get(timeout=1.0)) is not _Lines.EOF:
                if isinstance(item, str):
                    yield clean_line(item, width)
        finally:
            code = lines.close()
        if code != 0:
            raise explain("\n".join(lines.tail), "docker compose logs", self.project.image)

    def _snapshot_logs(self, services: Sequence[str], tail: int | None) -> list[str]:
        """The snapshot's one reading of every service's log, cut to `services` and `tail`."""
        assert self._snap is not None
        if "logs" not in self._snap:
            self._snap["logs"] = list(self._read_logs(False, (), None, False))
        lines: list[str] = self._snap["logs"]
        wanted = {self.resolve(s) for s in services}
        of = [line.partition("|")[0].strip() for line in lines]  # each line's service
        left = {s: of.count(s) for s in set(of)}  # lines still to come, per service
        out = []
        for line, service in zip(lines, of, strict=True):
            left[service] -= 1
            if (not wanted or service in wanted) and (tail is None or left[service] < tail):
                out.append(line)
        return out  # in the order docker compose printed them, as without a snapshot

    # -- actions

    def up(self, build: bool | None = None, on_output: Callable[[str], None] | None = None) -> JobStatus:
        """Start the store and the first `nodes.count` nodes, detached (build first if needed).

        Containers of an earlier run are removed first (volumes stay: the job resumes from its
        checkpoint); a job that is still running is an error, not a restart.
        """
        before = self.status()
        if before.phase == RUNNING:
            raise DockerError(f"job {self.project.name} is already running: `kdist status` shows it, "
                              "`kdist down` stops it")
        if before.phase != NOT_STARTED or before.store is not None:
            self._check("down", "--remove-orphans", "--timeout", "10", action="docker compose down")
        self._set_marks({})
        flags = {True: ["--build"], False: ["--no-build"], None: []}[build]
        progress = ["--progress", "plain"] if _version(self.engine.compose_version) >= (2, 20) else []
        argv = self.compose("up", "--detach", *flags, profile=False)
        argv[len(self.engine.compose):len(self.engine.compose)] = progress
        lines = _Lines(argv)
        while (item := lines.get(timeout=1.0)) is not _Lines.EOF:
            if isinstance(item, str) and on_output is not None:
                on_output(ANSI_RE.sub("", item))
        if lines.close() != 0:
            raise explain("\n".join(lines.tail), "docker compose up", self.project.image)
        return self.status()

    def follow(self, poll: float = 2.0, drain: float = 10.0) -> Generator[str, None, None]:
        """The nodes' logs, live, until no node container runs any more.

        Should `docker compose logs -f` end while nodes still run (killed, an engine hiccup), it
        is started again from that moment on, so the watch never ends early.
        """
        width = max(len(s) for s in self.project.services)
        since: list[str] = []
        while True:
            yield from self._follow_once(since, width, poll, drain)
            if self.status().phase != RUNNING:
                return
            time.sleep(min(poll, 1.0))
            since = ["--since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))]

    def _follow_once(self, since: list[str], width: int, poll: float,
                     drain: float) -> Generator[str, None, None]:
        lines = _Lines(self.compose("logs", "--follow", "--no-color", *since, *self.project.nodes))
        next_poll, deadline = time.monotonic() + poll, float("inf")
        try:
            while (item := lines.get(timeout=0.5)) is not _Lines.EOF:
                if isinstance(item, str):
                    yield clean_line(item, width)
                now = time.monotonic()
                if now >= next_poll and deadline == float("inf"):
                    next_poll = now + poll
                    if self.status().phase != RUNNING:
                        deadline = now + drain  # `logs -f` ends by itself; this is a backstop
                if now > deadline:
                    break
        finally:
            lines.close()

    def finish(self) -> JobStatus:
        """Once no node runs: stop the store (it would serve nobody) and report the job."""
        status = self.status()
        if self.project.store and status.phase != RUNNING:
            self._check("stop", "--timeout", "10", self.project.store, action="docker compose stop")
            status = self.status()
        return status

    def stop(self, reason: str = INTERRUPTED, failed: Sequence[str] = ()) -> None:
        """Stop every container (Ctrl-C on an attached `kdist up`); containers and logs stay.

        Running nodes are marked as stopped on purpose, but for `failed` (their own failure
        stopped the job: their exit codes count, and the signal is not a loss)."""
        running = [n.service for n in self.status().nodes if n.running]
        self._mark([s for s in running if s not in failed], reason)
        self._mark([s for s in running if s in failed], FAILING)
        self._check("stop", "--timeout", "30", action="docker compose stop")

    def failure(self, status: JobStatus | None = None) -> JobFailed | None:
        """None when the job did not fail; else the failing node's root cause and exit code."""
        status = self.status() if status is None else status
        if status.phase == STOPPED:
            return JobFailed(f"job {status.name} did not finish: every node that ran was stopped "
                             "on purpose (kdist kill, kdist scale or an interrupted kdist up)")
        failed = status.failed_nodes
        if status.phase != FAILED or not failed:
            return None
        if not any(n.failed for n in failed):  # only lost nodes: too few were left
            lost = "; ".join(f"{n.service} lost ({n.lost})" for n in failed)
            return JobFailed(f"job {status.name} failed: {lost}; fewer than nodes.min="
                             f"{self.project.min_nodes} nodes were left to finish it",
                             failed[0].exit_code or 1, failed[0].service)
        # a node kdist stopped because the job could not succeed may hold the first failure
        stopped = [n for n in status.nodes if n.stopped_by == HOPELESS and n.container is not None]
        node, (block, code) = min(((n, self._cause(n)) for n in [*failed, *stopped]),
                                  key=_cause_rank)
        codes = ", ".join(f"{n.service} exited with code {n.exit_code}" for n in failed)
        head = f"job {status.name} failed ({codes}); root cause on {node.service}: "
        lines = [head + (error_line(block) or "see `kdist logs`"), *(f"  {b}" for b in block)]
        return JobFailed("\n".join(lines), code, node.service, block)

    def _cause(self, node: NodeStatus) -> tuple[list[str], int]:
        """The node's root cause, and the exit code kdist exits with for it: its container's,
        but when that is 143 (kdist stops a failing node's torchrun once the job cannot succeed)
        the worker's own, from the same log."""
        c, code = node.container, node.exit_code or 1
        if c is not None and c.oom_killed:
            return [f"MemoryError: out of memory: the kernel killed {node.service} at its memory "
                    f"limit (resources.memory: {self.project.memory}); raise it"], code
        texts = [log_text(x) for x in self.logs(services=[node.service], tail=2000)]
        block = root_cause(texts)
        if not block and node.exit_code == 137:
            block = [f"{node.service} was killed with SIGKILL (exit 137) by something other than kdist"]
        worker = NodeLog().feed_all(texts).failure() if code == SIGTERM_EXIT else None
        return block, worker.exit_code if worker is not None and worker.exit_code > 0 else code

    def down(self, volumes: bool = False) -> None:
        """Remove the job's containers and network (and its checkpoint volume with `volumes`)."""
        args = ["down", "--remove-orphans", "--timeout", "10", *(["--volumes"] if volumes else [])]
        self._check(*args, action="docker compose down")
        for state in (MARKS_FILE, DEV_TOKEN_FILE):
            (self.project.dir / state).unlink(missing_ok=True)

    def volume_exists(self) -> bool:
        """Whether the checkpoint volume (the job's working directory) is on the engine."""
        got = run(["docker", "volume", "inspect", self.project.volume], timeout=INSPECT_TIMEOUT)
        return got.returncode == 0

    def kill(self, node: str, signal: str = "SIGKILL") -> str:
        """Chaos: send `signal` to one running node (or the store); returns the service name."""
        service = self.resolve(node)
        containers = {c.service: c for c in self.containers()}
        current = containers.get(service)
        if current is None or not current.active:
            state = current.state if current is not None else "not created"
            raise DockerError(f"{service} is not running ({state}); `kdist status` lists the nodes")
        if service in self.project.nodes:
            self._mark([service], KILLED)  # before the kill: a watcher must never see it unmarked
        self._check("kill", "--signal", signal, service, action=f"docker compose kill {service}")
        return service

    def scale(self, n: int) -> ScaleChange:
        """Run `n` nodes (within MIN:MAX): start the lowest stopped ones or stop the highest."""
        p = self.project
        if not p.min_nodes <= n <= p.max_nodes:
            allowed = (f"allows {p.min_nodes} to {p.max_nodes} (nodes: \"{p.min_nodes}:{p.max_nodes}\")"
                       if p.min_nodes < p.max_nodes else f"fixes it at {p.min_nodes} (nodes: {p.min_nodes})")
            raise UsageError(f"cannot scale {p.name} to {n} nodes: its spec {allowed}")
        status = self.status()
        if status.phase != RUNNING:
            raise DockerError(f"job {p.name} is not running ({status.phase}); start it with `kdist up`")
        running = [x.service for x in status.nodes if x.running]
        if n > len(running):
            start = tuple([s for s in p.nodes if s not in running][: n - len(running)])
            self._mark(start, None)
            helpers = [helper_name(s) for s in start] if p.netem else []
            self._check("up", "--detach", "--no-recreate", "--no-deps", *start, *helpers,
                        action="docker compose up")
            return ScaleChange(len(running), len(running) + len(start), started=tuple(start))
        stop = tuple(sorted(running, key=node_index)[n:])
        if stop:
            self._mark(stop, SCALED_DOWN)
            self._check("stop", "--timeout", "60", *stop, action="docker compose stop")
        return ScaleChange(len(running), len(running) - len(stop), stopped=tuple(stop))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3]) or (0,)
