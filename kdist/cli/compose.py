"""`kdist up | down | logs | status | scale | kill`: the job as a Docker Compose project.

`status`, `logs` and `scale` also take `--target k8s` and hand over to kdist.cli.k8s.

The commands only turn kdist.targets.compose.job's data into output; library errors (KdistError)
become messages and exit codes in kdist.cli's group. Register them with `register(cli)`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdist.cli import dev as cli_dev
from kdist.cli.jsonlines import JsonLines, current, json_lines
from kdist.cli.k8s import k8s_options
from kdist.cli.options import (
    file_only_option,
    job_target_option,
    json_alias,
    load_plan,
    output_option,
    spec_option,
)
from kdist.errors import KdistError

if TYPE_CHECKING:  # the backend is imported lazily: `kdist --help` stays fast
    from kdist.progress import JobStatus as RunStatus
    from kdist.targets.compose.job import ComposeJob, JobStatus
    from kdist.torchlog import NodeLog


def _open(spec_file: Path, rewrite: bool = False) -> ComposeJob:
    from kdist.targets.compose.job import ComposeJob

    return ComposeJob.open(load_plan(spec_file), Path.cwd(), rewrite=rewrite)


def format_status(status: JobStatus) -> str:
    """The `kdist status` table: one row per service."""
    rows = [("SERVICE", "STATE", "EXIT", "RESTARTS", "NOTE")]
    if status.store is not None:
        s = status.store
        rows.append((s.service, s.state, str(s.exit_code) if s.stopped else "-", str(s.restarts),
                     s.health or ""))
    for n in status.nodes:
        c = n.container
        rows.append((n.service, n.state, "-" if n.exit_code is None else str(n.exit_code),
                     "-" if c is None else str(c.restarts), n.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
             for r in rows]
    running = sum(1 for n in status.nodes if n.running)
    head = f"job {status.name}: {status.phase} ({running} of {len(status.nodes)} nodes running)"
    return "\n".join([head, *(line.rstrip() for line in lines)])


def status_dict(status: JobStatus) -> dict[str, Any]:
    def container(c: Any) -> dict[str, Any] | None:
        if c is None:
            return None
        return {"name": c.name, "state": c.state, "exit_code": c.exit_code if c.stopped else None,
                "restarts": c.restarts, "oom_killed": c.oom_killed, "health": c.health}

    return {
        "name": status.name,
        "phase": status.phase,
        "store": container(status.store),
        "nodes": [{"service": n.service, "container": container(n.container),
                   "stopped_by": n.stopped_by or None, "note": n.note} for n in status.nodes],
    }


NODE_LINE = re.compile(r"^node-(\d+)\s*\| ?(.*)$")
EXITED_TEXT = re.compile(r"^\(container exited with code (-?\d+)\)$")


def _follow_with_status(job: ComposeJob, verbose: bool = False) -> None:
    """Node log lines on stdout and, on a terminal, the same live status line as `kdist run`.

    Quiet like `kdist run`: torchrun's agent lines only with `verbose` (`kdist logs` has them
    all). With `--output json`: the lines on stderr, status snapshots and events as JSON lines.
    Once the job cannot succeed any more (a node failed by itself, or a failure certain to
    repeat), the other nodes are stopped instead of waiting in torchrun's exit barrier.
    """
    from kdist.cli.run import TerminalConsole
    from kdist.progress import JobStatus

    out = current()
    console = out or TerminalConsole(sys.stderr if sys.stderr.isatty() else None)
    status, start = JobStatus(), time.monotonic()
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
                click.echo(text, err=out is not None)
            for event, fields in status.events:
                console.event(event, elapsed, fields)
            status.events.clear()
            if reason := _hopeless(job, status):
                console.clear()
                click.echo(f"kdist: {reason}; stopping the other nodes", err=True)
                from kdist.targets.compose.job import HOPELESS

                job.stop(HOPELESS, _failed_by_themselves(status))
                return
            console.status(status, elapsed)
    finally:
        console.clear()


def _observe(status: RunStatus, node: int, text: str, out: JsonLines | None,
             elapsed: float) -> list[str]:
    """One node's log line into the status; `(container exited with code N)` is an exit.
    Returns what a quiet terminal shows of it (kdist.torchlog drops torchrun's agent lines)."""
    exited = EXITED_TEXT.match(text.strip())
    if exited is None:
        if status.node(node).ended:  # Docker restarted the container (its restart policy)
            from kdist.progress import NodeState

            status.nodes[node] = NodeState()
        status.observe(node, text)
        return status.node(node).shown
    shown = status.node(node).log.flush()  # a traceback held until its next line ends here
    status.node_exited(node, int(exited[1]))
    if out is not None:
        out.event("exit", elapsed, {"node": node, "code": int(exited[1])})
    return [*shown, text]


def _hopeless(job: ComposeJob, status: RunStatus) -> str:
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


def _failed_by_themselves(status: RunStatus) -> list[str]:
    """Services whose workers failed with an error of their own (not a lost peer's)."""
    failures = {i: n.log.failure() for i, n in status.nodes.items()}
    return [f"node-{i}" for i, f in failures.items() if f is not None and not f.secondary]


def _show_outcome(status: JobStatus) -> None:
    """The final `kdist status` table on stdout; with json, the result line's `job`."""
    out = current()
    if out is None:
        click.echo(format_status(status))
    else:
        out.job = status_dict(status)


def _failure_cause(error: KdistError) -> dict[str, Any] | None:
    """The root cause of `kdist up`'s JobFailed, for the json result line."""
    from kdist import jsonout
    from kdist.targets.compose.job import JobFailed

    if not isinstance(error, JobFailed) or not error.node:
        return None
    return jsonout.root_cause(error.node, error.exit_code, traceback=error.cause)


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
@json_lines("compose", causes=_failure_cause)
@click.pass_context
def up(ctx: click.Context, spec_file: Path, detach: bool, build: bool | None, verbose: bool,
       dev: bool, dev_port: int | None) -> None:
    """Run the job on Docker Compose.

    Renders the spec to .kdist/compose/<name>/docker-compose.yaml and starts the project
    (`docker compose -p <name> up`). Attached, it streams the nodes' logs, prints a status
    summary and exits 0 only when the job succeeded (nodes stopped by kdist kill/scale excepted);
    otherwise with the failing node's exit code and root cause.
    """
    from kdist.tools.workdir import check_file

    port = cli_dev.dev_port(dev, dev_port)
    plan = load_plan(spec_file)
    check_file(plan.spec, spec_file, Path.cwd())
    job = cli_dev.open_job(spec_file, port) if dev else _open(spec_file, rewrite=True)
    started = job.up(build=build, on_output=lambda line: click.echo(line, err=True))
    name = job.project.name
    click.echo(f"kdist: nodes start in {plan.workdir} on volume {job.project.volume} (relative paths "
               "the trainer writes land there; kdist down keeps it)", err=True)
    server = cli_dev.start(job, build) if dev else None
    if detach:
        running = sum(1 for n in started.nodes if n.running)
        click.echo(f"kdist: job {name} started with {running} nodes; follow it with `kdist logs -f` "
                   "and `kdist status`, remove it with `kdist down`", err=True)
        return
    try:
        _follow_with_status(job, verbose)
    except KeyboardInterrupt:
        click.echo(f"\nkdist: interrupted; stopping job {name} (`kdist down` removes it)", err=True)
        job.stop()
        ctx.exit(130)
    status = job.finish()
    _show_outcome(status)
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
    job.down(volumes=volumes)
    volume = job.project.volume
    if job.volume_exists():
        kept = f"; checkpoint volume {volume} kept, with the trainer's outputs (--volumes removes it)"
    else:
        kept = f"; checkpoint volume {volume} removed" if volumes else "; it had no checkpoint volume"
    click.echo(f"kdist: removed job {job.project.name}{kept}", err=True)


@click.command()
@file_only_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines (Ctrl-C stops).")
@click.option("--node", "nodes", multiple=True, metavar="NODE",
              help="Only this node: node-1, 1 or rdzv (repeatable).  [default: every service]")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines of each.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with the engine's timestamp.")
@job_target_option
@k8s_options
@click.pass_context
def logs(ctx: click.Context, spec_file: Path, follow: bool, nodes: tuple[str, ...], tail: int | None,
         timestamps: bool, target: str, context: str | None, namespace: str | None) -> None:
    """The job's logs, one `node-N | ` prefix per line.

    Here -f is --follow (as in docker and kubectl logs); the spec is --file. -t is --target,
    as in every command (it meant --timestamps before).
    """
    if target == "k8s":
        from kdist.cli.k8s import k8s_logs

        return k8s_logs(load_plan(spec_file), context, namespace, follow=follow, nodes=nodes,
                        tail=tail)
    job = _open(spec_file)
    try:
        for line in job.logs(follow=follow, services=nodes, tail=tail, timestamps=timestamps):
            click.echo(line)
    except KeyboardInterrupt:
        ctx.exit(130)


@click.command()
@spec_option
@output_option("text", "json", help="text: a table; json: one JSON object.")
@json_alias
@job_target_option
@k8s_options
def status(spec_file: Path, output: str, target: str, context: str | None,
           namespace: str | None) -> None:
    """The job's phase, and per node its state, exit code and restarts."""
    if target == "k8s":
        from kdist.cli.k8s import k8s_status

        return k8s_status(load_plan(spec_file), context, namespace, output == "json")
    job = _open(spec_file)
    result = job.status()
    agents = _read_agents(job)
    if output == "json":
        click.echo(json.dumps({**status_dict(result), "torchrun": agents.torchrun_dict()}, indent=2))
    else:
        click.echo(format_status(result))
        click.echo(format_torchrun(agents))


def _read_agents(job: ComposeJob) -> RunStatus:
    """The nodes' logs read by kdist.torchlog: rendezvous rounds, restarts, world sizes."""
    from kdist.progress import JobStatus

    agents = JobStatus()
    for line in job.logs(services=job.project.nodes):
        if m := NODE_LINE.match(line):
            agents.observe(int(m[1]), m[2])
    return agents


def format_torchrun(agents: RunStatus) -> str:
    """`torchrun: 2 rendezvous rounds, 1 restart, world sizes 3 -> 2, members node-0, node-2`."""
    if not agents.rounds:
        return "torchrun: no rendezvous round completed yet"
    data = agents.torchrun_dict()
    plural = "" if data["restarts"] == 1 else "s"
    return (f"torchrun: {data['rounds']} rendezvous round{'s' if data['rounds'] != 1 else ''}, "
            f"{data['restarts']} restart{plural}, world sizes "
            f"{' -> '.join(map(str, data['world_sizes']))}, members {', '.join(data['members'])}")


@click.command()
@spec_option
@click.argument("nodes", type=int)
@job_target_option
@k8s_options
def scale(spec_file: Path, nodes: int, target: str, context: str | None,
          namespace: str | None) -> None:
    """Run NODES nodes (within the spec's MIN:MAX) while the job runs.

    Starting nodes join at the next rendezvous round; scaling down stops the highest nodes.
    """
    if target == "k8s":
        from kdist.cli.k8s import k8s_scale

        return k8s_scale(load_plan(spec_file), context, namespace, nodes)
    job = _open(spec_file)
    change = job.scale(nodes)
    if change.started:
        click.echo(f"kdist: started {', '.join(change.started)}; it joins at the next rendezvous "
                   "round", err=True)
    elif change.stopped:
        click.echo(f"kdist: stopped {', '.join(change.stopped)}; the others continue", err=True)
    else:
        click.echo(f"kdist: job {job.project.name} already runs {nodes} nodes", err=True)


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


COMMANDS = (up, down, logs, status, scale, kill)


def register(group: click.Group) -> None:
    """Add the compose commands to `group` (idempotent)."""
    for command in COMMANDS:
        group.add_command(command)
