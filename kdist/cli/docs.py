"""docs/cli.md: the CLI reference, generated from the commands themselves (`make golden`).

Generate it in a fresh process (`python -m kdist.cli.docs`): click remembers each command's help
option from the first context that asks, so a process that has already run a command outside the
`kdist` group (as tests do) would print `--help` where users see `-h, --help`.
"""

from __future__ import annotations

import click

from kdist.cli import cli

OLD_SPELLINGS = """## Old option spellings

These still work for one release; each prints one `kdist: warning: ... is deprecated` line on
stderr and does what the new spelling does.

| Old | New |
|---|---|
| `kdist render -o DIR` (a folder, or a new name without .yaml/.yml) | `kdist render --dir DIR` |
| `kdist render -o FILE` (an existing file, or a name ending in .yaml/.yml) | `kdist render --out FILE` |
| `kdist render -o -` | `kdist render` (stdout is the default) |
| `kdist report RUN -o FILE` | `kdist report RUN --out FILE` |
| `kdist status/doctor/diff --json` | `-o json` |

`kdist render -o yaml` is the format (stdout), also where a folder named yaml exists (that is
`--dir yaml`); `-o text` or `-o json` is a usage error (render writes yaml).

`kdist logs -t` now means `--target`, as in every command (it meant `--timestamps`, which is
long-only now): `kdist logs -t` alone, or with a value that is no target, is a usage error
(exit 2) that names the targets.
"""


def cli_reference() -> str:
    root = click.Context(cli, info_name="kdist", terminal_width=100, max_content_width=100,
                         **cli.context_settings)
    parts = ["# kdist command reference\n",
             "Generated from the commands by `make golden`; a test keeps it current.\n",
             "```\n" + cli.get_help(root) + "\n```\n"]
    for name in cli.list_commands(root):
        command = cli.get_command(root, name)
        assert command is not None
        ctx = click.Context(command, info_name=name, parent=root,
                            terminal_width=100, max_content_width=100)
        parts.append(f"## kdist {name}\n\n```\n{command.get_help(ctx)}\n```\n")
    return "\n".join([*parts, OLD_SPELLINGS])


if __name__ == "__main__":
    click.echo(cli_reference(), nl=False)
