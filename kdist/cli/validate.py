"""`kdist validate`: the CLI boundary of kdist.validate (registered with cli.add_command)."""

from __future__ import annotations

import gc
import os
import sys

import click

FORMATS = ("text", "json", "github")


def _colour(text: str, role: str) -> str:
    colours = {"error": "red", "warning": "yellow"}
    if role in colours:
        return click.style(text, fg=colours[role], bold=True)
    if role == "dim":
        return click.style(text, dim=True)
    return click.style(text, bold=True) if role == "bold" else text


@click.command()
@click.argument("paths", nargs=-1, metavar="[PATH]...")
@click.option("-k", "--kubernetes-version", default="", metavar="X.Y",
              help="Kubernetes version whose strict OpenAPI schemas to use (default: newest).")
@click.option("--disable", "disable", multiple=True, metavar="RULE",
              help="Turn a rule off (repeatable, or comma-separated).")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text for people, json for tools, github for workflow annotations.")
@click.option("--fail-on", type=click.Choice(["error", "warning"]), default="error",
              show_default=True, help="Lowest severity that makes the exit status 1.")
@click.option("--no-docker", is_flag=True,
              help="Do not run `docker compose config`; use kdist's own Compose checks.")
@click.option("--list-rules", is_flag=True, help="List every rule id and exit.")
def validate(paths: tuple[str, ...], kubernetes_version: str, disable: tuple[str, ...],
             output: str, fail_on: str, no_docker: bool, list_rules: bool) -> None:
    """Check kdist.yaml specs, Compose files and Kubernetes manifests for CI.

    PATH is a file, a directory (every *.yaml / *.yml below it), a glob, or - for stdin;
    the default is ./kdist.yaml. Specs are loaded and rendered for every target first.
    Exit status: 0 clean (warnings allowed), 1 findings, 2 usage error or unreadable input.
    """
    from kdist.validate import Options, parse_disabled
    from kdist.validate import report as fmt
    from kdist.validate import validate as run_validation

    if list_rules:
        click.echo(fmt.rules_table(), nl=False)
        return
    from kdist.errors import UsageError
    from kdist.validate import docker

    runner = None if no_docker else docker.runner
    threshold = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)  # YAML node trees: fewer, larger GC passes (~10 % faster)
    try:
        options = Options(kubernetes_version, parse_disabled(disable), runner)
        result = run_validation(list(paths) or ["kdist.yaml"], options, stdin=sys.stdin.buffer.read)
    except UsageError as e:  # exit status 2, also when run outside the kdist group
        raise click.UsageError(str(e)) from None
    finally:
        gc.set_threshold(*threshold)
    if output == "json":
        click.echo(fmt.as_json(result), nl=False)
    elif output == "github":
        click.echo(fmt.github(result), nl=False)
    else:
        style = _colour if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else fmt.plain
        click.echo(fmt.text(result, style), nl=False)
    code = fmt.exit_code(result, fail_on)
    if code:
        raise click.exceptions.Exit(code)


if __name__ == "__main__":  # `python -m kdist.cli.validate` until the command is registered
    validate(prog_name="kdist validate")
