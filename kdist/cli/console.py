"""The terminal side of a job that kdist follows (`kdist run`, `kdist up`): node log lines on
stdout and, when stderr is a terminal, a live status line kept at its bottom (the trainer's
KDIST_METRIC lines then feed it instead of scrolling past); kdist's own events as `kdist | ...`
lines. The json console is kdist/cli/jsonlines.py."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    from kdist.progress import RunProgress

CLEAR_LINE = "\r\x1b[K"


class TerminalConsole:
    """Log lines on stdout; on a terminal, a status line kept at the bottom of stderr."""

    def __init__(self, status_stream: TextIO | None, interval: float = 0.25) -> None:
        self.status_stream = status_stream  # None: no status line (not a terminal)
        self.interval = interval
        self.shown = ""  # the status text now on screen
        self.drawn_at = 0.0

    def log(self, source: str, line: str) -> None:
        if not self.shows(line):
            return
        self.clear()
        click.echo(f"{source} | {line}")

    def shows(self, text: str) -> bool:
        """Whether a node's line is printed: under a status line the trainer's `KDIST_METRIC`
        lines only feed it (the node logs and `kdist logs` keep them)."""
        from kdist.progress import METRIC_PREFIX

        return self.status_stream is None or METRIC_PREFIX not in text

    def status(self, status: RunProgress, elapsed: float) -> None:
        if self.status_stream is None:
            return
        now = time.monotonic()
        if self.shown and now - self.drawn_at < self.interval:
            return
        from kdist.progress import format_progress

        text = format_progress(status, elapsed)
        self.status_stream.write(CLEAR_LINE + text[: self.width()])
        self.status_stream.flush()
        self.shown, self.drawn_at = text, now

    def event(self, name: str, elapsed: float, fields: dict[str, Any]) -> None:
        """kdist's own events as `kdist | ...` log lines (node starts are not shown)."""
        if name != "start":
            self.log("kdist", describe_event(name, fields))

    def clear(self) -> None:
        if self.status_stream is not None and self.shown:
            self.status_stream.write(CLEAR_LINE)
            self.status_stream.flush()
            self.shown = ""

    @staticmethod
    def width() -> int:
        import shutil

        return max(shutil.get_terminal_size((100, 24)).columns - 1, 20)


def describe_event(name: str, fields: dict[str, Any]) -> str:
    """`node-1 lost (SIGKILL by --kill)`, `round 1: world size 3, members node-0, node-1, ...`;
    other events as `kill node=1 signal=SIGKILL ...`."""
    node, members = f"node-{fields.get('node')}", ", ".join(fields.get("members", ()))
    if name in ("lost", "oom"):
        return str(fields["message"])
    if name == "outputs":
        how = ("it holds an earlier run's outputs: the trainer resumes from them, --fresh starts "
               "over" if fields.get("resumes") else "relative paths the trainer writes land there, "
               "the project's files are linked in")
        return f"nodes start in {fields['path']} ({how})"
    if name == "exit" and fields.get("killed"):
        return f"{node} lost (killed on purpose, exit code {fields.get('code')})"
    if name == "exit":
        code = fields.get("code")
        return f"{node} finished" if code == 0 else f"{node} failed (exit code {code})"
    if name == "round":
        return f"round {fields['round']}: world size {fields['world_size']}, members {members}"
    if name == "resumed":
        restarts = fields["restart"]
        return (f"resumed: round {fields['round']}, world size {fields['world_size']} after "
                f"{restarts} restart{'s' if restarts != 1 else ''}, members {members}")
    return " ".join([name, *(f"{k}={v}" for k, v in fields.items())])
