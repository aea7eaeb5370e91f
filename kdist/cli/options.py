"""Option decorators and helpers shared by every CLI module (imported by kdist.cli and the
command modules it registers, so none of them imports kdist.cli)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan

F = TypeVar("F", bound=Callable[..., Any])

# What a terminal acts on rather than shows: C0/C1 controls but tab and newline (ESC starts
# escape sequences, CR overwrites a line), zero-width and bidirectional-override characters.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe to print on a terminal: each unprintable character as an escape (`\\x1b`)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                            else f"\\u{ord(m[0]):04x}", text)


def spec_option(fn: F) -> F:
    """`-f/--file`: the job spec, shared by every command that reads one."""
    return click.option(
        "-f", "--file", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
        default=Path("kdist.yaml"), show_default=True, help="The job spec.",
    )(fn)


def file_only_option(fn: F) -> F:
    """`--file` without `-f`, for `kdist logs`, where `-f` means follow (as in docker and kubectl)."""
    return click.option(
        "--file", "spec_file", type=click.Path(dir_okay=False, path_type=Path),
        default=Path("kdist.yaml"), show_default=True,
        help="The job spec (here -f is --follow, as in docker and kubectl logs).",
    )(fn)


def target_option(verb: str, required: bool = False) -> Callable[[F], F]:
    """`-t/--target`: the registry's targets that support `verb` (kdist/targets/__init__.py);
    the first is the default unless `required`."""
    from kdist.targets import names

    choices = names(verb)
    what = "What to render for." if verb == "render" else "Where the job runs."
    if required:  # no default at all: click checks `required` only then
        return click.option("-t", "--target", type=click.Choice(choices), required=True,
                            help=what)
    return click.option("-t", "--target", type=click.Choice(choices), default=choices[0],
                        show_default=True, help=what)


def cluster_options(fn: F) -> F:
    """`--context` and `-n/--namespace`, for targets on a cluster (Kubernetes)."""
    fn = click.option("-n", "--namespace", default=None, metavar="NS",
                      help="Namespace.  [default: the spec's k8s.namespace, else the context's, "
                           "else default]")(fn)
    return click.option("--context", default=None, metavar="NAME",
                        help="kubeconfig context.  [default: current-context; in a pod: its "
                             "service account]")(fn)


JSON_LINES_HELP = ("text: for people (node logs, a live status line on a terminal); json: for "
                   "scripts: only JSON lines on stdout (status snapshots, events, a final result "
                   "line with the exit code and root cause), node logs on stderr.")


def output_option(*formats: str, help: str = JSON_LINES_HELP) -> Callable[[F], F]:
    """`-o/--output`: always a format; `kdist run`/`up` take text|json, `kdist apply` adds yaml."""
    return click.option("-o", "--output", type=click.Choice(formats or ("text", "json")),
                        default="text", show_default=True, help=help)


def warn_deprecated(old: str, new: str) -> None:
    """One stderr line for an old spelling that still works (kept for one release)."""
    click.echo(printable(f"kdist: warning: {old} is deprecated; {new}"), err=True)


def json_alias(fn: F) -> F:
    """Hidden `--json`: the old spelling of `-o json` (status, doctor, diff), kept for one
    release with a warning. The command must also take `output_option` with json."""
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
        if as_json:
            ctx = click.get_current_context()
            given = ctx.get_parameter_source("output") is click.core.ParameterSource.COMMANDLINE
            if given and kwargs["output"] != "json":
                raise click.UsageError(f"--json contradicts -o {kwargs['output']}")
            warn_deprecated("--json", "use -o json")
            kwargs["output"] = "json"
        return fn(*args, **kwargs)

    return click.option("--json", "as_json", is_flag=True, hidden=True)(wrapper)  # type: ignore[return-value]


FORMAT_NAMES = ("text", "json", "yaml")  # what -o names on any command


class FormatOrPath(click.Choice[str]):
    """A format, or any other value as a Path: the old `-o DIR|FILE|-` of `kdist render`,
    kept for one release (the command warns and treats it as --dir / --out / stdout)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, Path) or value in self.choices:
            return value
        if value in FORMAT_NAMES:
            self.fail(f"{value!r} is not one of {', '.join(map(repr, self.choices))} (a folder or "
                      f"file of that name: --dir {value} or --out {value})", param, ctx)
        return Path(value)


def load_plan(spec_file: Path) -> LaunchPlan:
    from kdist.plan import LaunchPlan
    from kdist.spec.load import load_file

    return LaunchPlan(load_file(spec_file))


def warn_network_ignored(plan: LaunchPlan, target: str) -> None:
    """`network:` is a simulation feature: say so when a Kubernetes target leaves it out."""
    from kdist.targets import get

    if plan.spec.network is not None and not get(target).simulates_network:
        click.echo(f"kdist: warning: network conditions are a simulation feature (kdist run, "
                   f"kdist up); the {target} target ignores `network`", err=True)
