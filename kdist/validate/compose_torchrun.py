"""torchrun on Compose: one GPU set per node service, shm_size, endpoint and node counts."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from kdist.spec.quantity import docker_bytes
from kdist.validate import torchrun
from kdist.validate.compose import Service, env_pairs
from kdist.validate.k8s_torchrun import LOCAL_HOSTS
from kdist.validate.objects import Sink, dig, integer, items, mapping, string
from kdist.validate.torchrun import Call, Site
from kdist.validate.yamldoc import Path


@dataclass
class GpuSet:
    ids: list[str] | None  # explicit device_ids, or None when reserved by count
    count: int  # 0 when unknown ("all")


def gpu_set(svc: Service) -> GpuSet | None:
    found: GpuSet | None = None
    for dev in items(dig(svc.data, "deploy", "resources", "reservations", "devices")):
        caps = [str(c) for c in items(dig(dev, "capabilities"))]
        if "gpu" not in caps and dig(dev, "driver") != "nvidia":
            continue
        ids = [str(x) for x in items(dig(dev, "device_ids"))] or None
        count = len(ids) if ids else (integer(dig(dev, "count")) or 0)
        found = GpuSet(ids, count)
    gpus = svc.data.get("gpus")
    if found is None and gpus is not None:
        found = GpuSet(None, 0)
    return found


def check_gpu_devices(services: list[Service], sink: Sink) -> None:
    """Compose hands every service its reservation independently: sets must not overlap."""
    claimed: dict[str, str] = {}
    gpu_services = [(s, g) for s in services if (g := gpu_set(s)) is not None]
    for svc, gpus in gpu_services:
        where: Path = ("deploy", "resources", "reservations", "devices")
        if gpus.ids is None and (len(gpu_services) > 1 or svc.replicas > 1):
            svc.report(sink, "compose-gpu-devices", where, "reserves GPUs by count: every node "
                       "service gets the same first GPUs; list device_ids per service")
            continue
        if svc.replicas > 1:
            svc.report(sink, "compose-gpu-devices", where, f"{svc.replicas} replicas share "
                       "one GPU reservation; use one service per node")
        shared = [i for i in gpus.ids or [] if i in claimed]
        if shared:
            svc.report(sink, "compose-gpu-devices", where, f"GPU(s) {', '.join(shared)} are "
                       f"also reserved by service {claimed[shared[0]]}")
        claimed.update({i: svc.name for i in gpus.ids or [] if i not in claimed})


@dataclass
class ComposeLaunch:
    svc: Service
    site: Site
    nnodes: tuple[int, int] | None


def _argv(svc: Service) -> tuple[list[str], Path, int]:
    """(argv, path of the command, index of the first command element in argv)."""
    parts: list[str] = []
    offset = 0
    for key in ("entrypoint", "command"):
        value = svc.data.get(key)
        words = _words(value)
        if key == "command":
            offset = len(parts)
        parts += words
    return [w.replace("$$", "$") for w in parts], ("command",), offset


def _words(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return []
    return []


def launches(services: list[Service], sink: Sink) -> list[ComposeLaunch]:
    out = []
    for svc in services:
        argv, cmd_path, offset = _argv(svc)
        call = torchrun.find_call(argv)
        if call is None:
            continue
        site = _site(svc, call, cmd_path, offset, sink)
        out.append(ComposeLaunch(svc, site, torchrun.nnodes_of(site)))
    return out


def _site(svc: Service, call: Call, cmd_path: Path, offset: int, sink: Sink) -> Site:
    d = svc.data
    env = dict(env_pairs(d.get("environment")))
    element = call.element - offset
    command = (*cmd_path, element) if isinstance(d.get("command"), list) and element >= 0 \
        else cmd_path
    tmpfs = [str(t) for t in (items(d.get("tmpfs")) or [d.get("tmpfs")])]
    mounted = ("shm_size" in d or d.get("ipc") == "host"
               or any(t.split(":")[0] == "/dev/shm" for t in tmpfs))
    paths: dict[str, Path] = {
        "command": command, "env": ("environment",) if "environment" in d else (),
        "shm": ("shm_size",) if "shm_size" in d else (),
        "gpu": ("deploy",) if "deploy" in d else (),
    }

    def report(rule: str, where: str, message: str) -> None:
        line = call.script_line if where == "command" else None
        svc.report(sink, rule, paths[where], message, script_line=line)

    gpus = gpu_set(svc)
    return Site(call, env, "env_file" not in d, gpus.count if gpus else 0,
                docker_bytes(d.get("shm_size")), mounted, report)


def check_launches(services: list[Service], found: list[ComposeLaunch], sink: Sink) -> None:
    hosts = _hostnames(services)
    groups: dict[tuple[str, str], list[ComposeLaunch]] = {}
    for launch in found:
        torchrun.check_site(launch.site, launch.nnodes)
        key = (launch.site.opt("rdzv-id"), launch.site.opt("rdzv-endpoint"))
        groups.setdefault(key, []).append(launch)
    for (_, endpoint), group in groups.items():
        _check_group(group, endpoint, hosts)


def _hostnames(services: list[Service]) -> set[str]:
    names = set()
    for s in services:
        names |= {s.name, string(s.data.get("hostname")), string(s.data.get("container_name"))}
        for net in mapping(s.data.get("networks")).values():
            names |= {str(a) for a in items(dig(net, "aliases"))}
    return names - {""}


def _check_group(group: list[ComposeLaunch], endpoint: str, hosts: set[str]) -> None:
    first = group[0]
    total = sum(g.svc.replicas for g in group)
    default = sum(g.svc.replicas for g in group if not g.svc.data.get("profiles"))
    nnodes = first.nnodes
    if nnodes is not None:
        low, high = nnodes
        if total > high:
            first.site.report("torchrun-nnodes", "command", f"{total} node services run this "
                              f"job but --nnodes is {low}:{high}: {total - high} never join")
        elif default < low:
            first.site.report("torchrun-nnodes", "command", f"`docker compose up` starts "
                              f"{default} node(s) but --nnodes needs at least {low}")
    multi = total > 1 or (nnodes is not None and nnodes[1] > 1)
    host, _ = torchrun.parse_endpoint(endpoint)
    for launch in group if multi else []:
        if "standalone" in launch.site.call.flags:
            launch.site.report("rdzv-endpoint", "command", "--standalone in a multi-node job")
        elif host in LOCAL_HOSTS:
            launch.site.report("rdzv-endpoint", "command", f"rendezvous endpoint {endpoint!r} "
                               "is local to each container: the nodes never meet")
        elif "$" not in host and host not in hosts and not re.fullmatch(r"[0-9.]+", host):
            launch.site.report("rdzv-endpoint", "command", f"rendezvous host {host!r} is not a "
                               "service, hostname or network alias of this Compose file")
