"""`--dev` for `kdist render --target compose` and `kdist up`: options, checks and output.

The work is in kdist.targets.compose.dev_render (the service) and
kdist.targets.compose.dev_job (image, token, readiness).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from kdist.errors import KdistError, UsageError

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.targets.compose.dev_job import DevServer
    from kdist.targets.compose.job import ComposeJob

F = TypeVar("F", bound=Callable[..., object])
DEFAULT_PORT = 8888  # kdist.targets.compose.dev_render.DEFAULT_PORT, repeated so that --help imports nothing


def dev_options(fn: F) -> F:
    """`--dev` and `--dev-port`."""
    fn = click.option("--dev-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
                      help=f"Host port for --dev, bound on 127.0.0.1 only (0: a free one).  "
                           f"[default: {DEFAULT_PORT}]")(fn)
    return click.option("--dev", is_flag=True,
                        help="Add JupyterLab (service `dev`): the code and checkpoints mounted, on "
                             "the job's network, published on 127.0.0.1 with a generated token.")(fn)


def dev_port(dev: bool, port: int | None, target: str = "compose") -> int:
    """The host port for --dev; a UsageError for --dev-port without --dev or a non-compose target."""
    if not dev and port is not None:
        raise UsageError("--dev-port needs --dev")
    if dev and target != "compose":
        raise UsageError(f"--dev adds a Compose service: use it with --target compose, not {target}")
    return DEFAULT_PORT if port is None else port


def open_job(plan: LaunchPlan, port: int) -> ComposeJob:
    from kdist.targets.compose.dev_job import open_job

    return open_job(plan, Path.cwd(), port)


def start(job: ComposeJob, build: bool | None) -> DevServer:
    """Start JupyterLab next to the running job and print where it is."""
    from kdist.targets.compose.dev_job import start

    click.echo("kdist: starting JupyterLab (service dev)", err=True)
    try:
        server = start(job, build, on_output=lambda line: click.echo(line, err=True))
    except KdistError as e:
        error = KdistError(f"{e}\n(job {job.project.name} runs without JupyterLab: `kdist status` "
                           "shows it, `kdist down` removes it)")
        error.exit_code = e.exit_code
        raise error from None
    click.echo(f"kdist: JupyterLab is ready at {server.url}", err=True)
    click.echo(f"kdist: the token is in {server.token_file} (readable by you only); only "
               "this machine can connect; `kdist down` removes it", err=True)
    return server


def remind(server: DevServer | None) -> None:
    """After an attached `kdist up --dev`: JupyterLab outlives the job until `kdist down`."""
    if server is not None:
        click.echo(f"kdist: JupyterLab keeps running at {server.url}; `kdist down` removes it",
                   err=True)
