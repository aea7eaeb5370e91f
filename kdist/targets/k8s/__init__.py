"""`k8s`: a StatefulSet behind a headless Service, and what a cluster needs (`kdist apply`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdist.targets import Target, Where

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.targets.k8s.job import K8sJob


def render_text(plan: LaunchPlan) -> str:
    from kdist.targets.k8s import render
    from kdist.yamlio import dump_all

    return dump_all(render.render(plan))


def store_host(plan: LaunchPlan) -> str:
    from kdist.targets.k8s import render

    return render.store_host(plan)


def dns_hint(plan: LaunchPlan) -> str:
    if plan.standalone_store:
        return (f"the store Service {plan.store_name} must exist in this pod's namespace "
                f"(`kubectl get svc,endpoints {plan.store_name}`); apply the whole rendered "
                "manifest (`kdist apply --target k8s`)")
    return (f"the headless Service {plan.name} must exist and publish not-ready addresses "
            f"(kdist renders publishNotReadyAddresses: true) and pod {plan.name}-0 must be "
            f"scheduled; check `kubectl get svc,endpoints,pods -l app.kubernetes.io/instance="
            f"{plan.name}`")


def open_job(plan: LaunchPlan, where: Where) -> K8sJob:
    from kdist.targets.k8s.job import K8sJob

    return K8sJob.connect(plan, where.context, where.namespace)


TARGET = Target(name="k8s", store_host=store_host, filename="k8s.yaml", render=render_text,
                open_job=open_job, uses_cluster=True,
                verbs=frozenset({"status", "logs", "scale", "apply"}),
                preflight=("kube", "gpus-per-node"), dns_hint=dns_hint)
