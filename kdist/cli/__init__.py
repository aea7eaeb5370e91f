"""The kdist command line: the one place that turns library errors into messages and exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click

from kdist import __version__
from kdist.cli.dev import dev_options
from kdist.cli.dev import dev_port as dev_port_of
from kdist.cli.options import (
    FormatOrPath,
    load_plan,
    printable,
    spec_option,
    target_option,
    warn_deprecated,
    warn_network_ignored,
)
from kdist.errors import KdistError, SpecError, UsageError

# The commands that live in their own modules, imported when used (so `kdist render` loads no
# backend and no other command): name -> "module:attribute".
COMMANDS = {
    "run": "kdist.cli.run:run",
    "up": "kdist.cli.compose:up", "down": "kdist.cli.compose:down",
    "kill": "kdist.cli.compose:kill",
    "status": "kdist.cli.jobs:status", "logs": "kdist.cli.jobs:logs",
    "scale": "kdist.cli.jobs:scale",
    "apply": "kdist.cli.k8s:apply", "delete": "kdist.cli.k8s:delete",
    "doctor": "kdist.cli.tools:doctor", "diff": "kdist.cli.tools:diff",
    "report": "kdist.cli.report:report", "validate": "kdist.cli.validate:validate",
}


class KdistGroup(click.Group):
    """Loads a command's module when the command is used (COMMANDS); turns KdistError into
    `kdist: message` on stderr and the error's exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpecError as e:
            for problem in e.problems:
                click.echo(printable(str(problem)), err=True)
            n = len(e.problems)
            click.echo(f"kdist: {n} problem{'s' if n > 1 else ''} in the spec", err=True)
            ctx.exit(e.exit_code)
        except KdistError as e:
            click.echo(printable(f"kdist: {e}"), err=True)
            ctx.exit(e.exit_code)


@click.group(cls=KdistGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdist")
def cli() -> None:
    """Run one elastic PyTorch job spec (kdist.yaml) locally, on Docker Compose or Kubernetes."""


@cli.command()
@spec_option
@target_option("render", required=True)
@click.option("-o", "--output", type=FormatOrPath(["yaml"]), default="yaml", show_default=True,
              help="The format (an old -o DIR|FILE|- still works, with a warning: use --dir or "
                   "--out).")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Write the target's file (docker-compose.yaml, k8s.yaml or helm-values.yaml) "
                   "into this folder instead of stdout.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write this file instead of stdout.")
@click.option("--force", is_flag=True,
              help="Replace an output file whose content differs (without it: an error).")
@dev_options
def render(spec_file: Path, target: str, output: str | Path, folder: Path | None,
           out: Path | None, force: bool, dev: bool, dev_port: int | None) -> None:
    """Render the job for a target (stdout by default: pipe into kubectl or docker compose)."""
    from kdist.fsio import write_all
    from kdist.targets import get
    from kdist.targets import render as render_target

    port = dev_port_of(dev, dev_port, target)
    path = destination(output, folder, out, get(target).filename)
    plan = load_plan(spec_file)
    if dev:
        from kdist.targets.compose.dev_render import render_text as render_dev

        text = render_dev(plan, port)
    else:
        text = render_target(plan, target)
    warn_network_ignored(plan, target)
    if path is None:
        click.echo(text, nl=False)
        return
    if _replaces(path, text, force):
        write_all({path: text})


def destination(output: str | Path, folder: Path | None, out: Path | None,
                filename: str) -> Path | None:
    """The file `render` writes (None: stdout): `--dir` gets `filename`, `--out` is the file.
    An `-o` that is no format is the old spelling of either (or of stdout), with a warning."""
    if isinstance(output, Path):
        if folder is not None or out is not None:
            raise click.UsageError(f"-o {output} (a path) cannot go with --dir or --out; use "
                                   "--dir or --out alone")
        folder, out = _legacy_output(output, filename)
    if folder is not None and out is not None:
        raise click.UsageError("--dir and --out cannot go together: --dir DIR writes "
                               f"DIR/{filename}, --out FILE writes FILE")
    return folder / filename if folder is not None else out


def _legacy_output(output: Path, filename: str) -> tuple[Path | None, Path | None]:
    """The old `-o`: - is stdout; a folder (existing, or a new name) gets `filename`; an
    existing file or a name ending in .yaml/.yml is the file itself. As (--dir, --out)."""
    if str(output) == "-":
        warn_deprecated("-o -", "stdout is the default (drop -o -)")
        return None, None
    if not output.is_dir() and (output.exists() or output.suffix in (".yaml", ".yml")):
        warn_deprecated(f"-o {output} for a file", f"use --out {output}")
        return None, output
    warn_deprecated(f"-o {output} for a folder", f"use --dir {output}")
    return output, None


def _replaces(path: Path, text: str, force: bool) -> bool:
    """Whether to write `path`: not when it already holds `text`; an error when it holds
    something else (without --force) or is not a regular file."""
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file; without --dir and --out, "
                         "render prints to stdout")
    try:
        same = path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same and not force:
        raise UsageError(f"{path} exists and differs from this render; pass --force to replace "
                         "it")
    return not same


@cli.command()
@click.argument("script", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              default="kdist.yaml", show_default=True, help="The spec file to write.")
@click.option("--name", help="Job name (default: the folder's name, made DNS-safe).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(script: str | None, args: tuple[str, ...], path: Path, name: str | None,
         force: bool) -> None:
    """Write a commented kdist.yaml for SCRIPT (kdist init train.py -- ARGS).

    Without SCRIPT: the one training script in this folder (a .py file that imports torch and
    runs as __main__), or kdist's demo trainer in a clone of its repository.
    """
    from kdist.fsio import write_all
    from kdist.tools.starter import pick_script, starter_spec

    if path.exists() and not force:
        raise KdistError(f"{path} exists; pass --force to overwrite it")
    entrypoint = pick_script(Path.cwd(), script)
    text = resources.files("kdist").joinpath("templates/kdist.yaml").read_text(encoding="utf-8")
    write_all({path: starter_spec(text, name or path.resolve().parent.name, entrypoint, args)})
    what = f" for {entrypoint}" if entrypoint else ""
    spec = "" if path == Path("kdist.yaml") else f" -f {path}"
    click.echo(f"wrote {path}{what}; nodes start in the checkpoint volume, where relative paths "
               f"the trainer writes (snapshots, final model) land; next: kdist run{spec}",
               err=True)
    if entrypoint:
        click.echo("for kdist up / apply: the spec's image must hold your project at /app, e.g. "
                   "`FROM kdist-trainer:0.1.0` + `COPY . /app/` (docs/outputs.md)", err=True)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of kdist.yaml (for editors: see README, "Editor support")."""
    import json

    from kdist.spec.schema import job_schema

    click.echo(json.dumps(job_schema(), indent=2))


def main() -> None:
    """Console entry point. An unexpected exception is reported in one line, not a traceback."""
    try:
        cli.main(prog_name="kdist")
    except Exception as e:  # a bug in kdist: say so plainly; KDIST_DEBUG=1 shows the traceback
        if os.environ.get("KDIST_DEBUG"):
            raise
        click.echo(printable(f"kdist: internal error: {type(e).__name__}: {e} "
                             "(rerun with KDIST_DEBUG=1 and report it)"), err=True)
        sys.exit(70)
