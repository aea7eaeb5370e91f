"""Helm target: a spec as values for `charts/kdist` (`kdist render --target helm-values`).

`helm template RELEASE charts/kdist -f <values>` renders the same objects as
`kdist render --target k8s` (docs/architecture.md invariant 3; tests/test_helm.py compares them object by
object). Object names come from `name` in the values, never from the release name, so any
release name gives the same objects.

The values hold the four keys every spec states (`name`, `image`, `entrypoint`, `nodes`) and
every other setting whose value differs from kdist's default; the chart's values.yaml carries
kdist's defaults for the rest (a test pins values.yaml to `JobSpec`'s defaults). Keys are
camelCase, as Helm charts spell them, in the order of kdist.yaml; the compose section is not
needed by the chart and is left out.
"""

from __future__ import annotations

from typing import Any

from kdist.plan import LaunchPlan
from kdist.spec.model import JobSpec, Nodes, Toleration

ALWAYS = ("name", "image", "entrypoint", "nodes")


def _toleration(t: Toleration) -> dict[str, str]:
    """The fields k8s.py renders: the ones that are set (operator is always set)."""
    return {f: v for f in ("key", "operator", "value", "effect") if (v := getattr(t, f))}


def chart_values(spec: JobSpec) -> dict[str, Any]:
    """Every value the chart reads, for this spec (the full form of `render`)."""
    res, rdzv, ckpt, k = spec.resources, spec.rendezvous, spec.checkpoint, spec.k8s
    return {
        "name": spec.name,
        "image": spec.image,
        "entrypoint": spec.entrypoint,
        "args": list(spec.args),
        "nodes": {"min": spec.nodes.min, "max": spec.nodes.max, "count": spec.nodes.count},
        "procsPerNode": spec.procs_per_node,
        "maxRestarts": spec.max_restarts,
        "resources": {"cpu": res.cpu, "memory": res.memory, "gpu": res.gpu, "shm": res.shm},
        "rendezvous": {
            "store": rdzv.store,
            "port": rdzv.port,
            "joinTimeout": rdzv.join_timeout,
            "lastCallTimeout": rdzv.last_call_timeout,
            "closeTimeout": rdzv.close_timeout,
            "keepAliveInterval": rdzv.keep_alive_interval,
            "keepAliveMaxAttempt": rdzv.keep_alive_max_attempt,
            "readTimeout": rdzv.read_timeout,
            "waitTimeout": rdzv.wait_timeout,
        },
        "checkpoint": {
            "path": ckpt.path,
            "size": ckpt.size,
            "storageClass": ckpt.storage_class,
            "accessMode": ckpt.access_mode,
        },
        "env": dict(spec.env),
        "networkInterface": spec.network_interface,
        "runAsUser": spec.run_as_user,
        "namespace": k.namespace,
        "nodeSelector": dict(k.node_selector),
        "tolerations": [_toleration(t) for t in k.tolerations],
        "serviceAccount": k.service_account,
        "priorityClass": k.priority_class,
        "imagePullSecrets": list(k.image_pull_secrets),
        "queue": k.queue,
    }


def _defaults(spec: JobSpec) -> dict[str, Any]:
    """`chart_values` of a spec that states only the required keys (kdist's defaults)."""
    return chart_values(JobSpec(name=spec.name, image=spec.image, entrypoint=spec.entrypoint,
                                nodes=Nodes(min=1, max=1, count=1)))


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and isinstance(defaults[key], dict) and defaults[key]:
            sub = _changed(value, defaults[key])
            if sub:
                out[key] = sub
        elif value != defaults[key]:
            out[key] = value
    return out


def render(plan: LaunchPlan) -> dict[str, Any]:
    """Helm values for `charts/kdist`: the required keys plus what differs from the defaults."""
    values = chart_values(plan.spec)
    changed = _changed(values, _defaults(plan.spec))
    return {key: values[key] if key in ALWAYS else changed[key]
            for key in values if key in ALWAYS or key in changed}
