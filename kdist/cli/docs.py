"""docs/cli.md: the CLI reference, generated from the commands themselves (`make golden`).

Generate it in a fresh process (`python -m kdist.cli.docs`): click remembers each command's help
option from the first context that asks, so a process that has already run a command outside the
`kdist` group (as tests do) would print `--help` where users see `-h, --help`.
"""

from __future__ import annotations

import click

from kdist.cli import cli


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


if __name__ == "__main__":
    click.echo(cli_reference(), nl=False)
