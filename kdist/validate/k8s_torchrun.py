"""torchrun workloads on Kubernetes: endpoint, node counts, PDB, NetworkPolicy, shm, GPUs."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from kdist.spec.quantity import k8s_bytes
from kdist.validate import netpol, torchrun
from kdist.validate.k8s_refs import governing_service, is_headless, publishes_not_ready
from kdist.validate.objects import (
    Bundle,
    Obj,
    PodT,
    Sink,
    dig,
    integer,
    items,
    mapping,
    string,
)
from kdist.validate.torchrun import Call, Site
from kdist.validate.yamldoc import Path

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


@dataclass
class Launch:
    """A container of a pod template that runs torchrun."""

    pod: PodT
    site: Site
    nnodes: tuple[int, int] | None

    @property
    def nodes(self) -> int | None:
        obj = self.pod.obj
        if obj.kind == "Job":
            return integer(dig(obj.data, "spec", "parallelism"), 1)
        return self.pod.replicas


def launches(bundle: Bundle, sink: Sink) -> list[Launch]:
    out = []
    for pod in bundle.pods:
        for i, c in enumerate(items(pod.spec.get("containers"))):
            if not isinstance(c, dict):
                continue
            argv = [*items(c.get("command")), *items(c.get("args"))]
            call = torchrun.find_call(argv)
            if call is None:
                continue
            cpath = (*pod.path, "containers", i)
            site = _site(bundle, pod, cpath, c, call, sink)
            out.append(Launch(pod, site, torchrun.nnodes_of(site)))
    return out


def _site(bundle: Bundle, pod: PodT, cpath: Path, c: dict[str, Any], call: Call,
          sink: Sink) -> Site:
    env, opaque = container_env(bundle, pod.obj, c)
    complete = not opaque or (torchrun.SHARE_STORE_ENV not in opaque and "*" not in opaque)
    shm_path, shm_mounted, shm = _shm(pod, c)
    n_cmd = len(items(c.get("command")))
    element = (("command", call.element) if call.element < n_cmd
               else ("args", call.element - n_cmd))
    paths: dict[str, Path] = {
        "command": (*cpath, *element), "env": (*cpath, "env") if "env" in c else cpath,
        "shm": shm_path, "gpu": (*cpath, "resources"),
    }

    def report(rule: str, where: str, message: str) -> None:
        line = call.script_line if where == "command" else None
        pod.obj.report(sink, rule, paths[where], f"container {string(c.get('name'))!r}: {message}",
                       script_line=line)

    return Site(call, env, complete, gpus(c), shm, shm_mounted, report)


def container_env(bundle: Bundle, near: Obj, c: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """(literal values with ConfigMaps of the file resolved, names whose value is unknowable;
    "*" when an envFrom source outside the file may set anything)."""
    env: dict[str, str] = {}
    opaque: set[str] = set()
    for source in items(c.get("envFrom")):
        cm = bundle.find("ConfigMap", string(dig(source, "configMapRef", "name")), near)
        if cm is None:
            opaque.add("*")
            continue
        prefix = string(dig(source, "prefix"))
        env.update({prefix + k: str(v) for k, v in mapping(cm.data.get("data")).items()})
    for e in items(c.get("env")):
        name = string(dig(e, "name"))
        if name and "value" in mapping(e):
            env[name] = _env_text(e["value"])
            opaque.discard(name)
        elif name:
            env.pop(name, None)
            opaque.add(name)
    return env, opaque


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def gpus(c: dict[str, Any]) -> int:
    res = mapping(c.get("resources"))
    amounts = mapping(res.get("limits")) or mapping(res.get("requests"))
    total = 0
    for key, value in amounts.items():
        if key.endswith("/gpu"):
            n = integer(value) if not isinstance(value, str) else (
                int(value) if value.isdigit() else None)
            total += n or 0
    return total


def _shm(pod: PodT, c: dict[str, Any]) -> tuple[Path, bool, int | None]:
    """(where to point, mounted in memory, size limit in bytes or None)."""
    for m in items(c.get("volumeMounts")):
        if string(dig(m, "mountPath")).rstrip("/") != "/dev/shm":
            continue
        for i, v in enumerate(items(pod.spec.get("volumes"))):
            if dig(v, "name") == dig(m, "name") and dig(v, "emptyDir", "medium") == "Memory":
                size = k8s_bytes(dig(v, "emptyDir", "sizeLimit"))
                return (*pod.path, "volumes", i, "emptyDir"), True, size
    index = next((i for i, x in enumerate(items(pod.spec.get("containers"))) if x is c), 0)
    return (*pod.path, "containers", index), False, None


def check_launches(bundle: Bundle, found: list[Launch], sink: Sink) -> None:
    for launch in found:
        torchrun.check_site(launch.site, launch.nnodes)
        _check_nodes(launch, sink)
        _check_endpoint(bundle, launch, sink)
        _check_headless_service(bundle, launch, sink)
    _check_pdbs(bundle, found, sink)
    jobs = [(x.pod, _store_pods(bundle, x), torchrun.parse_endpoint(_endpoint(x))[1])
            for x in found]
    netpol.check_job_traffic(bundle, jobs, sink)


def _check_nodes(launch: Launch, sink: Sink) -> None:
    nodes, obj = launch.nodes, launch.pod.obj
    if launch.nnodes is None or nodes is None or obj.kind == "Pod":
        return
    low, high = launch.nnodes
    if not low <= nodes <= high:
        field = "parallelism" if obj.kind == "Job" else "replicas"
        obj.report(sink, "torchrun-nnodes", ("spec", field), f"{field} is {nodes} but torchrun "
                   f"--nnodes is {low}:{high}: " + ("the job never starts" if nodes < low else
                                                     f"{nodes - high} node(s) never join"))


def _check_headless_service(bundle: Bundle, launch: Launch, sink: Sink) -> None:
    obj = launch.pod.obj
    if obj.kind != "StatefulSet":
        return
    svc = governing_service(bundle, obj)
    if svc is not None and is_headless(svc) and not publishes_not_ready(svc):
        svc.report(sink, "service-publish-not-ready", ("spec",), f"governs torchrun "
                   f"{obj.ref} but lacks publishNotReadyAddresses: true: peers cannot resolve "
                   "node 0 until it is Ready")


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) (Kubernetes) and $VAR / ${VAR} (shell) from literal env values."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return env.get(name, m.group(0))

    return re.sub(r"\$\(([A-Za-z_]\w*)\)|\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", sub, value)


def _endpoint(launch: Launch) -> str:
    site = launch.site
    endpoint = site.opt("rdzv-endpoint")
    if not endpoint and site.opt("rdzv-backend") == "static":
        addr = site.call.option("master-addr", site.env) or "127.0.0.1"
        port = site.call.option("master-port", site.env) or "29500"
        endpoint = f"{addr}:{port}"
    return _expand(endpoint, {**site.env, **site.call.env})


def _check_endpoint(bundle: Bundle, launch: Launch, sink: Sink) -> None:
    site = launch.site
    multi = (launch.nodes or 1) > 1 or (launch.nnodes is not None and launch.nnodes[1] > 1)
    if not multi:
        return
    if "standalone" in site.call.flags:
        site.report("rdzv-endpoint", "command", "--standalone in a multi-node job: every pod "
                    "would train alone")
        return
    if site.opt("rdzv-backend") not in ("c10d", "static"):
        return  # etcd / etcd-v2: the endpoint is an etcd server, usually outside the file
    endpoint = _endpoint(launch)
    host, port = torchrun.parse_endpoint(endpoint)
    if "$" in host or re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", host or "-"):
        return  # unresolvable here, or a literal IP
    if host in LOCAL_HOSTS:
        site.report("rdzv-endpoint", "command", f"rendezvous endpoint {endpoint!r} is local to "
                    "each pod: the nodes never meet")
        return
    problem = _resolve(bundle, launch.pod.obj, host, port)
    if problem:
        site.report("rdzv-endpoint", "command", problem)


def _split_host(host: str, near: Obj) -> list[tuple[str | None, str]]:
    """Candidate (pod-or-None, service) readings of a cluster DNS name."""
    labels = host.rstrip(".").split(".")
    out: list[tuple[str | None, str]] = []
    for pod_part in (False, True):
        head = labels[:2] if pod_part else labels[:1]
        rest = labels[len(head):]
        if len(head) < (2 if pod_part else 1):
            continue
        ns_ok = not rest or ((not near.namespace or rest[0] == near.namespace)
                             and (len(rest) == 1 or rest[1] == "svc"))
        if ns_ok:
            out.append((head[0] if pod_part else None, head[-1]))
    return out


def _resolve(bundle: Bundle, near: Obj, host: str, port: int) -> str:
    """'' when `host:port` reaches something defined in the file, else what is wrong."""
    for pod_name, svc_name in _split_host(host, near):
        svc = bundle.find("Service", svc_name, near)
        if pod_name is None and svc is not None:
            return _service_endpoint_problem(bundle, svc, host, port)
        if pod_name is not None:
            found = _pod_dns_problem(bundle, near, pod_name, svc_name)
            if found is not None:
                return found
    return (f"rendezvous host {host!r} is neither a Service nor a pod DNS name "
            "(<statefulset>-<ordinal>.<headless-service>) defined in this file")


def _service_endpoint_problem(bundle: Bundle, svc: Obj, host: str, port: int) -> str:
    ports = [integer(dig(p, "port")) for p in items(dig(svc.data, "spec", "ports"))]
    if port not in ports:
        return f"Service/{svc.name} has no port {port} (rendezvous endpoint {host}:{port})"
    if is_headless(svc):
        pods = bundle.pods_for(svc, dig(svc.data, "spec", "selector"), plain=True)
        if sum(p.replicas or 0 for p in pods) > 1:
            return (f"{host} is a headless Service: it resolves to every pod's IP, so nodes "
                    f"pick different stores; use <statefulset>-0.{svc.name}")
    return ""


def _pod_dns_problem(bundle: Bundle, near: Obj, pod_name: str, svc_name: str) -> str | None:
    """None: no such pod name in the file; '' fine; otherwise what is wrong."""
    for sts in bundle.of_kind("StatefulSet"):
        m = re.fullmatch(re.escape(sts.name) + r"-(\d+)", pod_name)
        if m and sts.same_namespace(near) and dig(sts.data, "spec", "serviceName") == svc_name:
            replicas = integer(dig(sts.data, "spec", "replicas"), 1) or 0
            if int(m[1]) >= replicas:
                return f"{pod_name} does not exist: {sts.ref} has {replicas} replicas"
            return ""
    for job in bundle.of_kind("Job"):  # Indexed Job pods: <job>-<index>.<subdomain>
        m = re.fullmatch(re.escape(job.name) + r"-(\d+)", pod_name)
        spec = mapping(job.data.get("spec"))
        if m and job.same_namespace(near) and spec.get("completionMode") == "Indexed" \
                and dig(spec, "template", "spec", "subdomain") == svc_name:
            completions = integer(spec.get("completions"), 1) or 0
            return "" if int(m[1]) < completions else (
                f"{pod_name} does not exist: {job.ref} has {completions} completions")
    for pod in bundle.of_kind("Pod"):
        spec = mapping(pod.data.get("spec"))
        if spec.get("hostname") == pod_name and spec.get("subdomain") == svc_name:
            return ""
    return None


def _store_pods(bundle: Bundle, launch: Launch) -> list[PodT]:
    """The pods that serve the rendezvous endpoint when it is a Service of the file."""
    host, _ = torchrun.parse_endpoint(_endpoint(launch))
    for pod_name, svc_name in _split_host(host, launch.pod.obj):
        svc = bundle.find("Service", svc_name, launch.pod.obj)
        if pod_name is None and svc is not None:
            return bundle.pods_for(svc, dig(svc.data, "spec", "selector"), plain=True)
    return []


def _check_pdbs(bundle: Bundle, found: list[Launch], sink: Sink) -> None:
    for pdb in bundle.of_kind("PodDisruptionBudget"):
        selector = dig(pdb.data, "spec", "selector")
        if not isinstance(selector, dict):
            continue
        selected = {id(p) for p in bundle.pods_for(pdb, selector)}
        for launch in found:
            nodes = launch.nodes
            if launch.nnodes is None or nodes is None or id(launch.pod) not in selected:
                continue
            _check_pdb(pdb, launch.pod.obj, nodes, launch.nnodes[0], sink)


def _check_pdb(pdb: Obj, workload: Obj, nodes: int, low: int, sink: Sink) -> None:
    spec = mapping(pdb.data.get("spec"))
    if "minAvailable" in spec:
        keep = _amount(spec["minAvailable"], nodes)
        field = "minAvailable"
    elif "maxUnavailable" in spec:
        lose = _amount(spec["maxUnavailable"], nodes)
        keep, field = (None if lose is None else nodes - lose), "maxUnavailable"
    else:
        return
    if keep is None:
        return
    if keep < low:
        pdb.report(sink, "pdb-min-available", ("spec", field), f"lets evictions take "
                   f"{workload.ref} down to {max(keep, 0)} node(s) but torchrun needs {low}: "
                   "the job stops on a routine node drain")
    elif keep > nodes:
        pdb.report(sink, "pdb-min-available", ("spec", field), f"keeps {keep} pods of "
                   f"{workload.ref}, which has only {nodes}: no node can ever be drained")


def _amount(value: Any, total: int) -> int | None:
    """An int-or-percent PDB amount; percentages round up, as the disruption controller does."""
    if isinstance(value, str) and re.fullmatch(r"\d+%", value):
        return math.ceil(int(value[:-1]) * total / 100)
    return integer(value) if not isinstance(value, str) else (
        int(value) if value.isdigit() else None)
