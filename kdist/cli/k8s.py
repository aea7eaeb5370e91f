"""`kdist apply | delete`: the job on Kubernetes (`status`, `logs` and `scale` are
kdist/cli/jobs.py's, for every target). At import this module loads only click and small kdist
modules (options, jsonlines, jsonout): the backend and the API client are imported when a
command runs, so `kdist --help` never loads them. Library errors (KdistError) become messages
and exit codes in kdist.cli's group.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdist import jsonout
from kdist.cli.jsonlines import JsonLines, reporting
from kdist.cli.options import (
    cluster_options,
    load_plan,
    output_option,
    spec_option,
    target_option,
    warn_network_ignored,
)
from kdist.errors import UsageError

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.targets.k8s.job import Applied, K8sJob
    from kdist.targets.k8s.status import K8sJobStatus

WAIT_TIMEOUT = 3600  # `apply --wait` gives up after an hour unless --timeout says otherwise
QUEUE_NOTE = ("kdist: k8s.queue is set: Kueue admits the job as applied; `kdist scale` changes "
              "the StatefulSet's replicas directly and bypasses Kueue's quota")


def _connect(plan: LaunchPlan, context: str | None, namespace: str | None) -> K8sJob:
    from kdist.targets.k8s.job import K8sJob

    return K8sJob.connect(plan, context, namespace)


def _warn(job: K8sJob) -> None:
    for warning in dict.fromkeys(job.client.warnings):  # once each, in order
        click.echo(f"Warning: {warning}", err=True)
    job.client.warnings.clear()


def k8s_delete(plan: LaunchPlan, context: str | None, namespace: str | None,
               volumes: bool = False) -> None:
    """`kdist delete`: every object labelled with the job; the checkpoint claim with `volumes`."""
    job = _connect(plan, context, namespace)
    deleted = job.delete(volumes=volumes)
    for name in deleted.removed:
        click.echo(f"{name} deleted")
    if not deleted.removed and not deleted.kept:
        click.echo(f"kdist: nothing to delete: no objects of job {job.name} in {job.where}",
                   err=True)
    for name in deleted.kept:
        click.echo(f"kdist: kept {name} (its checkpoints); --volumes deletes it", err=True)


# ---- apply -------------------------------------------------------------------------------------


def _print_objects(objects: list[dict[str, Any]], output: str) -> None:
    from kdist.yamlio import dump_all

    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        click.echo(dump_all(objects), nl=False)


def _client_dry_run(plan: LaunchPlan, namespace: str | None, output: str) -> None:
    """No network: what would be applied, exactly `kdist render --target k8s` without -n."""
    from kdist.targets.k8s.job import display_name, manifests

    docs = manifests(plan, namespace)
    if output != "text":
        _print_objects(docs, output)
        return
    names = [display_name("Secret", plan.secret_env_name)] if plan.spec.secret_env else []
    names += [display_name(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    for name in names:
        click.echo(f"{name} serverside-applied (client dry run)")


def _without_managed_fields(applied: list[Applied]) -> list[dict[str, Any]]:
    out = []
    for a in applied:
        obj = dict(a.object)
        obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                           if k != "managedFields"}
        if obj.get("kind") == "Secret":  # secret_env's values stay out of the terminal and logs
            obj["data"] = dict.fromkeys(obj.get("data") or {}, "(hidden)")
        out.append(obj)
    return out


def _news(job: K8sJob, status: K8sJobStatus, seen: set[str]) -> list[tuple[str, str]]:
    """What a waiting user has not seen yet: (resumed, the error) after a dropped connection,
    (pending, why) for each new reason the job is pending."""
    from kdist.status import PENDING

    news = [("reconnected", e) for e in job.interruptions]
    job.interruptions.clear()
    if status.phase == PENDING:
        fresh = [w for w in job.why_pending() if w not in seen]
        seen.update(fresh)
        news += [("pending", w) for w in fresh]
    return news


NEWS_TEXT = {"reconnected": "kdist: the API server dropped the watch ({}); resumed",
             "pending": "why pending: {}"}


def wait_for(job: K8sJob, timeout: float | None, out: JsonLines | None = None) -> None:
    """Print a status line whenever the job's status changes, until it finishes.

    With `out` (json), a status snapshot instead, and the job and root cause for the result.
    """
    from kdist.status import state_dict
    from kdist.targets.k8s.status import to_state

    start, last, status = time.monotonic(), "", None
    seen: set[str] = set()
    try:
        for status in job.watch(timeout=timeout or None):
            line = job.summary(status)
            for kind, text in _news(job, status, seen):
                if out is not None:
                    out.event(kind, out.elapsed(), {"error" if kind == "reconnected" else "why": text})
                else:
                    click.echo(f"[{time.monotonic() - start:6.0f}s] {NEWS_TEXT[kind].format(text)}",
                               err=True)
            if out is not None:
                out.snapshot(jsonout.job_state(to_state(status, job.client.conn.context),
                                               out.elapsed()))
            elif line != last:
                click.echo(f"[{time.monotonic() - start:6.0f}s] {line}", err=True)
                last = line
    except KeyboardInterrupt:
        click.echo(f"\nkdist: stopped waiting; job {job.name} keeps running (kdist status, "
                   "kdist delete)", err=True)
        raise click.exceptions.Exit(130) from None
    error = job.failure(status) if status is not None else None
    if out is not None and status is not None:
        out.job = state_dict(to_state(status, job.client.conn.context))
        if error is not None:
            out.cause = (jsonout.job_failure(error)
                         or jsonout.root_cause(status.finished_by or None, status.exit_code))
    if error is not None:
        raise error
    click.echo(f"kdist: job {job.name} succeeded", err=True)


@click.command()
@spec_option
@target_option("apply")
@cluster_options
@click.option("--dry-run", type=click.Choice(["none", "client", "server"]), default="none",
              show_default=True,
              help="client: print what would be applied (no cluster); server: the API server "
                   "validates and admits it but stores nothing.")
@output_option("text", "yaml", "json",
               help="text: one line per object; yaml, json: the objects (as the server returned "
                    "them). With --wait, json means JSON lines on stdout instead: an `applied` "
                    "event per object, status snapshots, a final result line.")
@click.option("--wait", is_flag=True, help="Then show live status until the job finishes; exit "
                                           "with its outcome.")
@click.option("--timeout", type=click.FloatRange(min=0), default=WAIT_TIMEOUT, show_default=True,
              metavar="SECONDS",
              help="With --wait: give up after this long (the job keeps running); 0: no limit.")
def apply(spec_file: Path, target: str, context: str | None, namespace: str | None, dry_run: str,
          output: str, wait: bool, timeout: float | None) -> None:
    """Create or update the job on Kubernetes (server-side apply, field manager kdist).

    Applies what `kdist render --target k8s` prints, in that order. Applying again is a no-op.
    A finished job stops itself (its StatefulSet is scaled to 0); delete it to run it again.
    """
    out = JsonLines("k8s") if wait and output == "json" else None
    with reporting(out):
        if wait and dry_run != "none":
            raise UsageError("--wait needs a real apply (--dry-run=none)")
        plan = load_plan(spec_file)
        warn_network_ignored(plan, target)
        if dry_run == "client":
            _client_dry_run(plan, namespace, output)
            return
        job = _connect(plan, context, namespace)
        _apply_objects(job, dry_run == "server", output, out)
        if plan.spec.k8s.queue:
            click.echo(QUEUE_NOTE, err=True)
        if out is None and dry_run == "none":
            click.echo(f"kdist: nodes start in {plan.workdir} on claim {plan.checkpoint_claim} "
                       "(relative paths the trainer writes land there; kdist delete keeps it)",
                       err=True)
        if wait:
            wait_for(job, timeout, out)


def _apply_objects(job: K8sJob, server_dry_run: bool, output: str, out: JsonLines | None) -> None:
    """Apply, then show what was applied: a line, the objects, or (json --wait) an event each."""
    from kdist.targets.k8s.job import display_name

    applied: list[Applied] = []
    for result in job.apply(dry_run=server_dry_run, environ=os.environ):
        applied.append(result)
        if out is not None:
            out.event("applied", out.elapsed(), {"object": display_name(result.kind, result.name),
                                                 "namespace": result.namespace,
                                                 "dry_run": result.dry_run})
        elif output == "text":
            click.echo(str(result))
    _warn(job)
    if out is None and output != "text":
        _print_objects(_without_managed_fields(applied), output)


@click.command()
@spec_option
@target_option("apply")
@cluster_options
@click.option("--volumes", is_flag=True,
              help="Also delete the checkpoint claim (the next apply starts from scratch).")
def delete(spec_file: Path, target: str, context: str | None, namespace: str | None,
           volumes: bool) -> None:
    """Delete the job from Kubernetes: every object labelled with it (checkpoints are kept)."""
    k8s_delete(load_plan(spec_file), context, namespace, volumes)
