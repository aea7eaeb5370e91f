"""`--output json` on stdout: the JSON lines of kdist.jsonout, printed.

`JsonLines` is a console for `kdist run` (and `up`, `apply --wait`): node log lines go to
stderr, status snapshots are printed when they change (step-only changes at most once per
`interval`), events at once, and the result last. `reporting()` prints the result line, also
for an error the command did not report itself (a bad spec, an unreachable cluster, ...).
`json_lines(target)` adds `-o/--output text|json` to a command and does that around it; the
command finds its JsonLines (None for text) with `current()`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click

from kdist import jsonout
from kdist.cli.options import F, output_option
from kdist.errors import KdistError

if TYPE_CHECKING:
    from kdist.progress import RunProgress


class JsonLines:
    def __init__(self, target: str, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.shown: dict[str, Any] | None = None  # the last snapshot printed, without elapsed
        self.held: dict[str, Any] | None = None  # a newer one, held back by the throttle
        self.shown_at = float("-inf")
        self.done = False  # the result line is out
        self.job: dict[str, Any] | None = None  # the command's summary of the job, if any
        self.cause: dict[str, Any] | None = None  # the failing node's root cause, if any

    def emit(self, record: Mapping[str, Any]) -> None:
        click.echo(jsonout.dumps(record))

    # -- the kdist.targets.local.job.Console protocol

    def log(self, source: str, line: str) -> None:
        click.echo(f"{source} | {line}", err=True)

    def status(self, status: RunProgress, elapsed: float) -> None:
        self.snapshot(jsonout.job_status(status, elapsed, self.target))

    def event(self, name: str, elapsed: float, fields: Mapping[str, Any]) -> None:
        self.flush()
        self.emit(jsonout.event(self.target, name, elapsed, fields))

    def clear(self) -> None:
        """Nothing to clear (TerminalConsole's status line)."""

    # -- snapshots and the result

    def snapshot(self, record: dict[str, Any]) -> None:
        """Print `record` if it differs from the last one (elapsed aside); throttle metrics."""
        state = jsonout.without(record, ("elapsed",))
        if state == self.shown:
            self.held = None
            return
        only_metrics = self.shown is not None and jsonout.without(
            state, jsonout.METRIC_FIELDS) == jsonout.without(self.shown, jsonout.METRIC_FIELDS)
        if only_metrics and self.clock() - self.shown_at < self.interval:
            self.held = record
            return
        self.emit(record)
        self.shown, self.held, self.shown_at = state, None, self.clock()

    def flush(self) -> None:
        """Print the snapshot held back by the throttle, if any."""
        if self.held is not None:
            record, self.held = self.held, None
            self.emit(record)
            self.shown, self.shown_at = jsonout.without(record, ("elapsed",)), self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def result(self, exit_code: int, error: str | None = None) -> None:
        """The last line, with the job and root cause the command recorded."""
        if self.done:
            return
        self.flush()
        self.emit(jsonout.result(self.target, exit_code, self.elapsed(), error, self.cause,
                                 self.job))
        self.done = True


Causes = Callable[[KdistError], "dict[str, Any] | None"]


@contextlib.contextmanager
def reporting(out: JsonLines | None, causes: Causes | None = None) -> Iterator[None]:
    """With json output, end with a result line: exit code 0, or the error that ends kdist.

    `causes` finds a root cause in an error, where the command did not record one.
    """
    try:
        yield
    except KdistError as e:
        if out is not None:
            if out.cause is None and causes is not None:
                out.cause = causes(e)
            out.result(e.exit_code, str(e))
        raise
    except click.exceptions.Exit as e:  # Ctrl-C handling in the commands exits 130
        if out is not None:
            out.result(e.exit_code, "interrupted" if e.exit_code else None)
        raise
    if out is not None:
        out.result(0)


_META_KEY = "kdist.json_lines"


def json_lines(target: str, causes: Causes | None = None) -> Callable[[F], F]:
    """`-o/--output text|json`; with json, the command runs with a JsonLines (see `current`)."""
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, output: str, **kwargs: Any) -> Any:
            out = JsonLines(target) if output == "json" else None
            click.get_current_context().meta[_META_KEY] = out
            with reporting(out, causes):
                return fn(*args, **kwargs)

        return output_option()(wrapper)  # type: ignore[return-value]

    return decorate


def current() -> JsonLines | None:
    """The running command's JsonLines; None with text output (or outside json_lines)."""
    ctx = click.get_current_context(silent=True)
    out = ctx.meta.get(_META_KEY) if ctx is not None else None
    return out if isinstance(out, JsonLines) else None
