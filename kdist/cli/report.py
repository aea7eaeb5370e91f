"""`kdist report RUN`: a self-contained HTML picture of a local run (kdist.tools.report).

Register with `cli.add_command(report)`. RUN is a run folder (or its metrics.jsonl) or a run id
under .kdist/runs/; the page goes to `<run folder>/report.html` unless `--out` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import click

from kdist.cli.options import warn_deprecated
from kdist.errors import KdistError, UsageError

METRICS = "metrics.jsonl"
RUNS_DIR = Path(".kdist") / "runs"  # as in kdist.targets.local.job (not imported: keeps this light)


def resolve_run(run: str) -> Path:
    """The run folder for RUN: a folder, a metrics.jsonl in one, or a run id under .kdist/runs/."""
    path = Path(run)
    if path.is_file() and path.name == METRICS:
        return path.parent
    if path.is_dir():
        return path
    by_id = RUNS_DIR / run
    if by_id.is_dir():
        return by_id
    raise UsageError(f"no run {run!r}: not a folder, and no {by_id} (kdist run writes each run "
                     f"to {RUNS_DIR}/<run-id>/ or to its --run-dir)")


def read_metrics(run_dir: Path) -> list[str]:
    path = run_dir / METRICS
    if not path.is_file():
        raise KdistError(f"{path} not found: {run_dir} does not look like a kdist run folder "
                         "(kdist run writes metrics.jsonl there)")
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise KdistError(f"cannot read {path}: {e.strerror}") from None


@click.command()
@click.argument("run", metavar="RUN")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write the page  [default: <run folder>/report.html]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), hidden=True,
              help="The old spelling of --out, kept for one release (warns).")
def report(run: str, out: Path | None, output: Path | None) -> None:
    """Write an HTML picture of a `kdist run`: loss, throughput and world size over time,
    with node kills, exits, restarts and resumes marked on the same time axis.

    RUN is a run folder (a --run-dir) or a run id under .kdist/runs/. The page is one file with
    inline SVG (no scripts, no network); its path is printed.
    """
    from kdist.fsio import write_all
    from kdist.tools.report import parse, render_html

    if output is not None:
        if out is not None:
            raise click.UsageError("-o (the old spelling of --out) cannot go with --out")
        warn_deprecated(f"-o {output} for a file", f"use --out {output}")
        out = output
    run_dir = resolve_run(run)
    model = parse(read_metrics(run_dir))
    if not model.markers and not model.samples and not model.checkpoints:
        skipped = f" ({model.skipped} empty or garbled lines skipped)" if model.skipped else ""
        raise KdistError(f"{run_dir / METRICS} holds no kdist metrics{skipped}")
    if model.skipped:
        click.echo(f"kdist: skipped {model.skipped} empty or garbled lines of "
                   f"{run_dir / METRICS}", err=True)
    target = out if out is not None else run_dir / "report.html"
    write_all({target: render_html(model, run_dir.resolve().name)})
    click.echo(str(target))
