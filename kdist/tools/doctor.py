"""`kdist doctor`: preflight checks for a job spec on this machine (or inside a node).

Every check returns a `Check` (ok / warn / fail, a detail, and a fix for anything not ok); none
prints or exits. Side effects are limited to probing: binding the rendezvous port, statvfs of
/dev/shm, socket.if_nameindex(), getaddrinfo, `docker info` / `docker compose version` (through
kdist.targets.compose.job.detect), `nvidia-smi -L`, and GET /version on the Kubernetes API server.
"""

from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kdist.errors import KdistError, UsageError
from kdist.plan import LaunchPlan
from kdist.spec.model import Rendezvous
from kdist.spec.quantity import human_bytes, k8s_bytes, memory_bytes
from kdist.targets import get
from kdist.targets.local import LOCAL_HOST

Status = Literal["ok", "warn", "fail"]
SHM_PATH = "/dev/shm"
MIN_PYTHON = (3, 10)
DNS_TIMEOUT = 10.0
KUBE_TIMEOUT = 5.0
NVIDIA_SMI_TIMEOUT = 20.0
CHECKS = ("python", "torch", "port", "listening", "docker", "shm", "gpus", "gpu-sets", "kube", "dns",
          "interface")


@dataclass(frozen=True)
class Check:
    """One preflight check: `fix` says what to do when the status is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Options:
    """What to check: `target` as in `kdist render`; `in_node` for the node-local checks only.

    `shm`, `interface` and `gpus` override the spec's values for --in-node; without a spec they
    (and `rdzv_host`) are all the node checks have, besides the node's environment."""

    target: str = "local"
    in_node: bool = False
    rdzv_host: str = ""  # overrides the store host the DNS check resolves
    context: str | None = None  # Kubernetes context (default: current-context)
    shm: str = ""  # a Kubernetes quantity: /dev/shm must be at least this big (a hard minimum)
    interface: str = ""  # a network interface the node must have
    gpus: int | None = None  # GPUs the node must see


@dataclass(frozen=True)
class NodeNeeds:
    """What one node needs from its container or pod, from the spec or from options and env."""

    shm: int | None  # bytes of /dev/shm; None: nothing asked
    shm_what: str  # where the number comes from, e.g. "resources.shm 1Gi" or "--shm 1Gi"
    shm_strict: bool  # smaller is a failure even with one process per node
    procs_per_node: int
    interface: str
    interface_what: str  # e.g. "spec.network_interface" or "GLOO_SOCKET_IFNAME"
    host: str  # the store host to resolve; "" when unknown
    port: int
    dns_fix: str
    gpus: int
    gpus_what: str  # "the spec" or "--gpus"


def failed(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


# ---- this interpreter ------------------------------------------------------------------------


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(str(v) for v in version)
    if tuple(version[:2]) >= MIN_PYTHON:
        return Check("python", "ok", f"Python {shown} ({sys.executable})")
    need = ".".join(str(v) for v in MIN_PYTHON)
    return Check("python", "fail", f"Python {shown} is too old: kdist and torchrun need >= {need}",
                 f"install kdist into a Python >= {need} virtual environment")


def check_torch(required: bool) -> Check:
    """Whether torch is importable here, found without importing it (importing torch is slow)."""
    if importlib.util.find_spec("torch") is None:
        if not required:
            return Check("torch", "ok", "not installed here; not needed: the image provides torch")
        return Check("torch", "fail", f"torch is not importable in {sys.executable}; "
                     "`kdist run` starts torchrun from this interpreter",
                     "pip install 'kdist[train]' (or torch) into this environment")
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return Check("torch", "ok", f"torch {version}")


# ---- ports, shm, interfaces, DNS -------------------------------------------------------------


def check_listening(name: str) -> Check:
    """What the running local runs of job `name` listen on: loopback only, or a failure."""
    from kdist.targets.local.listening import listeners, running_jobs

    runs = running_jobs(name)
    if not runs:
        return Check("listening", "ok", f"no local run of job {name} is running")
    found = {run: listeners(pids) for run, pids in sorted(runs.items())}
    text = "; ".join(f"{run} listens on {', '.join(map(str, ports)) or 'nothing'}"
                     for run, ports in found.items())
    exposed = [str(x) for ports in found.values() for x in ports if not x.loopback_only]
    if exposed:
        return Check("listening", "fail", f"{text}; reachable from the network: "
                     f"{', '.join(exposed)}", "see docs/targets.md (What a local run listens on)")
    return Check("listening", "ok", f"{text} (loopback only)")


def check_port(port: int, host: str = LOCAL_HOST) -> Check:
    """Bind host:port the way the c10d store does (SO_REUSEADDR), then let it go."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            return Check("port", "fail", f"rendezvous port {port} on {host}: {why}",
                         f"stop what holds it (`ss -ltnp 'sport = :{port}'`) or set "
                         "rendezvous.port to a free port")
    return Check("port", "ok", f"rendezvous port {port} on {host} is free")


def shm_size(path: str = SHM_PATH) -> tuple[int, int]:
    """(size, free) of the tmpfs at `path`, in bytes."""
    st = os.statvfs(path)
    return st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail


def check_shm(need: int | None, procs_per_node: int, what: str, path: str = SHM_PATH,
              strict: bool = False) -> Check:
    """`need` bytes of /dev/shm (`what` says where the number comes from; None: only show it).
    Short of it fails with several processes per node or when `strict` (a minimum asked for by
    --shm), else warns."""
    try:
        size, free = shm_size(path)
    except OSError as e:
        return Check("shm", "fail", f"cannot read {path}: {e.strerror or e}",
                     f"mount a tmpfs at {path} (Kubernetes: an emptyDir with medium Memory)")
    have = f"{path} is {human_bytes(size)} ({human_bytes(free)} free)"
    if need is None:
        return Check("shm", "ok", f"{have}; {what}")
    asker = "the spec asks for" if what.startswith("resources.") else "asked for"
    if size >= need:
        return Check("shm", "ok", f"{have}; {asker} {what}")
    status: Status = "fail" if procs_per_node > 1 or strict else "warn"
    risk = ("NCCL and DataLoader workers of several processes per node share it"
            if procs_per_node > 1 else "DataLoader workers may die with a Bus error")
    lower = "lower resources.shm" if what.startswith("resources.") else "ask for less"
    return Check("shm", status, f"{have}, smaller than {what}: {risk}",
                 "give the node a bigger /dev/shm (docker run --shm-size, compose shm_size, a "
                 f"Memory emptyDir on Kubernetes) or {lower}")


def check_interface(name: str, names: Sequence[str] | None = None,
                    what: str = "spec.network_interface") -> Check:
    """`name` is a network interface here (`what` says where the name comes from)."""
    if not name:
        return Check("interface", "ok", "network_interface not set: NCCL and Gloo pick one")
    if names is None:
        names = [n for _, n in socket.if_nameindex()]
    if name in names:
        return Check("interface", "ok", f"network interface {name!r} is present")
    fix = ("set network_interface to one of these (in a container or pod usually eth0), "
           "or remove it to let NCCL and Gloo choose")
    if what != "spec.network_interface":
        fix = f"set {what} to one of these (in a container or pod usually eth0)"
    return Check("interface", "fail", f"network interface {name!r} ({what}) is not "
                 f"on this host; it has: {', '.join(names) or 'none'}", fix)


def _resolve(host: str, port: int, timeout: float) -> str | None:
    """None when `host` resolves; else why not. getaddrinfo cannot be cancelled, so it runs in
    a daemon thread that is abandoned after `timeout`."""
    answers: queue.Queue[str | None] = queue.Queue()

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answers.put(None)
        except (OSError, UnicodeError) as e:
            answers.put(getattr(e, "strerror", None) or str(e))

    threading.Thread(target=lookup, name="kdist-doctor-dns", daemon=True).start()
    try:
        return answers.get(timeout=timeout)
    except queue.Empty:
        return f"no answer within {timeout:.0f}s"


def check_dns(host: str, port: int, fix: str, timeout: float = DNS_TIMEOUT) -> Check:
    why = _resolve(host, port, timeout)
    if why is None:
        return Check("dns", "ok", f"rendezvous host {host} resolves")
    return Check("dns", "fail", f"cannot resolve the rendezvous host {host}: {why}", fix)


def store_host(plan: LaunchPlan, target: str) -> str:
    """The rendezvous host the nodes of `target` dial, as rendered for that target."""
    return get(target).store_host(plan)


def dns_fix(plan: LaunchPlan, target: str) -> str:
    """What makes the store host resolvable, for the host `store_host` names (the target's
    hint, kdist/targets/<target>/__init__.py)."""
    hint = get(target).dns_hint
    return hint(plan) if hint else "check the name (`getent hosts NAME`) and /etc/resolv.conf"


# ---- Docker --------------------------------------------------------------------------------


def check_docker() -> Check:
    from kdist.targets.compose.job import detect

    try:
        engine = detect()
    except KdistError as e:
        message = str(e)
        if "Compose" in message and "engine" not in message.lower():
            fix = "install the Compose v2 plugin (docker-compose-plugin or docker-compose-v2)"
        else:
            fix = ("start the Docker Engine (`sudo systemctl start docker`) or point DOCKER_HOST "
                   "at a running one")
        return Check("docker", "fail", message, fix)
    how = " ".join(engine.compose)
    return Check("docker", "ok", f"Docker Engine {engine.server_version}, Compose "
                 f"{engine.compose_version} (`{how}`)")


# ---- GPUs ----------------------------------------------------------------------------------


def visible_gpus() -> tuple[int, str]:
    """(number of GPUs `nvidia-smi -L` lists, how we know)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0, "nvidia-smi is not installed"
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False,
                              timeout=NVIDIA_SMI_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"nvidia-smi -L did not run: {e}"
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        return 0, f"nvidia-smi -L failed: {first[0] if first else f'exit code {done.returncode}'}"
    count = sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))
    return count, "nvidia-smi -L"


def check_gpus(per_node: int, nodes: int, strict: bool, visible: tuple[int, str],
               asker: str = "the spec") -> Check:
    """`per_node` GPUs for each of `nodes` nodes on this machine; short of that is a failure
    only when `strict` (the nodes run here), a warning otherwise."""
    count, how = visible
    seen = f"{count} GPU{'s' if count != 1 else ''} visible ({how})"
    if per_node == 0:
        asked_none = "the spec asks for none" if asker == "the spec" else "no GPUs asked (--gpus)"
        return Check("gpus", "ok", f"{asked_none}; {seen}")
    need = per_node * nodes
    asked = f"{need} GPU{'s' if need != 1 else ''}"
    asked += f" ({per_node} per node x {nodes} nodes)" if nodes > 1 else " per node"
    if count >= need:
        return Check("gpus", "ok", f"the spec asks for {asked}; {seen}")
    if strict:
        return Check("gpus", "fail", f"{asker} asks for {asked}, but {seen} here",
                     "run where enough GPUs are visible (NVIDIA driver, and the NVIDIA container "
                     "toolkit in a container), or lower resources.gpu")
    return Check("gpus", "warn", f"the spec asks for {asked}; {seen} on this machine: fine only "
                 "if the nodes run elsewhere", "run the nodes where the GPUs are, or lower "
                 "resources.gpu")


def compose_gpu_sets(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Service -> the device_ids it reserves, from a rendered compose dict."""
    out: dict[str, list[str]] = {}
    for name, svc in (compose.get("services") or {}).items():
        devices = (((svc or {}).get("deploy") or {}).get("resources") or {}).get("reservations")
        for device in (devices or {}).get("devices") or []:
            out.setdefault(name, []).extend(str(i) for i in device.get("device_ids") or [])
    return out


def check_gpu_sets(compose: dict[str, Any]) -> Check:
    """Every compose node must reserve its own GPUs (replicas of one service all get the same)."""
    owners: dict[str, list[str]] = {}
    for service, ids in compose_gpu_sets(compose).items():
        for gpu in ids:
            owners.setdefault(gpu, []).append(service)
    shared = {gpu: names for gpu, names in owners.items() if len(names) > 1}
    if shared:
        which = "; ".join(f"GPU {g}: {', '.join(n)}" for g, n in sorted(shared.items()))
        return Check("gpu-sets", "fail", f"compose services reserve the same GPUs ({which}): NCCL "
                     "fails with 'Duplicate GPU detected'",
                     "give each node service its own device_ids (`kdist render --target compose` "
                     "does); see `kdist validate` rule compose-gpu-devices")
    if not owners:
        return Check("gpu-sets", "ok", "no GPUs reserved")
    return Check("gpu-sets", "ok", f"{len(owners)} GPUs reserved, a distinct set per node")


# ---- Kubernetes ----------------------------------------------------------------------------


def check_kube(context: str | None, timeout: float = KUBE_TIMEOUT) -> Check:
    """The context's API server answers GET /version within `timeout` seconds."""
    from kdist.targets.k8s.kube import ClusterUnreachable, KubeConfigError
    from kdist.targets.k8s.kube.client import KubeClient
    from kdist.targets.k8s.kube.config import connect

    try:
        conn = connect(context)
        version = KubeClient(conn, timeout=timeout).get("/version")
    except KubeConfigError as e:
        return Check("kube", "fail", str(e), "set KUBECONFIG (or pass --context) to a cluster "
                     "you can reach; `kubectl config get-contexts` lists them")
    except ClusterUnreachable as e:
        return Check("kube", "fail", str(e), "start the cluster or pick another context "
                     "(--context); `kubectl cluster-info` shows what kubectl reaches")
    except KdistError as e:  # the server answered with an error (401, 403, ...)
        return Check("kube", "fail", str(e), "check the context's credentials "
                     "(`kubectl version --context ...` should print the server version)")
    server = version.get("gitVersion") or "unknown version"
    return Check("kube", "ok", f"context {conn.context!r}: API server {conn.server} answers "
                 f"(Kubernetes {server})")


# ---- all together --------------------------------------------------------------------------


def shm_need(plan: LaunchPlan, in_node: bool) -> tuple[int, str]:
    """Bytes of /dev/shm the job needs here: one node's, or every simulated node's for local
    (they share this host's /dev/shm)."""
    shm, count = plan.spec.resources.shm, plan.spec.nodes.count
    if in_node or count == 1:
        return memory_bytes(shm), f"resources.shm {shm}"
    return memory_bytes(shm) * count, f"resources.shm {shm} x {count} simulated nodes"


DNS_NO_HOST_FIX = ("pass --rdzv-host with the store host the node dials (the host of torchrun's "
                   "--rdzv-endpoint), or set PET_RDZV_ENDPOINT")


def _option_shm(options: Options) -> int:
    n = k8s_bytes(options.shm)
    if n is None:
        raise UsageError(f"--shm {options.shm!r} is not a size: use a Kubernetes quantity such as "
                         "512Mi or 2Gi")
    return n


def _endpoint(environ: Mapping[str, str]) -> tuple[str, int | None]:
    """(host, port) of torchrun's PET_RDZV_ENDPOINT ("" / None when unset or without a port)."""
    value = environ.get("PET_RDZV_ENDPOINT", "").strip()
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return value.strip("[]"), None
    return host.strip("[]"), int(port)


def node_needs(plan: LaunchPlan | None, options: Options,
               environ: Mapping[str, str] | None = None) -> NodeNeeds:
    """The node's needs: the spec's (`plan`) with the options over them; without a spec, the
    options and what a rendered node's environment says (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME
    for the interface, PET_RDZV_ENDPOINT for the store host)."""
    env = os.environ if environ is None else environ
    shm = _option_shm(options) if options.shm else None
    shm_what = f"--shm {options.shm}" if options.shm else "no size asked (--shm)"
    if plan is not None:
        s = plan.spec
        target = options.target if options.target != "local" else "k8s"
        need, what = shm_need(plan, in_node=True)
        return NodeNeeds(
            shm=need if shm is None else shm, shm_what=what if shm is None else shm_what,
            shm_strict=shm is not None, procs_per_node=s.procs_per_node,
            interface=options.interface or s.network_interface,
            interface_what="--interface" if options.interface else "spec.network_interface",
            host=options.rdzv_host or store_host(plan, target), port=s.rendezvous.port,
            dns_fix=dns_fix(plan, target),
            gpus=s.resources.gpu if options.gpus is None else options.gpus,
            gpus_what="the spec" if options.gpus is None else "--gpus")
    interface, interface_what = options.interface, "--interface"
    if not interface:
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if env.get(var, "").strip():
                interface, interface_what = env[var].strip(), var
                break
    env_host, env_port = _endpoint(env)
    host = options.rdzv_host or env_host
    return NodeNeeds(
        shm=shm, shm_what=shm_what, shm_strict=True, procs_per_node=1,
        interface=interface, interface_what=interface_what,
        host=host, port=env_port or Rendezvous().port,
        dns_fix=("check the name (`getent hosts NAME`) and /etc/resolv.conf; a Compose node must "
                 "be on the job's network, a pod needs the job's Service in its namespace"),
        gpus=options.gpus or 0, gpus_what="--gpus")


def node_checks(plan: LaunchPlan | None, options: Options,
                environ: Mapping[str, str] | None = None) -> list[Check]:
    """What a node needs from the machine it runs on (--in-node: inside its container or pod)."""
    needs = node_needs(plan, options, environ)
    shm = check_shm(needs.shm, needs.procs_per_node, needs.shm_what, strict=needs.shm_strict)
    if needs.host:
        dns = check_dns(needs.host, needs.port, needs.dns_fix)
    else:
        dns = Check("dns", "warn", "no rendezvous host to resolve", DNS_NO_HOST_FIX)
    return [
        shm,
        check_interface(needs.interface, what=needs.interface_what),
        dns,
        check_gpus(needs.gpus, 1, True, visible_gpus(), asker=needs.gpus_what),
    ]


def _shm_here(plan: LaunchPlan, options: Options) -> Check:
    need, what = shm_need(plan, in_node=False)
    return check_shm(need, plan.spec.procs_per_node, what)


def _gpu_sets(plan: LaunchPlan, options: Options) -> Check:
    from kdist.targets.compose import render as compose

    return check_gpu_sets(compose.render(plan))


# The checks a target names in its `preflight` (python and torch run for every target; "torch"
# there makes torch required on this machine).
HOST_CHECKS: dict[str, Callable[[LaunchPlan, Options], Check]] = {
    "port": lambda plan, options: check_port(plan.spec.rendezvous.port),
    "listening": lambda plan, options: check_listening(plan.name),
    "shm": _shm_here,
    "interface": lambda plan, options: check_interface(plan.spec.network_interface),
    "gpus-here": lambda plan, options: check_gpus(  # the nodes that start, on this machine
        plan.spec.resources.gpu, plan.spec.nodes.count, True, visible_gpus()),
    "gpus-all-nodes": lambda plan, options: check_gpus(  # up to MAX nodes, maybe elsewhere
        plan.spec.resources.gpu, plan.spec.nodes.max, False, visible_gpus()),
    "gpus-per-node": lambda plan, options: check_gpus(  # one node's, on some other machine
        plan.spec.resources.gpu, 1, False, visible_gpus()),
    "docker": lambda plan, options: check_docker(),
    "gpu-sets": _gpu_sets,
    "kube": lambda plan, options: check_kube(options.context),
}


def host_checks(plan: LaunchPlan, options: Options) -> list[Check]:
    """What `kdist run` / `kdist up` / `kdist apply` need from this machine."""
    s, target = plan.spec, options.target
    names = get(target).preflight
    checks = [check_python(), check_torch(required="torch" in names)]
    checks += [HOST_CHECKS[name](plan, options) for name in names if name != "torch"]
    if options.rdzv_host:
        checks.append(check_dns(options.rdzv_host, s.rendezvous.port, dns_fix(plan, target)))
    return checks


def run_checks(plan: LaunchPlan | None, options: Options,
               environ: Mapping[str, str] | None = None) -> list[Check]:
    """The checks for `options`; `plan` may be None only with --in-node (no spec file in the
    node: then the options and `environ`, default os.environ, say what the node needs)."""
    get(options.target, "run")  # a UsageError, with a did-you-mean, for an unknown target
    if options.in_node:
        return node_checks(plan, options, environ)
    if plan is None:
        raise UsageError("kdist doctor needs a spec file, except with --in-node")
    return host_checks(plan, options)
