"""`kdist status | logs | scale`: a running job on any target that has these verbs.

The target is looked up in the registry (kdist/targets/__init__.py) and its `Job` answers; the
output is kdist's one status model (kdist/status.py), the same table and JSON for every target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kdist.cli.options import (
    cluster_options,
    file_only_option,
    json_alias,
    load_plan,
    output_option,
    printable,
    spec_option,
    target_option,
)

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.progress import RunProgress
    from kdist.targets import Job


def _open(spec_file: Path, target: str, context: str | None, namespace: str | None,
          plan: LaunchPlan | None = None) -> Job:
    """The running job of `spec_file` (or of the `plan` already loaded from it)."""
    from kdist.targets import Where, open_job

    return open_job(plan or load_plan(spec_file), target, Where(Path.cwd(), context, namespace))


@click.command()
@spec_option
@output_option("text", "json", help="text: a table; json: one JSON object.")
@json_alias
@target_option("status")
@cluster_options
def status(spec_file: Path, output: str, target: str, context: str | None,
           namespace: str | None) -> None:
    """The job's phase, and per node its state, exit code and restarts; on Compose also what
    torchrun's logs say (rendezvous rounds, restarts, world sizes); once it failed, the root
    cause (the failing node's error, read from its log)."""
    from kdist import jsonout
    from kdist.status import FAILED, NOT_STARTED, STOPPED, format_state, state_dict
    from kdist.targets import LogQuery, get

    job = _open(spec_file, target, context, namespace)
    with job.snapshot():  # one reading of the target for all three
        state = job.state()
        reads_logs = get(target).status_reads_logs and state.phase != NOT_STARTED
        agents = read_agents(job.read_logs(LogQuery())) if reads_logs else None
        failure = job.failure() if state.phase in (FAILED, STOPPED) else None
    if output == "json":
        data = state_dict(state)
        data["root_cause"] = jsonout.job_failure(failure) if failure is not None else None
        if agents is not None:
            data["torchrun"] = agents.torchrun_dict()
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(format_state(state))
    if agents is not None:
        click.echo(format_torchrun(agents))
    if failure is not None:
        click.echo(printable(str(failure)))


def read_agents(lines: Iterable[str]) -> RunProgress:
    """The nodes' logs read by kdist.torchlog: rendezvous rounds, restarts, world sizes."""
    from kdist.progress import RunProgress
    from kdist.targets import NODE_LINE

    agents = RunProgress()
    for line in lines:
        if m := NODE_LINE.match(line):
            agents.observe(int(m[1]), m[2])
    return agents


def format_torchrun(agents: RunProgress) -> str:
    """`torchrun: 2 rendezvous rounds, 1 restart, world sizes 3 -> 2, members node-0, node-2`."""
    if not agents.rounds:
        return "torchrun: no rendezvous round completed yet"
    data = agents.torchrun_dict()
    plural = "" if data["restarts"] == 1 else "s"
    return (f"torchrun: {data['rounds']} rendezvous round{'s' if data['rounds'] != 1 else ''}, "
            f"{data['restarts']} restart{plural}, world sizes "
            f"{' -> '.join(map(str, data['world_sizes']))}, members {', '.join(data['members'])}")


@click.command()
@file_only_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines (Ctrl-C stops).")
@click.option("--node", "nodes", multiple=True, metavar="NODE",
              help="Only this node: node-1, 1 or rdzv (repeatable).  [default: every node and "
                   "the store]")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines of each.")
@click.option("--timestamps", is_flag=True, help="Prefix each line with the engine's timestamp (Compose).")
@target_option("logs")
@cluster_options
@click.pass_context
def logs(ctx: click.Context, spec_file: Path, follow: bool, nodes: tuple[str, ...], tail: int | None,
         timestamps: bool, target: str, context: str | None, namespace: str | None) -> None:
    """The job's logs, one `node-N | ` prefix per line.

    Here -f is --follow (as in docker and kubectl logs); the spec is --file. -t is --target,
    as in every command (it meant --timestamps before).
    """
    from kdist.targets import LogQuery

    job = _open(spec_file, target, context, namespace)
    try:
        for line in job.read_logs(LogQuery(nodes, follow, tail, timestamps)):
            click.echo(line)
    except KeyboardInterrupt:
        ctx.exit(130)


@click.command()
@spec_option
@click.argument("nodes", type=int)
@target_option("scale")
@cluster_options
def scale(spec_file: Path, nodes: int, target: str, context: str | None,
          namespace: str | None) -> None:
    """Run NODES nodes (within the spec's MIN:MAX) while the job runs.

    Starting nodes join at the next rendezvous round; scaling down stops the highest nodes.
    """
    plan = load_plan(spec_file)
    if target == "compose":  # a node started here gets secret_env from this shell
        plan.secret_values(os.environ)
    change = _open(spec_file, target, context, namespace, plan).scale(nodes)
    name = plan.name
    for note in change.notes:
        click.echo(f"kdist: {note}", err=True)
    if change.started:
        click.echo(f"kdist: started {', '.join(change.started)}; it joins at the next rendezvous "
                   "round", err=True)
    elif change.stopped:
        click.echo(f"kdist: stopped {', '.join(change.stopped)}; the others continue", err=True)
    elif change.before == change.after:
        click.echo(f"kdist: job {name} already runs {nodes} nodes", err=True)
    else:
        click.echo(f"kdist: scaled job {name} from {change.before} to {change.after} nodes; "
                   "they meet at the next rendezvous round", err=True)
