"""Compose files: structure (docker compose config, or kdist's own checks), security, torchrun."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

from kdist.validate.model import ComposeConfig
from kdist.validate.objects import Sink, dig, integer, items, mapping, string
from kdist.validate.security import image_problem, secret_looking
from kdist.validate.yamldoc import Doc, Path

TOP_KEYS = {"version", "name", "services", "networks", "volumes", "configs", "secrets",
            "include", "models"}
SERVICE_KEYS = frozenset((
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules", "devices", "dns",
    "dns_opt", "dns_search", "domainname", "driver_opts", "entrypoint", "env_file", "environment",
    "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck",
    "hostname", "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging",
    "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "provider",
    "pull_policy", "pull_refresh_after", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt",
    "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts",
    "volumes", "volumes_from", "working_dir",
))
STRING_KEYS = ("image", "hostname", "container_name", "restart", "network_mode", "pid", "ipc")
LIST_OR_STRING = ("command", "entrypoint")


@dataclass
class Service:
    doc: Doc
    name: str
    data: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"service {self.name}"

    def report(self, sink: Sink, rule: str, path: Path, message: str,
               script_line: int | None = None) -> None:
        sink.add(rule, self.doc, ("services", self.name, *path), message, obj=self.ref,
                 script_line=script_line)

    @property
    def replicas(self) -> int:
        return integer(dig(self.data, "deploy", "replicas")) or integer(self.data.get("scale")) or 1


def services_of(doc: Doc) -> list[Service]:
    return [Service(doc, str(k), v) for k, v in mapping(dig(doc.data, "services")).items()
            if isinstance(v, dict)]


# ---- structure --------------------------------------------------------------------------------


def check_structure(doc: Doc, sink: Sink) -> None:
    """kdist's own Compose checks, used when docker compose is not available."""
    data = mapping(doc.data)
    for key in data:
        if key not in TOP_KEYS and not key.startswith("x-"):
            sink.add("compose-schema", doc, (key,), f"unknown top-level key {key!r}")
    raw = data.get("services")
    if not isinstance(raw, dict):
        sink.add("compose-schema", doc, ("services",), "services must be a mapping")
        return
    for name, svc in raw.items():
        if not isinstance(svc, dict):
            sink.add("compose-schema", doc, ("services", name), f"service {name!r} must be "
                     "a mapping")
            continue
        _check_service_keys(doc, name, svc, data, sink)


def _check_service_keys(doc: Doc, name: str, svc: dict[str, Any], top: dict[str, Any],
                        sink: Sink) -> None:
    at = ("services", name)
    for key, value in svc.items():
        if key not in SERVICE_KEYS and not key.startswith("x-"):
            sink.add("compose-schema", doc, (*at, key), f"unknown key {key!r}", obj=f"service {name}")
        elif key in STRING_KEYS and not isinstance(value, str):
            sink.add("compose-schema", doc, (*at, key), f"service {name!r}: {key} must be a string")
        elif key in LIST_OR_STRING and not isinstance(value, (str, list)):
            sink.add("compose-schema", doc, (*at, key), f"service {name!r}: {key} must be a "
                     "string or a list")
    if "image" not in svc and "build" not in svc:
        sink.add("compose-schema", doc, at, f"service {name!r} has neither image nor build")
    services = mapping(top.get("services"))
    for dep in _names(svc.get("depends_on")):
        if dep not in services:
            sink.add("compose-schema", doc, (*at, "depends_on"), f"service {name!r} depends on "
                     f"undefined service {dep!r}")
    for net in _names(svc.get("networks")):
        if net != "default" and net not in mapping(top.get("networks")):
            sink.add("compose-schema", doc, (*at, "networks"), f"service {name!r} uses "
                     f"undefined network {net!r}")
    for vol in items(svc.get("volumes")):
        source = string(vol).split(":", 1)[0] if isinstance(vol, str) else string(dig(vol, "source"))
        named = source and not source.startswith((".", "/", "~", "$"))
        if named and (not isinstance(vol, dict) or dig(vol, "type") in (None, "volume")) \
                and source not in mapping(top.get("volumes")):
            sink.add("compose-schema", doc, (*at, "volumes"), f"service {name!r} mounts "
                     f"undefined volume {source!r}")


def _names(value: Any) -> list[str]:
    """Keys of a mapping or string items of a list (depends_on, networks)."""
    return list(value) if isinstance(value, dict) else [x for x in items(value)
                                                         if isinstance(x, str)]


def docker_problem(doc: Doc, text: str, project: FsPath, run: ComposeConfig, sink: Sink) -> None:
    """`docker compose -f - config -q`; its message is mapped back to a line when possible."""
    message = run(text, project)
    if message is None:
        return
    first = message.strip().splitlines()[0] if message.strip() else "docker compose config failed"
    first = re.sub(r"^validating [^:]*: ", "", first)
    path: list[str | int] = []
    m = re.match(r"^([\w.-]+) (.*)$", first)
    if m and m[1].startswith("services"):
        path = list(m[1].split("."))
        extra = re.search(r"Additional property (\S+) is not allowed", m[2])
        if extra:
            path.append(extra[1])
    sink.add("compose-schema", doc, tuple(path), f"docker compose config: {first}")


# ---- security ---------------------------------------------------------------------------------


def netadmin_helper(d: dict[str, Any]) -> bool:
    """Root with NET_ADMIN only, in another service's network namespace (kdist's netem helper)."""
    return (str(d.get("network_mode", "")).startswith("service:")
            and [str(x).upper() for x in items(d.get("cap_add"))] == ["NET_ADMIN"]
            and "ALL" in [str(x).upper() for x in items(d.get("cap_drop"))])


def is_root(user: str) -> bool:
    """"", "root", "0", "00", "0:1000": every spelling Docker runs as uid 0."""
    name = user.split(":", 1)[0].strip()
    return name in ("", "root") or (name.isdigit() and int(name) == 0)


def check_security(services: list[Service], sink: Sink) -> None:
    for s in services:
        d = s.data
        user = str(d.get("user", ""))
        if is_root(user) and not netadmin_helper(d):
            s.report(sink, "compose-user", ("user",) if "user" in d else (),
                     "runs as root" + ("" if user.strip() else " (no user set)"))
        check_host_access(s, sink)
        if "ALL" not in [str(x).upper() for x in items(d.get("cap_drop"))]:
            s.report(sink, "compose-cap-drop", ("cap_drop",) if "cap_drop" in d else (),
                     "does not drop ALL capabilities")
        opts = [str(x).replace("=", ":") for x in items(d.get("security_opt"))]
        if not any(o in ("no-new-privileges", "no-new-privileges:true") for o in opts):
            s.report(sink, "compose-no-new-privileges",
                     ("security_opt",) if "security_opt" in d else (),
                     "does not set no-new-privileges:true")
        if d.get("privileged") is True or str(d.get("privileged")).lower() == "true":
            s.report(sink, "compose-privileged", ("privileged",), "is privileged")
        if "build" not in d and (problem := image_problem(d.get("image"))):
            s.report(sink, "image-tag", ("image",), problem)
        env = d.get("environment")
        for key, value in env_pairs(env):
            if secret_looking(key) and value:
                s.report(sink, "env-var-secret", ("environment",), f"sets {key} to a literal value")


def env_pairs(env: Any) -> list[tuple[str, str]]:
    if isinstance(env, dict):
        return [(str(k), "" if v is None else str(v)) for k, v in env.items()]
    out = []
    for item in items(env):
        key, eq, value = str(item).partition("=")
        out.append((key, value if eq else ""))
    return out


# ---- host access: capabilities, namespaces, ports, mounts, devices ----------------------------

HOST_NAMESPACES = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
UNCONFINED = {"seccomp:unconfined", "apparmor:unconfined", "label:disable",
              "systempaths:unconfined"}
ALL_INTERFACES = {"", "0.0.0.0", "::", "[::]"}
# host folders whose bind mount gives the container the host (or its container runtime)
HOST_ROOTS = ("/", "/etc", "/root", "/proc", "/sys", "/dev", "/boot", "/run", "/var/run",
              "/var/lib/docker", "/var/lib/containerd", "/var/lib/kubelet", "/usr", "/bin",
              "/sbin", "/lib")
# raw memory, kernel and disk devices (GPUs and /dev/fuse are not among them)
HOST_DEVICES = re.compile(r"^/dev/(mem|kmem|port|kmsg|cpu/|sd|hd|vd|xvd|nvme|mmcblk|dm-|loop|"
                          r"mapper/|disk/|md\d|sg\d)")


def check_host_access(s: Service, sink: Sink) -> None:
    """What lets a service reach or take over the host (kube-linter's/Polaris' checks, in Compose)."""
    d = s.data
    if not netadmin_helper(d):
        for i, cap in enumerate(items(d.get("cap_add"))):
            s.report(sink, "compose-cap-add", ("cap_add", i), f"adds capability {str(cap)!r}")
    for i, opt in enumerate(items(d.get("security_opt"))):
        if str(opt).replace("=", ":").strip().lower() in UNCONFINED:
            s.report(sink, "compose-unconfined", ("security_opt", i), f"sets {str(opt)!r}")
    for key in HOST_NAMESPACES:
        if str(d.get(key, "")).strip().lower() == "host":
            s.report(sink, "compose-host-namespaces", (key,), f"shares the host's namespace "
                     f"({key}: host)")
    for i, port in enumerate(items(d.get("ports"))):
        ip = published_ip(port)
        if ip is not None and ip in ALL_INTERFACES:
            where = ip or "every interface"
            s.report(sink, "compose-ports-host-ip", ("ports", i), f"publishes port "
                     f"{_port_text(port)} on {where}")
    for i, volume in enumerate(items(d.get("volumes"))):
        source = bind_source(volume)
        if source is not None and host_path_problem(source):
            s.report(sink, "compose-host-mount", ("volumes", i), f"bind-mounts the host's "
                     f"{source}: {host_path_problem(source)}")
    if d.get("use_api_socket") is True:
        s.report(sink, "compose-host-mount", ("use_api_socket",), "gets the Docker API socket "
                 "(use_api_socket: true): control of the host's Docker daemon")
    for i, device in enumerate(items(d.get("devices"))):
        host = (device.split(":", 1)[0] if isinstance(device, str)
                else string(dig(device, "source")))
        if HOST_DEVICES.match(host.strip()):
            s.report(sink, "compose-devices", ("devices", i), f"maps the host device {host}")


def published_ip(port: Any) -> str | None:
    """The host IP of a published port ("" = every interface); None when nothing is published."""
    if isinstance(port, dict):
        if dig(port, "published") in (None, ""):
            return None
        return string(port.get("host_ip")).strip()
    text = str(port).strip().split("/", 1)[0]
    if text.startswith("["):  # [::1]:8080:80
        host, _, rest = text[1:].partition("]")
        return host if rest.startswith(":") and rest.count(":") == 2 else None
    parts = text.split(":")
    if len(parts) == 1:
        return ""  # "29400": published on an ephemeral host port, every interface
    return parts[0] if len(parts) == 3 else ""


def _port_text(port: Any) -> str:
    if isinstance(port, dict):
        return f"{port.get('published')}->{port.get('target')}"
    return str(port)


def bind_source(volume: Any) -> str | None:
    """The host path of a bind mount (short or long syntax); None for volumes and tmpfs."""
    if isinstance(volume, dict):
        if volume.get("type") != "bind":
            return None
        return string(volume.get("source")).strip() or None
    source, sep, _ = str(volume).partition(":")
    return source.strip() if sep and source.strip().startswith("/") else None


def host_path_problem(source: str) -> str:
    """Why binding this host path is dangerous, or ""."""
    clean = "/" + "/".join(p for p in source.split("/") if p and p != ".")
    if clean.endswith(".sock"):
        return "a runtime socket controls the host"
    for root in HOST_ROOTS:
        if clean == root or (root != "/" and clean.startswith(root + "/")):
            return "a host system folder" if root != "/" else "the host's root filesystem"
    return ""
