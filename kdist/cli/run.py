"""`kdist run`: the job as N simulated nodes on this host (kdist.targets.local.job).

Register with `cli.add_command(run)`. The command only draws the backend's output: log lines
with a `node-<i> | ` prefix on stdout and, when stderr is a terminal, a live status line;
library errors (KdistError) become messages and exit codes in kdist.cli's group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdist.cli.console import TerminalConsole
from kdist.cli.jsonlines import JsonLines, current, json_lines
from kdist.cli.options import load_plan, spec_option

if TYPE_CHECKING:  # the backend is imported lazily: `kdist --help` stays fast
    from kdist.plan import LaunchPlan
    from kdist.targets.local.job import RunOptions, RunResult

def _fit_to_host(plan: LaunchPlan, nodes: int) -> LaunchPlan:
    """Longer keep-alives when the simulation crowds this host's cores (said on stderr)."""
    import os

    from kdist.targets.local.job import roomy_plan

    cores = os.cpu_count() or 1
    roomy = roomy_plan(plan, nodes, cores)
    if roomy is None:
        return plan
    spec, new = plan.spec.rendezvous, roomy.spec.rendezvous
    click.echo(f"kdist: {nodes} simulated nodes on {cores} cores: keep-alives of "
               f"{new.keep_alive_interval} s x {new.keep_alive_max_attempt} for this run instead "
               f"of the spec's {spec.keep_alive_interval} s x {spec.keep_alive_max_attempt}, so "
               "agents starved of CPU are not declared dead (a lost node is noticed later)",
               err=True)
    return roomy


@click.command()
@spec_option
@click.option("--nodes", type=click.IntRange(min=1), metavar="N",
              help="How many nodes to start, within the spec's MIN:MAX  [default: nodes.count]")
@click.option("--kill", "kills", multiple=True, metavar="NODE@TIME",
              help="SIGKILL a node's whole process tree TIME after start, e.g. node-1@20s. "
                   "Repeatable.")
@click.option("--add-node", "add_nodes", multiple=True, metavar="TIME",
              help="Start one more node TIME after start, e.g. 30s (up to the spec's MAX). "
                   "Repeatable.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Folder for this run's logs, metrics and outputs (DIR/checkpoints) "
                   "[default: logs in .kdist/runs/<run-id>, outputs in "
                   ".kdist/jobs/<name>/checkpoints]. Reusing one resumes from its checkpoint.")
@click.option("--fresh", is_flag=True,
              help="Start over: empty the job's outputs first (by default a run resumes from "
                   "the checkpoint an earlier run of the job left there).")
@click.option("-v", "--verbose", is_flag=True,
              help="Show torchrun's agent log lines too (they are always in the node logs).")
@json_lines("local")
def run(spec_file: Path, nodes: int | None, kills: tuple[str, ...], add_nodes: tuple[str, ...],
        run_dir: Path | None, fresh: bool, verbose: bool) -> None:
    """Run the job here: every node is a torchrun process group on this host.

    The terminal shows the trainers' output and kdist's events (node lost, new rendezvous round
    with its world size and members, finished); torchrun's own log lines go to the node logs.
    A failure certain to repeat (every node's first attempt fails the same way, or a worker
    fails with the same error again after a restart) stops the job instead of spending
    max_restarts. Ctrl-C stops every process of the job. The exit code is 0 only if the job succeeded.
    """
    from kdist.targets.local.job import RunOptions, parse_kill, parse_seconds
    from kdist.tools.workdir import check_file

    options = RunOptions(
        nodes=nodes,
        kills=tuple(parse_kill(k) for k in kills),
        add_nodes=tuple(parse_seconds(a, "--add-node") for a in add_nodes),
        run_dir=run_dir,
        verbose=verbose,
        fresh=fresh,
    )
    plan = load_plan(spec_file)
    plan.secret_values(os.environ)  # the nodes inherit them; refuse before starting without one
    check_file(plan.spec, spec_file, Path.cwd(), local=True)
    plan = _fit_to_host(plan, nodes or plan.spec.nodes.count)
    _run(plan, options, current())



def _run(plan: LaunchPlan, options: RunOptions, out: JsonLines | None) -> None:
    """The run, then its summary on stderr (with json: the job and root cause for the result)."""
    from kdist.targets.local.job import Interrupted, RunFailed, run_local

    console = out or TerminalConsole(sys.stderr if sys.stderr.isatty() else None)
    try:
        result = run_local(plan, options, console)
    except (RunFailed, Interrupted) as e:
        console.clear()
        click.echo(e.result.summary(), err=True)
        if out is not None:
            out.job = _run_dict(e.result)
            out.cause = _root_cause(e.result) if isinstance(e, RunFailed) else None
        raise
    finally:
        console.clear()
    click.echo(result.summary(), err=True)
    if out is not None:
        out.job = _run_dict(result)


def _run_dict(result: RunResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "run_dir": str(result.run_dir),
            "final_step": result.final_step, "interrupted": result.interrupted or None,
            "rounds": result.rounds, "restarts": result.restarts,
            "world_sizes": list(result.world_sizes),
            "summary": result.summary(),
            "nodes": [{"node": n.index, "exit_code": n.exit_code, "killed": n.killed,
                       "lost": n.lost, "stopped": n.stopped, "exited_at": round(n.at, 1)}
                      for n in result.nodes]}


def _root_cause(result: RunResult) -> dict[str, Any] | None:
    from kdist import jsonout
    from kdist.targets.local.job import failed_nodes

    failed = failed_nodes(result)
    if not failed:
        return None
    node, cause = failed[0]
    log = str(result.run_dir / f"node-{node.index}.log")
    if cause is None:
        return jsonout.root_cause(f"node-{node.index}", node.exit_code, log=log)
    return jsonout.root_cause(f"node-{node.index}", node.exit_code, cause.rank, cause.signal,
                              cause.traceback, log, cause.exception)
