"""`kdist up | down | kill`: the job as a Docker Compose project (`status`, `logs` and `scale`
are kdist/cli/jobs.py's, for every target).

The commands only turn kdist.targets.compose.job's data into output; library errors (KdistError)
become messages and exit codes in kdist.cli's group.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kdist import jsonout
from kdist.cli import dev as cli_dev
from kdist.cli.jsonlines import JsonLines, current, json_lines
from kdist.cli.options import load_plan, printable, spec_option
from kdist.errors import KdistError
from kdist.targets import NODE_LINE

if TYPE_CHECKING:  # the backend is imported lazily: `kdist --help` stays fast
    from kdist.plan import LaunchPlan
    from kdist.progress import RunProgress
    from kdist.targets.compose.job import ComposeJob
    from kdist.targets.compose.status import JobStatus
    from kdist.torchlog import NodeLog


def _open(spec_file: Path, rewrite: bool = False, plan: LaunchPlan | None = None) -> ComposeJob:
    """The job of `spec_file` (or of the `plan` already loaded from it)."""
    from kdist.targets.compose.job import ComposeJob

    return ComposeJob.open(plan or load_plan(spec_file), Path.cwd(), rewrite=rewrite)


EXITED_TEXT = re.compile(r"^\(container exited with code (-?\d+)\)$")


def _follow_with_status(job: ComposeJob, verbose: bool = False) -> None:
    """Node log lines on stdout and, on a terminal, the same live status line as `kdist run`.

    Quiet like `kdist run`: torchrun's agent lines only with `verbose` (`kdist logs` has them
    all). With `--output json`: the lines on stderr, status snapshots and events as JSON lines.
    Once the job cannot succeed any more (a node failed by itself, or a failure certain to
    repeat), the other nodes are stopped instead of waiting in torchrun's exit barrier.
    """
    from kdist.cli.console import TerminalConsole
    from kdist.progress import RunProgress

    out = current()
    console = out or TerminalConsole(sys.stderr if sys.stderr.isatty() else None)
    status, start = RunProgress(), time.monotonic()
    worker_kills: dict[int, tuple[int, int]] = {}
    try:
        for line in job.follow():
            elapsed = time.monotonic() - start
            shown = [line]
            if m := NODE_LINE.match(line):
                prefix = line[: len(line) - len(m[2])]
                texts = _observe(status, int(m[1]), m[2], out, elapsed)
                shown = shown if verbose else [prefix + text for text in texts]
            console.clear()
            for text in shown:
                if isinstance(console, JsonLines) or console.shows(text):
                    click.echo(text, err=out is not None)
            over = _judge_exit(job, status, line)
            _judge_worker_kill(job, status, line, worker_kills)
            for event, fields in status.events:
                console.event(event, elapsed, fields)
            status.events.clear()
            if reason := over or _hopeless(job, status):
                console.clear()
                click.echo(f"kdist: {reason}; stopping the other nodes", err=True)
                from kdist.targets.compose.job import HOPELESS

                job.stop(HOPELESS, _failed_by_themselves(status))
                return
            console.status(status, elapsed)
    finally:
        console.clear()


def _observe(status: RunProgress, node: int, text: str, out: JsonLines | None,
             elapsed: float) -> list[str]:
    """One node's log line into the status; `(container exited with code N)` is an exit.
    Returns what a quiet terminal shows of it (kdist.torchlog drops torchrun's agent lines)."""
    exited = EXITED_TEXT.match(text.strip())
    if exited is None:
        if status.node(node).ended:  # Docker restarted the container (its restart policy)
            from kdist.progress import NodeProgress

            status.nodes[node] = NodeProgress()
        status.observe(node, text)
        return status.node(node).shown
    shown = status.node(node).log.flush()  # a traceback held until its next line ends here
    status.node_exited(node, int(exited[1]))
    if out is not None:
        out.event("exit", elapsed, {"node": node, "code": int(exited[1])})
    return [*shown, text]


def _judge_exit(job: ComposeJob, status: RunProgress, line: str) -> str:
    """A node's container that ended by a signal nobody in the job sent (a kill from outside,
    the OOM killer) is lost, not failed (kdist/policy.py): a `lost` event says so and whether
    its restart policy brings it back. Returns why the job is over now (too few nodes left)."""
    from kdist import policy

    m = NODE_LINE.match(line)
    exited = EXITED_TEXT.match(m[2].strip()) if m else None
    if m is None or exited is None or int(exited[1]) == 0 or f"node-{m[1]}" in job.marks():
        return ""
    node, code = int(m[1]), int(exited[1])
    failure = status.node(node).log.failure()
    if (loss := policy.loss(node, code, failure, container=True)) is None:
        return ""  # it failed by its own error
    now = job.status()
    mine = now.node(f"node-{node}")
    container = mine.container if mine is not None else None
    oom = container is not None and container.oom_killed
    if oom:
        loss = policy.Loss(node, "out of memory: OOM-killed", oom=True)
    status.node_exited(node, code, killed=True)  # it left the job: not a failure of the job
    returns = container is not None and container.active  # restarting by its restart policy
    remaining = sum(1 for n in now.nodes if n.running and n is not mine)
    total = sum(1 for n in now.nodes if n.container is not None and n.state != "created")
    message = loss.message(remaining, total, job.project.min_nodes, returns)
    if oom:
        message += (f" (resources.memory: {job.project.memory}: raise it, or have each rank use "
                    "less)")
    status.events.append(("lost", {"node": node, "code": code, "why": loss.why,
                                   "message": message}))
    return "" if returns else policy.too_few(remaining, job.project.min_nodes)


def _judge_worker_kill(job: ComposeJob, status: RunProgress, line: str,
                       seen: dict[int, tuple[int, int]]) -> None:
    """A worker killed by SIGKILL in a container where the OOM killer struck again: an `oom`
    event names it (torchrun restarts the workers; the container lives on). `seen`: node ->
    (worker failures, OOM kills) already looked at."""
    m = NODE_LINE.match(line)
    if m is None:
        return
    node = int(m[1])
    exits = status.node(node).log.exits
    failures, ooms = seen.get(node, (0, 0))
    if len(exits) <= failures:
        return
    seen[node] = (len(exits), ooms)
    if exits[-1].exit_code != -signal.SIGKILL:
        return
    kills = job.oom_kills(f"node-{node}")
    if kills <= ooms:
        return
    seen[node] = (len(exits), kills)
    rank = f" (rank {exits[-1].rank})" if exits[-1].rank is not None else ""
    status.events.append(("oom", {"node": node, "message": (
        f"node-{node}: a worker{rank} was OOM-killed at the container's memory limit "
        f"(resources.memory: {job.project.memory}); torchrun restarts the workers within "
        "max_restarts: raise resources.memory, or have each rank use less")}))


def _hopeless(job: ComposeJob, status: RunProgress) -> str:
    """Why the nodes still running should be stopped now, or ""."""
    from kdist.progress import barrier_note
    from kdist.torchlog import certain_failure, stuck_at_barrier

    failed = [i for i, n in status.nodes.items() if n.ended == "failed" and not _rejoins(n.log)]
    if not status.nodes_up or not (failed or any(n.log.exits for n in status.nodes.values())):
        return ""
    marks = job.marks()  # `kdist kill` and `kdist scale` mark a node before they stop it
    failed = [i for i in failed if f"node-{i}" not in marks]
    logs = [n.log for i, n in status.nodes.items() if f"node-{i}" not in marks]
    alive = {i: n.log for i, n in status.nodes.items() if n.alive and f"node-{i}" not in marks}
    if failed:
        reason = f"node-{failed[0]} failed, so the job cannot succeed any more"
    elif len(logs) >= status.world_size and (certain := certain_failure(logs)):
        reason = certain
    elif stuck := stuck_at_barrier(alive, job.project.min_nodes):
        reason = stuck
    else:
        return ""
    return reason + barrier_note(status)


def _rejoins(log: NodeLog) -> bool:
    """The node failed only because a peer or the store went away (its agent's own error says
    so): its restart policy (kdist/targets/compose/render.py) brings it back into the job."""
    from kdist.torchlog import is_peer_error

    failure = log.failure()
    if failure is not None:
        return failure.secondary
    return bool(log.agent_error) and is_peer_error([log.agent_error])


def _failed_by_themselves(status: RunProgress) -> list[str]:
    """Services whose workers failed with an error of their own (not a lost peer's)."""
    failures = {i: n.log.failure() for i, n in status.nodes.items()}
    return [f"node-{i}" for i, f in failures.items() if f is not None and not f.secondary]


def _show_outcome(job: ComposeJob, status: JobStatus) -> None:
    """The `kdist status` table on stdout; with json, the result line's `job`."""
    from kdist.status import format_state, state_dict
    from kdist.targets.compose.status import to_state

    state = to_state(status, job.project.name, job.project.min_nodes)
    out = current()
    if out is None:
        click.echo(format_state(state))
    else:
        out.job = state_dict(state)


@click.command()
@spec_option
@click.option("-d", "--detach", is_flag=True,
              help="Start the job and return (then: kdist status, kdist logs -f, kdist down).")
@click.option("--build/--no-build", default=None,
              help="Always build the image first / never build it.  [default: build when the image "
                   "is missing and the spec has compose.build]")
@click.option("-v", "--verbose", is_flag=True,
              help="Show torchrun's agent log lines too (`kdist logs` always has them).")
@cli_dev.dev_options
@json_lines("compose", causes=jsonout.job_failure)
@click.pass_context
def up(ctx: click.Context, spec_file: Path, detach: bool, build: bool | None, verbose: bool,
       dev: bool, dev_port: int | None) -> None:
    """Run the job on Docker Compose.

    Renders the spec to .kdist/compose/<name>/docker-compose.yaml and starts the project
    (`docker compose -p <name> up`). Attached, it streams the nodes' logs, prints a status
    summary and exits 0 only when the job succeeded (nodes stopped by kdist kill/scale excepted);
    otherwise with the failing node's exit code and root cause.
    """
    from kdist.spec.load import read_text
    from kdist.tools.workdir import built_here, check, check_file

    port = cli_dev.dev_port(dev, dev_port)
    plan = load_plan(spec_file)
    plan.secret_values(os.environ)  # docker compose passes them on; refuse before starting without
    if built_here(plan.spec):
        check_file(plan.spec, spec_file, Path.cwd())
    else:  # the image may hold what this folder lacks
        for problem in check(plan.spec, read_text(spec_file), str(spec_file), Path.cwd()):
            click.echo(printable(f"kdist: warning: {problem}; the image is not built from this "
                                 "folder, so it may hold it"), err=True)
    job = cli_dev.open_job(plan, port) if dev else _open(spec_file, rewrite=True, plan=plan)
    started = job.up(build=build, on_output=lambda line: click.echo(line, err=True))
    name = job.project.name
    click.echo(f"kdist: nodes start in {plan.workdir} on volume {job.project.volume} (relative paths "
               "the trainer writes land there; kdist down keeps it)", err=True)
    server = cli_dev.start(job, build) if dev else None
    if detach:
        running = sum(1 for n in started.nodes if n.running)
        spec = "" if spec_file == Path("kdist.yaml") else f" -f {spec_file}"
        logs = "" if not spec else f" --file {spec_file}"
        click.echo(f"kdist: job {name} started with {running} nodes; follow it with `kdist logs -f"
                   f"{logs}` and `kdist status{spec}`, remove it with `kdist down{spec}`", err=True)
        if current() is not None:  # the result says what runs, not that it finished
            _show_outcome(job, started)
        return
    try:
        _follow_with_status(job, verbose)
    except KeyboardInterrupt:
        click.echo(f"\nkdist: interrupted; stopping job {name} (`kdist down` removes it)", err=True)
        job.stop()
        ctx.exit(130)
    status = job.finish()
    _show_outcome(job, status)
    cli_dev.remind(server)
    if status.phase != "succeeded":
        raise job.failure(status) or KdistError(
            f"job {name} is {status.phase}, but its logs ended; see `kdist status`")
    click.echo(f"kdist: job {name} succeeded", err=True)


@click.command()
@spec_option
@click.option("-v", "--volumes", is_flag=True,
              help="Also remove the checkpoint volume (the next `kdist up` starts from scratch).")
def down(spec_file: Path, volumes: bool) -> None:
    """Stop and remove the job's containers and network (checkpoints are kept by default)."""
    job = _open(spec_file)
    existed = bool(job.containers()) or job.volume_exists()
    job.down(volumes=volumes)
    if not existed:
        click.echo(f"kdist: nothing to remove: job {job.project.name} has no containers and no "
                   "checkpoint volume", err=True)
        return
    volume = job.project.volume
    if job.volume_exists():
        kept = f"; checkpoint volume {volume} kept, with the trainer's outputs (--volumes removes it)"
    else:
        kept = f"; checkpoint volume {volume} removed" if volumes else "; it had no checkpoint volume"
    click.echo(f"kdist: removed job {job.project.name}{kept}", err=True)


@click.command()
@spec_option
@click.argument("node")
@click.option("-s", "--signal", "signal_", default="SIGKILL", show_default=True,
              help="The signal to send.")
def kill(spec_file: Path, node: str, signal_: str) -> None:
    """Chaos: kill one node's container (NODE: node-1 or 1; rdzv is the store).

    The killed node does not count against the job's exit code.
    """
    service = _open(spec_file).kill(node, signal_)
    click.echo(f"kdist: sent {signal_} to {service}", err=True)
