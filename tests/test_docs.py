"""docs/cli.md is generated from the commands themselves; `make golden` rewrites it."""

from __future__ import annotations

import json

import click
from conftest import ROOT, Golden

from kdist.cli import cli
from kdist.schema import job_schema


def cli_reference() -> str:
    root = click.Context(cli, info_name="kdist", terminal_width=100, max_content_width=100,
                         **cli.context_settings)
    parts = ["# kdist command reference\n",
             "Generated from the commands by `make golden`; a test keeps it current.\n",
             "```\n" + cli.get_help(root) + "\n```\n"]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        ctx = click.Context(command, info_name=name, parent=root,
                            terminal_width=100, max_content_width=100)
        parts.append(f"## kdist {name}\n\n```\n{command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


def test_cli_reference_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "cli.md", cli_reference())


def test_readme_links_the_cli_reference() -> None:
    assert "docs/cli.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_committed_schema_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "kdist.schema.json", json.dumps(job_schema(), indent=2) + "\n")
