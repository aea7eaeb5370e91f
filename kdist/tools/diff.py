"""`kdist diff`: what must match between the Compose and the Kubernetes renderings (pure).

Both sides are read from plain dicts (a compose file, the list of Kubernetes documents), so a
hand-altered manifest compares as well as a fresh render. Per node: the torchrun line (the
rendezvous endpoint host normalised away), env, /dev/shm, GPUs, cpu, memory, the checkpoint
mount, the working directory, the uid, the read-only root and the scratch mounts; per job: the
number of nodes and the rendezvous port. Differences by design are listed in BY_DESIGN and not
compared: none of them changes what a trainer can do.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kdist.errors import KdistError
from kdist.shellwords import script_torchruns
from kdist.spec.quantity import cpu_cores, docker_bytes, human_bytes, memory_bytes
from kdist.targets.k8s.node import FINISH_DIR

IGNORED_ENV = ("PET_LOCAL_ADDR",)
BY_DESIGN = (
    ("PET_LOCAL_ADDR", "compose: the service's hostname (node-<i>); Kubernetes: the pod IP"),
    ("--rdzv-endpoint host", "compose: rdzv or node-0; Kubernetes: <name>-rdzv or "
                             "<name>-0.<name> (the port is compared)"),
    ("GPU ids", "compose pins distinct device_ids per node (one host); Kubernetes lets the device "
                "plugin choose (the count is compared)"),
    ("node script", "Kubernetes runs torchrun in the background, then records the outcome and "
                    "scales the StatefulSet to zero; compose execs torchrun"),
)
UNSET = "(unset)"
DOCKER_SHM_DEFAULT = 64 * 2**20
ENDPOINT_FLAGS = ("--rdzv-endpoint", "--rdzv_endpoint")
ORDER = ("torchrun", "nodes", "rendezvous", "env", "shm", "gpus", "cpu", "memory", "checkpoint",
         "workdir", "user", "root", "scratch")


class DiffError(KdistError):
    """A manifest is not something `kdist diff` can read (no node service, no StatefulSet...)."""

    exit_code = 2  # bad input; 1 means "the renderings differ"


@dataclass(frozen=True)
class Row:
    """One compared value: `same` is False when the renderings differ; `detail` says how."""

    name: str
    compose: str
    k8s: str
    same: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.name, "compose": self.compose, "k8s": self.k8s, "same": self.same,
                "detail": self.detail}


@dataclass
class Node:
    """The facts of one node (a compose service, or the StatefulSet's pod template)."""

    name: str
    lines: list[list[str]] = field(default_factory=list)  # torchrun argvs
    env: dict[str, str] = field(default_factory=dict)
    shm: int = DOCKER_SHM_DEFAULT
    shm_note: str = ""
    gpus: str = "0"
    cpu: float | None = None
    memory: int | None = None
    checkpoint: list[str] = field(default_factory=list)
    workdir: str = "(the image's)"
    user: str = "(the image's)"
    read_only: bool = False
    scratch: list[str] = field(default_factory=list)  # tmpfs / emptyDir paths but /dev/shm


@dataclass
class Side:
    nodes: list[Node]
    started: int  # compose: node services without a profile; k8s: replicas
    services: int  # compose: node services defined; k8s: 0 (not applicable)
    ports: dict[str, set[int]] = field(default_factory=dict)  # where -> port


# ---- small helpers -------------------------------------------------------------------------


def compose_bytes(value: Any) -> int:
    n = docker_bytes(value)
    if n is None:
        raise DiffError(f"not a Compose byte value: {value!r} (expected e.g. 1g, 512m)")
    return n


def k8s_bytes(value: Any) -> int:
    try:
        return memory_bytes(str(value))
    except ValueError:
        raise DiffError(f"not a Kubernetes quantity: {value!r} (expected e.g. 1Gi)") from None


def k8s_cores(value: Any) -> float:
    try:
        return cpu_cores(str(value))
    except ValueError:
        raise DiffError(f"not a Kubernetes cpu quantity: {value!r} (expected e.g. 2 or 500m)") from None


def torchrun_lines(script: str) -> list[list[str]]:
    """Every torchrun argv a node script runs (two when node 0 hosts the store on Kubernetes),
    read with kdist validate's shell parser (kdist/shellwords.py)."""
    try:
        return [["torchrun", *words] for _, _, words in script_torchruns(script)]
    except ValueError as e:
        raise DiffError(f"cannot split the torchrun line: {e}") from None


def command_lines(command: Any) -> list[list[str]]:
    """torchrun argvs in a container command: `sh -c SCRIPT`, a bare argv, or a string."""
    if isinstance(command, list) and command and command[0] == "torchrun":
        return [[str(w) for w in command]]
    if isinstance(command, list):
        script = str(command[2]) if len(command) >= 3 and command[1] == "-c" else shlex.join(
            str(w) for w in command)
    else:
        script = str(command or "")
    return torchrun_lines(script)


def script_workdir(command: Any) -> str:
    """Where a `sh -c SCRIPT` command moves before torchrun (its first `cd DIR` line), else ""."""
    script = str(command[2]) if isinstance(command, list) and len(command) >= 3 else ""
    for line in script.splitlines():
        if line.startswith("cd "):
            words = shlex.split(line.split("||", 1)[0])
            return words[1] if len(words) == 2 else ""
    return ""


def normalise(argv: Sequence[str]) -> list[str]:
    """The argv with the rendezvous endpoint's host replaced by `<host>` (the port is kept)."""
    out, words = [], list(argv)
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag in ENDPOINT_FLAGS and eq:
            out.append(f"{flag}=<host>:{value.rpartition(':')[2]}")
        elif i > 0 and words[i - 1] in ENDPOINT_FLAGS:
            out.append(f"<host>:{word.rpartition(':')[2]}")
        else:
            out.append(word)
    return out


def option(argv: Sequence[str], name: str) -> str:
    """The value of `--name V` or `--name=V` in argv ("" when absent)."""
    alt = name.replace("-", "_")
    for i, word in enumerate(argv):
        flag, eq, value = word.partition("=")
        if flag in (name, alt):
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return ""


def is_host(argv: Sequence[str]) -> bool:
    return "is_host=true" in option(argv, "--rdzv-conf").split(",")


def endpoint_port(argv: Sequence[str]) -> int | None:
    port = option(argv, "--rdzv-endpoint").rpartition(":")[2]
    return int(port) if port.isdigit() else None


def token_diff(a: Sequence[str], b: Sequence[str]) -> str:
    """Where two argvs differ: `compose: --max-restarts 5 / k8s: --max-restarts 3; ...`."""
    parts = []
    matcher = difflib.SequenceMatcher(a=list(a), b=list(b), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "replace" and i1 > 0 and a[i1 - 1].startswith("-") and not a[i1].startswith("-"):
            i1, j1 = i1 - 1, j1 - 1  # show the flag whose value changed
        parts.append(f"compose: {shlex.join(a[i1:i2]) or '(nothing)'} / "
                     f"k8s: {shlex.join(b[j1:j2]) or '(nothing)'}")
    return "; ".join(parts)


def unescaped(node: Any) -> Any:
    """A Compose document as Compose reads it: `$$` is a literal `$` in every string."""
    if isinstance(node, str):
        return node.replace("$$", "$")
    if isinstance(node, dict):
        return {unescaped(k): unescaped(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unescaped(v) for v in node]
    return node


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DiffError(f"{what} is not a mapping")
    return value


# ---- the compose side ----------------------------------------------------------------------


PASSED = "(from the environment of docker compose)"  # a name without a value (secret_env)
FROM_SECRET = "(from secret "


def _compose_env(value: Any) -> dict[str, str]:
    """`environment:` as a mapping or as a list of KEY=VALUE (a bare KEY: passed in)."""
    if isinstance(value, list):
        pairs = [str(item).partition("=") for item in value]
        return {k: v if eq else PASSED for k, eq, v in pairs}
    return {str(k): PASSED if v is None else str(v)
            for k, v in _mapping(value, "environment").items()}


def _compose_volumes(value: Any) -> list[str]:
    """Targets of named-volume mounts (short `name:/path[:mode]` or long syntax)."""
    targets = []
    for item in value or []:
        if isinstance(item, dict):
            if item.get("type", "volume") == "volume" and item.get("target"):
                targets.append(str(item["target"]))
            continue
        parts = str(item).split(":")
        if len(parts) >= 2 and not parts[0].startswith((".", "/", "~")):
            targets.append(parts[1])
    return sorted(targets)


def _compose_gpus(resources: dict[str, Any]) -> str:
    reservations = _mapping(resources.get("reservations"), "deploy.resources.reservations")
    total = 0
    for device in reservations.get("devices") or []:
        if not isinstance(device, dict):
            continue
        if device.get("device_ids"):
            total += len(device["device_ids"])
        elif device.get("count") is not None:
            if str(device["count"]) == "all":
                return "all"
            total += int(device["count"])
    return str(total)


def _compose_node(name: str, svc: dict[str, Any], lines: list[list[str]]) -> Node:
    resources = _mapping(_mapping(svc.get("deploy"), f"{name}.deploy").get("resources"),
                         f"{name}.deploy.resources")
    limits = _mapping(resources.get("limits"), f"{name}.deploy.resources.limits")
    node = Node(name, lines=lines, env=_compose_env(svc.get("environment")),
                gpus=_compose_gpus(resources), checkpoint=_compose_volumes(svc.get("volumes")))
    node.workdir = script_workdir(svc.get("command")) or str(svc.get("working_dir") or node.workdir)
    node.user = str(svc.get("user") or node.user)
    node.read_only = svc.get("read_only") is True
    node.scratch = sorted(str(t).split(":")[0] for t in svc.get("tmpfs") or [])
    if svc.get("shm_size") is not None:
        node.shm = compose_bytes(svc["shm_size"])
    else:
        node.shm_note = " (Docker's default)"
    if limits.get("cpus") is not None:
        node.cpu = float(limits["cpus"])
    if limits.get("memory") is not None:
        node.memory = compose_bytes(limits["memory"])
    return node


def _store_port(command: Any) -> int | None:
    """The port of a standalone store (`python3 -c STORE_CODE PORT TIMEOUT`), else None."""
    if isinstance(command, list) and len(command) >= 4 and "TCPStore" in str(command[2]):
        port = str(command[3])
        return int(port) if port.isdigit() else None
    return None


def compose_side(compose: dict[str, Any]) -> Side:
    compose = unescaped(_mapping(compose, "the compose file"))
    services = _mapping(compose.get("services"), "services")
    nodes, started, ports = [], 0, dict[str, set[int]]()
    for name, svc in services.items():
        svc = _mapping(svc, f"service {name}")
        store = _store_port(svc.get("command"))
        if store is not None:
            ports.setdefault("store", set()).add(store)
        lines = command_lines(svc.get("command"))
        if not lines:
            continue
        nodes.append(_compose_node(str(name), svc, lines))
        started += 0 if svc.get("profiles") else 1
        ports.setdefault("endpoint", set()).update(
            p for p in (endpoint_port(x) for x in lines) if p is not None)
    if not nodes:
        raise DiffError("the compose file has no node service (no service runs torchrun)")
    return Side(nodes, started, len(nodes), ports)


# ---- the Kubernetes side -------------------------------------------------------------------


def _k8s_env(items: Any) -> dict[str, str]:
    env = {}
    for item in items or []:
        if not isinstance(item, dict) or "name" not in item:
            continue
        if "valueFrom" in item:
            source = item["valueFrom"] or {}
            secret = source.get("secretKeyRef") or {}
            ref = (source.get("fieldRef") or {}).get("fieldPath") or next(iter(source), "?")
            env[str(item["name"])] = (f"{FROM_SECRET}{secret.get('name')}, key {secret.get('key')})"
                                      if secret else f"(from {ref})")
        else:
            env[str(item["name"])] = str(item.get("value", ""))
    return env


def _node_template(docs: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(StatefulSet, its pod spec, the container that runs torchrun)."""
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "StatefulSet":
            continue
        pod = _mapping(_mapping(_mapping(doc.get("spec"), "StatefulSet.spec").get("template"),
                                "StatefulSet.spec.template").get("spec"), "pod spec")
        for container in pod.get("containers") or []:
            if isinstance(container, dict) and command_lines(container.get("command")):
                return doc, pod, container
    raise DiffError("the Kubernetes manifest has no StatefulSet whose container runs torchrun")


def _mount_sources(pod: dict[str, Any], container: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(mountPath, the pod volume it mounts) for each of the container's volume mounts."""
    volumes = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
    return [(str(m.get("mountPath")), volumes.get(m.get("name"), {}))
            for m in container.get("volumeMounts") or [] if isinstance(m, dict)]


def _k8s_node(sts: dict[str, Any], pod: dict[str, Any], container: dict[str, Any]) -> Node:
    limits = _mapping(_mapping(container.get("resources"), "container resources").get("limits"),
                      "resources.limits")
    node = Node(str(_mapping(sts.get("metadata"), "metadata").get("name", "statefulset")),
                lines=command_lines(container.get("command")),
                env=_k8s_env(container.get("env")), gpus=str(limits.get("nvidia.com/gpu", 0)))
    node.shm_note = " (no /dev/shm volume: the runtime's 64Mi)"
    for path, volume in _mount_sources(pod, container):
        if path == "/dev/shm":
            limit = (volume.get("emptyDir") or {}).get("sizeLimit")
            node.shm, node.shm_note = (k8s_bytes(limit), "") if limit else (0, " (no sizeLimit)")
        elif "persistentVolumeClaim" in volume:
            node.checkpoint.append(path)
        elif "emptyDir" in volume and path != FINISH_DIR:  # kdist's hand-off to its finish sidecar
            node.scratch.append(path)
    node.checkpoint.sort()
    node.scratch.sort()
    node.workdir = (script_workdir(container.get("command"))
                    or str(container.get("workingDir") or node.workdir))
    security = {**_mapping(pod.get("securityContext"), "pod securityContext"),
                **_mapping(container.get("securityContext"), "container securityContext")}
    if security.get("runAsUser") is not None:
        group = security.get("runAsGroup", security["runAsUser"])
        node.user = f"{security['runAsUser']}:{group}"
    node.read_only = security.get("readOnlyRootFilesystem") is True
    if limits.get("cpu") is not None:
        node.cpu = k8s_cores(limits["cpu"])
    if limits.get("memory") is not None:
        node.memory = k8s_bytes(limits["memory"])
    return node


def _k8s_ports(docs: Sequence[Any], sts: dict[str, Any], container: dict[str, Any],
               lines: list[list[str]]) -> dict[str, set[int]]:
    ports: dict[str, set[int]] = {"endpoint": {p for p in map(endpoint_port, lines) if p}}
    ports["containerPort"] = {int(p["containerPort"]) for p in container.get("ports") or []
                              if isinstance(p, dict) and "containerPort" in p}
    service_name = _mapping(sts.get("spec"), "StatefulSet.spec").get("serviceName")
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        spec = _mapping(doc.get("spec"), f"{doc.get('kind')}.spec")
        if doc.get("kind") == "Service" and (doc.get("metadata") or {}).get("name") == service_name:
            ports["Service port"] = {int(p["port"]) for p in spec.get("ports") or []
                                     if isinstance(p, dict) and "port" in p}
        elif doc.get("kind") == "Deployment":
            template = _mapping(spec.get("template"), "Deployment.spec.template")
            for c in _mapping(template.get("spec"), "pod spec").get("containers") or []:
                port = _store_port((c or {}).get("command"))
                if port is not None:
                    ports.setdefault("store", set()).add(port)
    return {k: v for k, v in ports.items() if v}


def k8s_side(docs: Sequence[Any]) -> Side:
    sts, pod, container = _node_template(docs)
    node = _k8s_node(sts, pod, container)
    replicas = _mapping(sts.get("spec"), "StatefulSet.spec").get("replicas", 1)
    return Side([node], int(replicas), 0, _k8s_ports(docs, sts, container, node.lines))


# ---- comparing -----------------------------------------------------------------------------


def _row(name: str, compose: str, k8s: str, same: bool | None = None, detail: str = "") -> Row:
    same = compose == k8s if same is None else same
    return Row(name, compose, k8s, same, "" if same else detail or f"compose: {compose} / k8s: {k8s}")


def _torchrun_rows(node: Node, k8s: Node) -> list[Row]:
    theirs = {is_host(line): normalise(line) for line in k8s.lines}
    rows = []
    for line in node.lines:
        host, mine = is_host(line), normalise(line)
        name = "torchrun (store host)" if host else "torchrun"
        other = theirs.get(host)
        if other is None:
            missing = f"(no torchrun line with is_host={'true' if host else 'false'})"
            rows.append(_row(name, shlex.join(mine), missing, False))
        else:
            rows.append(_row(name, shlex.join(mine), shlex.join(other), mine == other,
                             token_diff(mine, other)))
    return rows


def _shm_text(n: int, note: str) -> str:
    return "no size limit" if n == 0 else f"{human_bytes(n)}{note}"


def _cores(c: float | None) -> str:
    return UNSET if c is None else f"{c:g}"


def _size(n: int | None) -> str:
    return UNSET if n is None else human_bytes(n)


def _node_rows(node: Node, k8s: Node) -> list[Row]:
    rows = _torchrun_rows(node, k8s)
    for key in sorted((node.env.keys() | k8s.env.keys()) - set(IGNORED_ENV)):
        ours, theirs = node.env.get(key, UNSET), k8s.env.get(key, UNSET)
        passed = ours == PASSED and theirs.startswith(FROM_SECRET)  # both secret_env
        rows.append(_row(f"env {key}", ours, theirs, ours == theirs or passed))
    rows.append(_row("shm", _shm_text(node.shm, node.shm_note), _shm_text(k8s.shm, k8s.shm_note),
                     node.shm == k8s.shm))
    rows.append(_row("gpus", node.gpus, k8s.gpus))
    rows.append(_row("cpu", _cores(node.cpu), _cores(k8s.cpu)))
    rows.append(_row("memory", _size(node.memory), _size(k8s.memory)))
    rows.append(_row("checkpoint mount", ", ".join(node.checkpoint) or "(none)",
                     ", ".join(k8s.checkpoint) or "(none)"))
    rows.append(_row("workdir", node.workdir, k8s.workdir))
    rows.append(_row("user", node.user, k8s.user))
    rows.append(_row("root filesystem", _writable(node.read_only), _writable(k8s.read_only)))
    rows.append(_row("scratch mounts", ", ".join(node.scratch) or "(none)",
                     ", ".join(k8s.scratch) or "(none)"))
    return rows


def _writable(read_only: bool) -> str:
    return "read-only" if read_only else "writable"


def _nnodes_max(nnodes: str) -> int | None:
    last = nnodes.rpartition(":")[2]
    return int(last) if last.isdigit() else None


def _nodes_row(c: Side, k: Side) -> Row:
    nn_c, nn_k = option(c.nodes[0].lines[0], "--nnodes"), option(k.nodes[0].lines[0], "--nnodes")
    problems = []
    if c.started != k.started:
        problems.append(f"compose starts {c.started} node services, the StatefulSet {k.started} "
                        "replicas")
    if nn_c != nn_k:
        problems.append(f"--nnodes {nn_c} (compose) vs {nn_k} (k8s)")
    if c.services != _nnodes_max(nn_k):
        problems.append(f"compose defines {c.services} node services for --nnodes {nn_k}")
    return _row("nodes", f"{c.started} started, {c.services} services, --nnodes {nn_c}",
                f"{k.started} replicas, --nnodes {nn_k}", not problems, "; ".join(problems))


def _ports_text(ports: dict[str, set[int]]) -> str:
    every = set().union(*ports.values()) if ports else set()
    if len(every) == 1:
        return str(next(iter(every)))
    return ", ".join(f"{where} {'/'.join(map(str, sorted(p)))}" for where, p in ports.items()) or "?"


def _rendezvous_rows(c: Side, k: Side) -> list[Row]:
    union_c = set().union(*c.ports.values()) if c.ports else set()
    union_k = set().union(*k.ports.values()) if k.ports else set()
    port = _row("rendezvous port", _ports_text(c.ports), _ports_text(k.ports),
                len(union_c) == 1 and union_c == union_k)

    def store(side: Side, what: str) -> str:
        if "store" in side.ports:
            return f"standalone ({what})"
        hosting = any(is_host(line) for n in side.nodes for line in n.lines)
        return "node 0's torchrun" if hosting else "(none)"

    return [port, _row("rendezvous store", store(c, "service"), store(k, "Deployment"),
                       ("store" in c.ports) == ("store" in k.ports))]


def _read(read: Callable[[Any], Side], doc: Any, what: str) -> Side:
    """One side's facts; a value of the wrong type is a DiffError, not a traceback."""
    try:
        return read(doc)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise DiffError(f"{what} has a value kdist diff cannot read ({type(e).__name__}: {e})"
                        ) from None


def compare(compose: dict[str, Any], k8s_docs: Sequence[Any]) -> list[Row]:
    """The rows of `kdist diff`: every compose node is compared with the StatefulSet's pod; a
    compose node whose row equals an earlier node's is not repeated."""
    c, k = _read(compose_side, compose, "the compose file"), _read(k8s_side, k8s_docs,
                                                                  "the Kubernetes manifest")
    rows = [_nodes_row(c, k), *_rendezvous_rows(c, k)]
    seen: dict[str, str] = {}
    for node in c.nodes:
        for row in _node_rows(node, k.nodes[0]):
            if row.name not in seen:
                seen[row.name] = row.compose
                rows.append(row)
            elif seen[row.name] != row.compose:
                rows.append(replace(row, name=f"{row.name} ({node.name})"))
    if any(is_host(line) for line in k.nodes[0].lines) and "torchrun (store host)" not in seen:
        rows.append(_row("torchrun (store host)", "(no compose node hosts the store)",
                         "the StatefulSet's node 0 does", False))
    return sorted(rows, key=lambda r: ORDER.index(r.name.split()[0]))
