"""`compose`: one container per node in a Docker Compose project (`kdist up`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdist.targets import Target, Where

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.targets.compose.job import ComposeJob


def render_text(plan: LaunchPlan) -> str:
    from kdist.targets.compose import render
    from kdist.yamlio import dump

    return dump(render.render(plan))


def store_host(plan: LaunchPlan) -> str:
    from kdist.targets.compose import render

    return render.store_host(plan)


def dns_hint(plan: LaunchPlan) -> str:
    return ("run the node on the job's Compose network (`kdist up` does) and check "
            "`docker compose ps` for the store's service")


def open_job(plan: LaunchPlan, where: Where) -> ComposeJob:
    from kdist.targets.compose.job import ComposeJob

    return ComposeJob.open(plan, where.cwd)


TARGET = Target(name="compose", store_host=store_host, filename="docker-compose.yaml",
                render=render_text, open_job=open_job, simulates_network=True,
                status_reads_logs=True, verbs=frozenset({"status", "logs", "scale"}),
                preflight=("docker", "gpus-all-nodes", "gpu-sets"), dns_hint=dns_hint)
