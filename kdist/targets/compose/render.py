"""Compose target: one service per node (stable hostnames, distinct GPU sets) + the store."""

from __future__ import annotations

from typing import Any

from kdist.plan import STORE_COMPONENT, LaunchPlan
from kdist.spec.quantity import cpu_cores, memory_bytes
from kdist.targets.compose.netem import netem_services

NETWORK = "kdist"
VOLUME = "checkpoints"
TMP = "/tmp"  # a tmpfs (exec, like an emptyDir; in RAM) where the pods have an emptyDir; HOME too
SCALE_PROFILE = "scale"  # nodes beyond `nodes.count`, started by `kdist scale`
# `rdzv` exits this long after its last node left (kdist/node/store.py): the job has ended, and a
# detached job leaves nothing running; a node back from a restart reconnects within seconds
STORE_IDLE_EXIT = 30


def node_service(i: int) -> str:
    return f"node-{i}"


def compose_size(quantity: str) -> str:
    """Kubernetes quantity -> a Compose byte value (`1Gi` -> `1g`)."""
    n = memory_bytes(quantity)
    for suffix, factor in (("g", 2**30), ("m", 2**20), ("k", 2**10)):
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    return f"{n}b"


def escape(value: str) -> str:
    """Compose interpolates `$VAR`; `$$` is a literal dollar sign."""
    return value.replace("$", "$$")


def escaped(node: Any) -> Any:
    """Every string in a Compose document (keys too) escaped: no value reaches Compose's
    interpolation, so `$HOME` or `${SECRET}` in the spec stays as written."""
    if isinstance(node, str):
        return escape(node)
    if isinstance(node, dict):
        return {escaped(k): escaped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [escaped(v) for v in node]
    return node


def _hardening(plan: LaunchPlan) -> dict[str, Any]:
    """As strict as the Kubernetes pods: same uid, read-only root, /tmp the only scratch space."""
    return {
        "user": f"{plan.spec.run_as_user}:{plan.spec.run_as_user}",
        "init": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": [f"{TMP}:exec"],
        "networks": [NETWORK],
    }


def _store_service(plan: LaunchPlan) -> dict[str, Any]:
    port = plan.spec.rendezvous.port
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
    return {
        "image": plan.spec.image,
        "hostname": STORE_COMPONENT,
        "command": plan.store_argv(idle=STORE_IDLE_EXIT),
        "environment": {"HOME": TMP},
        **_hardening(plan),
        "healthcheck": {
            "test": ["CMD", "python3", "-c", probe],
            "interval": "1s",
            "timeout": "3s",
            "retries": 120,
        },
        "restart": "on-failure",
    }


def _resources(plan: LaunchPlan, i: int) -> dict[str, Any]:
    res = plan.spec.resources
    out: dict[str, Any] = {
        "limits": {"cpus": f"{cpu_cores(res.cpu):g}", "memory": compose_size(res.memory)}
    }
    if res.gpu:
        ids = [str(i * res.gpu + j) for j in range(res.gpu)]  # distinct per node on one host
        devices = [{"driver": "nvidia", "device_ids": ids, "capabilities": ["gpu"]}]
        out["reservations"] = {"devices": devices}
    return out


def node_restart(plan: LaunchPlan) -> str:
    """Restart a node whose torchrun failed, up to max_restarts times, as Kubernetes does.

    A lost store fails every agent (torch's store clients never reconnect); restarted, a node
    waits for the restarted `rdzv` and joins a new round. A container stopped or killed through
    Docker (`kdist kill`, `scale`, `stop`, Ctrl-C) is never restarted by its policy, and Docker
    reads `on-failure:0` as "forever", hence "no" for max_restarts 0.
    """
    retries = plan.spec.max_restarts
    return f"on-failure:{retries}" if retries > 0 else "no"


def store_host(plan: LaunchPlan) -> str:
    """The rendezvous host the nodes dial: the store's service, or node 0's (node0 store)."""
    return STORE_COMPONENT if plan.standalone_store else node_service(0)


def _node_service(plan: LaunchPlan, i: int) -> dict[str, Any]:
    s, name = plan.spec, node_service(i)
    host = store_host(plan)
    hosts_store = not plan.standalone_store and i == 0
    svc: dict[str, Any] = {"image": s.image}
    if s.compose.build is not None:
        svc["build"] = {"context": s.compose.build.context, "dockerfile": s.compose.build.dockerfile}
    svc |= {
        "hostname": name,
        "command": ["sh", "-c", plan.node_script(host, is_host=hosts_store)],
        # a name without a value: Compose passes it from the environment `docker compose` runs in
        "environment": {**plan.env(), "HOME": TMP, "PET_LOCAL_ADDR": name,
                        **dict.fromkeys(s.secret_env)},
        **_hardening(plan),
        "shm_size": compose_size(s.resources.shm),
        "stop_grace_period": "60s",  # > torchrun's 30 s worker shutdown
        "deploy": {"resources": _resources(plan, i)},
        "volumes": [f"{VOLUME}:{s.checkpoint.path}"],
        "restart": node_restart(plan),
    }
    if plan.standalone_store:
        svc["depends_on"] = {STORE_COMPONENT: {"condition": "service_healthy"}}
    if i >= s.nodes.count:
        svc["profiles"] = [SCALE_PROFILE]
    return svc


def render(plan: LaunchPlan) -> dict[str, Any]:
    services: dict[str, Any] = {}
    if plan.standalone_store:
        services[STORE_COMPONENT] = _store_service(plan)
    for i in range(plan.spec.nodes.max):
        services[node_service(i)] = _node_service(plan, i)
    services |= netem_services(plan, {k: v for k, v in services.items() if k != STORE_COMPONENT})
    doc: dict[str, Any] = escaped({
        "name": plan.name,
        "services": services,
        "networks": {NETWORK: {"driver": "bridge"}},
        "volumes": {VOLUME: {}},
    })
    return doc
