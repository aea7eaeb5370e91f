"""`kdist doctor` and `kdist diff`: preflight checks, and the Compose and Kubernetes renderings
side by side. Register with `cli.add_command(doctor)` and `cli.add_command(diff)`.

The commands only draw what kdist.tools.doctor and kdist.tools.diff return; library errors (KdistError)
become messages and exit codes in kdist.cli's group. Only click and kdist.cli.options are imported
here at module level, so registering the commands does not slow `kdist render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdist.cli.options import json_alias, load_plan, output_option, printable, spec_option
from kdist.targets import names

if TYPE_CHECKING:
    from kdist.tools.diff import Row
    from kdist.tools.doctor import Check

STATUS_COLOURS = {"ok": "green", "warn": "yellow", "fail": "red"}
CELL = 56  # widest table cell in `kdist diff`; longer values are cut (-o json has them whole)


# ---- kdist doctor --------------------------------------------------------------------------


def format_checks(checks: Sequence[Check]) -> str:
    """The doctor table: CHECK, STATUS, DETAIL, and a `fix:` line under each check not ok."""
    width = max(len("CHECK"), *(len(c.name) for c in checks))
    lines = [f"{'CHECK'.ljust(width)}  STATUS  DETAIL"]
    for c in checks:
        status = click.style(c.status.ljust(6), fg=STATUS_COLOURS[c.status])
        lines.append(f"{c.name.ljust(width)}  {status}  {c.detail}")
        if c.status != "ok" and c.fix:
            lines.append(f"{' ' * (width + 10)}fix: {c.fix}")
    return "\n".join(lines)


def summary(checks: Sequence[Check], target: str, in_node: bool) -> str:
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    where = "in this node" if in_node else f"for target {target}"
    if not fails and not warns:
        return f"kdist doctor: all {len(checks)} checks passed {where}"
    parts = [f"{fails} failed"] if fails else []
    parts += [f"{warns} warning{'s' if warns != 1 else ''}"] if warns else []
    return f"kdist doctor: {', '.join(parts)} of {len(checks)} checks {where}"


def _echo_in_node(checks: Sequence[Check]) -> None:
    """One line per check; a failure is one line on stderr with its reason and fix."""
    for c in checks:
        if c.status == "fail":
            click.echo(f"kdist doctor: FAIL {c.name}: {c.detail}; fix: {c.fix}", err=True)
        else:
            click.echo(f"kdist doctor: {c.status} {c.name}: {c.detail}")


@click.command()
@spec_option
@click.option("-t", "--target", type=click.Choice(names("run")), default=None,
              help="Where the job will run.  [default: local; k8s with --in-node]")
@click.option("--in-node", is_flag=True,
              help="Run inside a node's container or pod (as an init step): only the node-local "
                   "checks (/dev/shm, network interface, DNS of the store host, GPUs). Without "
                   "the spec file there (no -f, no ./kdist.yaml), the options below and the "
                   "node's environment say what to check.")
@click.option("--rdzv-host", metavar="HOST",
              help="Resolve this rendezvous host instead of the one the target renders.  "
                   "[default without a spec: the host of $PET_RDZV_ENDPOINT]")
@click.option("--shm", metavar="SIZE",
              help="--in-node: /dev/shm must be at least SIZE (e.g. 1Gi); smaller fails.  "
                   "[default: resources.shm of the spec; without a spec, not checked]")
@click.option("--interface", metavar="NAME",
              help="--in-node: the network interface the node must have.  [default: "
                   "network_interface of the spec; without a spec, $GLOO_SOCKET_IFNAME or "
                   "$NCCL_SOCKET_IFNAME]")
@click.option("--gpus", type=click.IntRange(min=0), metavar="N",
              help="--in-node: GPUs the node must see.  [default: resources.gpu of the spec; "
                   "without a spec, 0]")
@click.option("--context", metavar="NAME",
              help="Kubernetes context for --target k8s.  [default: current-context]")
@output_option("text", "json", help="text: a table of checks; json: the checks as JSON.")
@json_alias
@click.pass_context
def doctor(ctx: click.Context, spec_file: Path, target: str | None, in_node: bool,
           rdzv_host: str | None, shm: str | None, interface: str | None, gpus: int | None,
           context: str | None, output: str) -> None:
    """Check that this machine can run the job: a table of checks with a fix for each failure.

    \b
    local:     Python, torch, the rendezvous port, /dev/shm, the network interface, GPUs
    compose:   Docker Engine and Compose v2, GPUs, a distinct GPU set per node
    k8s:       the context's API server answers (GET /version)
    --in-node: /dev/shm, the network interface, DNS of the store host, GPUs (one line each)

    \b
    In a node without the spec file (an init step in the trainer image):
      kdist doctor --in-node --shm 1Gi --rdzv-host job-rdzv --interface eth0

    Exits 1 when any check fails, 0 otherwise (warnings do not fail).
    """
    from kdist.tools.doctor import Options, failed, run_checks

    node_only = {"--shm": shm, "--interface": interface, "--gpus": gpus}
    given = [name for name, value in node_only.items() if value is not None]
    if given and not in_node:
        verb = "apply" if len(given) > 1 else "applies"
        raise click.UsageError(f"{', '.join(given)} {verb} only with --in-node")
    target = target or ("k8s" if in_node else "local")
    default_spec = ctx.get_parameter_source("spec_file") is click.core.ParameterSource.DEFAULT
    specless = in_node and default_spec and not spec_file.exists()
    plan = None if specless else load_plan(spec_file)
    options = Options(target, in_node, rdzv_host or "", context, shm=shm or "",
                      interface=interface or "", gpus=gpus)
    checks = run_checks(plan, options)
    as_json = output == "json"
    if as_json:
        import json

        doc = {"target": target, "in_node": in_node, "spec": None if specless else str(spec_file),
               "ok": not failed(checks), "checks": [c.as_dict() for c in checks]}
        click.echo(json.dumps(doc, indent=2))
    elif in_node:
        _echo_in_node(checks)
    else:
        click.echo(format_checks(checks))
    if not as_json:
        click.echo(summary(checks, target, in_node), err=bool(failed(checks)))
    if failed(checks):
        ctx.exit(1)


# ---- kdist diff ----------------------------------------------------------------------------


def _read_yaml(path: Path, many: bool) -> Any:
    """A YAML file (all its documents when `many`), read within kdist.yamlio's budgets."""
    from kdist.yamlio import read_documents

    return read_documents(path, many)


def _renderings(spec_file: Path, compose_file: Path | None,
                k8s_file: Path | None) -> tuple[Any, Any]:
    """The compose dict and the Kubernetes documents: from the files given, else rendered."""
    from kdist.errors import InputError

    compose = _read_yaml(compose_file, many=False) if compose_file else None
    docs = _read_yaml(k8s_file, many=True) if k8s_file else None
    if compose_file is None or k8s_file is None:
        plan = load_plan(spec_file)
        if compose_file is None:
            from kdist.targets.compose import render as render_compose

            compose = render_compose.render(plan)
        if k8s_file is None:
            from kdist.targets.k8s import render as render_k8s

            docs = render_k8s.render(plan)
    if not isinstance(compose, dict):
        raise InputError(f"{compose_file}: not a Compose file (expected a mapping with services)")
    return compose, docs


def _cell(text: str) -> str:
    return text if len(text) <= CELL else text[: CELL - 3] + "..."


def format_rows(rows: Sequence[Row]) -> str:
    """The diff table (a `!=` flag on rows that differ), what differs, and the by-design notes."""
    from kdist.tools.diff import BY_DESIGN

    table = [("", "ROW", "COMPOSE", "KUBERNETES")]
    table += [("" if r.same else "!=", r.name, _cell(r.compose), _cell(r.k8s)) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    lines = [f"{t[0].ljust(widths[0])}  {t[1].ljust(widths[1])}  {t[2].ljust(widths[2])}  "
             f"{t[3]}".rstrip() for t in table]
    differ = [r for r in rows if not r.same]
    if differ:
        lines += ["", "Differences:"] + [f"  {r.name}: {r.detail}" for r in differ]
    lines += ["", "Not compared (different by design):"]
    lines += [f"  {what}: {why}" for what, why in BY_DESIGN]
    return "\n".join(lines)


@click.command()
@spec_option
@click.option("--compose", "compose_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Compare this compose file instead of a fresh render.")
@click.option("--k8s", "k8s_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Compare these Kubernetes manifests instead of a fresh render.")
@output_option("text", "json", help="text: a table; json: the rows as JSON.")
@json_alias
@click.pass_context
def diff(ctx: click.Context, spec_file: Path, compose_file: Path | None, k8s_file: Path | None,
         output: str) -> None:
    """Compare the Compose and Kubernetes renderings of the job: what must match.

    The torchrun line (but for the rendezvous host), env, rendezvous port and store, /dev/shm,
    GPUs, cpu, memory, the checkpoint mount, the working directory, the uid, the read-only root,
    the scratch mounts and the number of nodes. Both come from a fresh
    render of the spec unless --compose / --k8s name a (hand-altered) manifest. Exits 1 when
    any row differs, 2 when a manifest cannot be read, 0 otherwise.
    """
    from kdist.tools.diff import compare

    rows = compare(*_renderings(spec_file, compose_file, k8s_file))
    differ = [r for r in rows if not r.same]
    if output == "json":
        import json

        doc = {"same": not differ, "rows": [r.as_dict() for r in rows]}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(printable(format_rows(rows)))
        what = f"{len(differ)} of {len(rows)} rows differ" if differ else \
            f"all {len(rows)} rows match"
        click.echo(f"kdist diff: {what}", err=bool(differ))
    if differ:
        ctx.exit(1)
