"""Compose: network conditions (spec `network:`) as one `node-N-netem` helper per node service.

A helper shares its node's network namespace (`network_mode: service:node-N`), applies
`tc qdisc replace dev eth0 root netem ...` to the node's egress and exits. It runs the job's
image (which needs iproute2: trainers/Dockerfile installs it) as root with every capability
dropped but NET_ADMIN, because a non-root process gets no capabilities from `cap_add`.
The nodes themselves keep running as `run_as_user` with no capabilities at all.
"""

from __future__ import annotations

from typing import Any

from kdist.netem import tc_argv
from kdist.plan import LaunchPlan

SUFFIX = "-netem"
DEVICE = "eth0"  # a node service's one network (the job's user-defined network)


def helper_name(node: str) -> str:
    return node + SUFFIX


def _helper(plan: LaunchPlan, node: str, node_svc: dict[str, Any]) -> dict[str, Any]:
    assert plan.spec.network is not None
    svc: dict[str, Any] = {
        "image": plan.spec.image,
        "network_mode": f"service:{node}",
        "user": "0:0",  # NET_ADMIN is effective for root only; everything else is dropped
        "command": tc_argv(DEVICE, plan.spec.network),
        "cap_drop": ["ALL"],
        "cap_add": ["NET_ADMIN"],
        "security_opt": ["no-new-privileges:true"],
        "depends_on": {node: {"condition": "service_started"}},
        "restart": "no",
    }
    if "profiles" in node_svc:
        svc["profiles"] = list(node_svc["profiles"])
    return svc


def netem_services(plan: LaunchPlan, nodes: dict[str, Any]) -> dict[str, Any]:
    """`node-N-netem` for each node service in `nodes`; {} when the spec has no `network`."""
    if plan.spec.network is None:
        return {}
    return {helper_name(name): _helper(plan, name, svc) for name, svc in nodes.items()}
