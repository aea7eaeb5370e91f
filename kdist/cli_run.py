"""`kdist run`: the job as N simulated nodes on this host (kdist.backends.local).

Register with `cli.add_command(run)`. The command only draws the backend's output: log lines
with a `node-<i> | ` prefix on stdout and, when stderr is a terminal, a live status line;
library errors (KdistError) become messages and exit codes in kdist.cli's group.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from kdist.cliopts import load_plan, spec_option

if TYPE_CHECKING:  # the backend is imported lazily: `kdist --help` stays fast
    from kdist.plan import LaunchPlan
    from kdist.runstatus import JobStatus

CLEAR_LINE = "\r\x1b[K"


class TerminalConsole:
    """Log lines on stdout; on a terminal, a status line kept at the bottom of stderr."""

    def __init__(self, status_stream: TextIO | None, interval: float = 0.25) -> None:
        self.status_stream = status_stream  # None: no status line (not a terminal)
        self.interval = interval
        self.shown = ""  # the status text now on screen
        self.drawn_at = 0.0

    def log(self, source: str, line: str) -> None:
        self.clear()
        click.echo(f"{source} | {line}")

    def status(self, status: JobStatus, elapsed: float) -> None:
        if self.status_stream is None:
            return
        now = time.monotonic()
        if self.shown and now - self.drawn_at < self.interval:
            return
        from kdist.runstatus import format_status

        text = format_status(status, elapsed)
        self.status_stream.write(CLEAR_LINE + text[: self.width()])
        self.status_stream.flush()
        self.shown, self.drawn_at = text, now

    def clear(self) -> None:
        if self.status_stream is not None and self.shown:
            self.status_stream.write(CLEAR_LINE)
            self.status_stream.flush()
            self.shown = ""

    @staticmethod
    def width() -> int:
        import shutil

        return max(shutil.get_terminal_size((100, 24)).columns - 1, 20)


# Measured on 2 cores: 16 simulated nodes complete with 1 s keep-alives, 32 never settle (every
# agent's heartbeat rewrites the shared rendezvous state); with 5 s x 3 they complete.
CROWDED_NODES_PER_CORE = 8


def _warn_if_crowded(plan: LaunchPlan, nodes: int) -> None:
    import os

    cores = os.cpu_count() or 1
    if nodes > CROWDED_NODES_PER_CORE * cores and plan.spec.rendezvous.keep_alive_interval < 5:
        click.echo(f"kdist: warning: {nodes} simulated nodes on {cores} cores: with "
                   f"{plan.spec.rendezvous.keep_alive_interval} s keep-alives the rendezvous may "
                   "never settle; for large simulations set rendezvous.keep_alive_interval: 5 and "
                   "keep_alive_max_attempt: 3", err=True)


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
              help="Folder for this run's logs, metrics and checkpoints "
                   "[default: .kdist/runs/<run-id>]. Reusing one resumes from its checkpoint.")
def run(spec_file: Path, nodes: int | None, kills: tuple[str, ...], add_nodes: tuple[str, ...],
        run_dir: Path | None) -> None:
    """Run the job here: every node is a torchrun process group on 127.0.0.1.

    Ctrl-C stops every process of the job. The exit code is 0 only if the job succeeded.
    """
    from kdist.backends.local import (
        Interrupted,
        RunFailed,
        RunOptions,
        parse_kill,
        parse_seconds,
        run_local,
    )

    options = RunOptions(
        nodes=nodes,
        kills=tuple(parse_kill(k) for k in kills),
        add_nodes=tuple(parse_seconds(a, "--add-node") for a in add_nodes),
        run_dir=run_dir,
    )
    plan = load_plan(spec_file)
    _warn_if_crowded(plan, nodes or plan.spec.nodes.count)
    console = TerminalConsole(sys.stderr if sys.stderr.isatty() else None)
    try:
        result = run_local(plan, options, console)
    except (RunFailed, Interrupted) as e:
        console.clear()
        click.echo(e.result.summary(), err=True)
        raise
    finally:
        console.clear()
    click.echo(result.summary(), err=True)
