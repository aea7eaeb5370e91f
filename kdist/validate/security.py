"""Pod Security Standards "restricted" (every control, version-aware) and container practices.

Controls and allowed values follow kubernetes.io/docs/concepts/security/pod-security-standards
and the pod-security-admission checks; Windows pods (spec.os.name: windows) are exempt from the
privilege-escalation, seccomp and capabilities controls, as there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kdist.validate.objects import PodT, Sink, dig, items, mapping, string
from kdist.validate.yamldoc import Path

Container = tuple[Path, dict[str, Any]]
PodCheck = Callable[[PodT, Sink, tuple[int, int]], None]

SAFE_SYSCTLS: list[tuple[tuple[int, int], tuple[str, ...]]] = [
    ((1, 0), ("kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
              "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
              "net.ipv4.ping_group_range")),
    ((1, 27), ("net.ipv4.ip_local_reserved_ports",)),
    ((1, 29), ("net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
               "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes")),
    ((1, 32), ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")),
]
RESTRICTED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret")
SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t")
SECURE_PROFILES = ("RuntimeDefault", "Localhost")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _sc(value: Any) -> dict[str, Any]:
    return mapping(dig(value, "securityContext"))


def _name(c: dict[str, Any]) -> str:
    return f"container {string(c.get('name'))!r}"


def _linux(pod: PodT) -> bool:
    return bool(dig(pod.spec, "os", "name") != "windows")


def host_process(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    if dig(_sc(pod.spec), "windowsOptions", "hostProcess") is True:
        pod.report(sink, "pss-host-process", ("securityContext", "windowsOptions"),
                   "the pod is a Windows HostProcess pod")
    for path, c in pod.containers():
        if dig(_sc(c), "windowsOptions", "hostProcess") is True:
            pod.obj.report(sink, "pss-host-process", (*path, "securityContext"),
                           f"{_name(c)} is a HostProcess container")


def host_namespaces(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.spec.get(key) is True:
            pod.report(sink, "pss-host-namespaces", (key,), f"{key}: true shares the node's "
                       "namespace with the pod")


def privileged(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    for path, c in pod.containers():
        if _sc(c).get("privileged") is True:
            pod.obj.report(sink, "pss-privileged", (*path, "securityContext", "privileged"),
                           f"{_name(c)} is privileged")


def capabilities(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    if not _linux(pod):
        return
    for path, c in pod.containers():
        caps = mapping(_sc(c).get("capabilities"))
        where = (*path, "securityContext", "capabilities") if caps else path
        if "ALL" not in [str(x) for x in items(caps.get("drop"))]:
            pod.obj.report(sink, "pss-capabilities", where, f"{_name(c)} does not drop ALL "
                           "capabilities")
        added = [str(x) for x in items(caps.get("add")) if x != "NET_BIND_SERVICE"]
        if added:
            pod.obj.report(sink, "pss-capabilities", (*where, "add"), f"{_name(c)} adds "
                           f"{', '.join(added)}; only NET_BIND_SERVICE is allowed")


def volumes(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    for i, v in enumerate(items(pod.spec.get("volumes"))):
        v = mapping(v)
        if "hostPath" in v:
            pod.report(sink, "pss-host-path", ("volumes", i, "hostPath"), f"volume "
                       f"{string(v.get('name'))!r} mounts a path of the node")
            continue
        kinds = [k for k in v if k != "name" and v[k] is not None]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUMES]
        if bad:
            pod.report(sink, "pss-volume-types", ("volumes", i, bad[0]), f"volume "
                       f"{string(v.get('name'))!r} is of type {bad[0]}")


def host_ports(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    for path, c in pod.containers():
        for j, p in enumerate(items(c.get("ports"))):
            if dig(p, "hostPort") not in (None, 0):
                pod.obj.report(sink, "pss-host-ports", (*path, "ports", j, "hostPort"),
                               f"{_name(c)} binds hostPort {dig(p, 'hostPort')}")


def host_probes(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    if version < (1, 34):
        return
    for path, c in pod.containers():
        handlers = [(k, c.get(k)) for k in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(f"lifecycle.{k}", dig(c, "lifecycle", k)) for k in ("postStart", "preStop")]
        for key, handler in handlers:
            for kind in ("httpGet", "tcpSocket"):
                if string(dig(handler, kind, "host")):
                    pod.obj.report(sink, "pss-host-probes", (*path, *key.split("."), kind, "host"),
                                   f"{_name(c)} {key} targets another host")


def apparmor(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    targets: list[tuple[Path, dict[str, Any]]] = [(pod.path, pod.spec)]
    targets += [(p, c) for p, c in pod.containers()]
    for path, holder in targets:
        kind = dig(_sc(holder), "appArmorProfile", "type")
        if kind is not None and kind not in SECURE_PROFILES:
            pod.obj.report(sink, "pss-apparmor", (*path, "securityContext", "appArmorProfile"),
                           f"AppArmor profile type {kind!r}")
    for key, value in pod.annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" \
                and not value.startswith("localhost/"):
            meta = ("metadata",) if pod.obj.kind == "Pod" else (*pod.path[:-1], "metadata")
            pod.obj.report(sink, "pss-apparmor", (*meta, "annotations", key),
                           f"AppArmor annotation {key}={value!r}")


def selinux(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    allowed = SELINUX_TYPES + (("container_engine_t",) if version >= (1, 31) else ())
    targets: list[tuple[Path, dict[str, Any]]] = [(pod.path, pod.spec)]
    targets += [(p, c) for p, c in pod.containers()]
    for path, holder in targets:
        opts = mapping(_sc(holder).get("seLinuxOptions"))
        where = (*path, "securityContext", "seLinuxOptions")
        if string(opts.get("type")) not in allowed:
            pod.obj.report(sink, "pss-selinux", (*where, "type"),
                           f"SELinux type {opts.get('type')!r} is not a container type")
        for key in ("user", "role"):
            if string(opts.get(key)):
                pod.obj.report(sink, "pss-selinux", (*where, key), f"SELinux {key} is set")


def proc_mount(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    for path, c in pod.containers():
        value = _sc(c).get("procMount")
        if value not in (None, "Default"):
            pod.obj.report(sink, "pss-proc-mount", (*path, "securityContext", "procMount"),
                           f"{_name(c)} uses procMount {value!r}")


def seccomp(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    pod_type = dig(_sc(pod.spec), "seccompProfile", "type")
    if pod_type is not None and pod_type not in SECURE_PROFILES:
        pod.report(sink, "pss-seccomp", ("securityContext", "seccompProfile", "type"),
                   f"pod seccomp profile {pod_type!r}")
    for path, c in pod.containers():
        own = dig(_sc(c), "seccompProfile", "type")
        if own is not None and own not in SECURE_PROFILES:
            pod.obj.report(sink, "pss-seccomp", (*path, "securityContext", "seccompProfile"),
                           f"{_name(c)} seccomp profile {own!r}")
        elif own is None and pod_type is None and _linux(pod):
            pod.obj.report(sink, "pss-seccomp", path, f"{_name(c)} has no seccomp profile "
                           "(set RuntimeDefault on the pod)")


def sysctls(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    allowed = {n for since, names in SAFE_SYSCTLS if version >= since for n in names}
    for i, s in enumerate(items(_sc(pod.spec).get("sysctls"))):
        name = string(dig(s, "name"))
        if name not in allowed:
            pod.report(sink, "pss-sysctls", ("securityContext", "sysctls", i, "name"),
                       f"sysctl {name!r} is not in the safe set")


def privilege_escalation(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    if not _linux(pod):
        return
    for path, c in pod.containers():
        if _sc(c).get("allowPrivilegeEscalation") is not False:
            pod.obj.report(sink, "pss-allow-privilege-escalation", (*path, "securityContext"),
                           f"{_name(c)} does not set allowPrivilegeEscalation: false")


def run_as_non_root(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    pod_value = _sc(pod.spec).get("runAsNonRoot")
    if pod_value is False:
        pod.report(sink, "pss-run-as-non-root", ("securityContext", "runAsNonRoot"),
                   "runAsNonRoot: false")
    for path, c in pod.containers():
        own = _sc(c).get("runAsNonRoot")
        if own is False or (own is None and pod_value is not True):
            pod.obj.report(sink, "pss-run-as-non-root", (*path, "securityContext"),
                           f"{_name(c)} may run as root (runAsNonRoot is not true)")


def run_as_user(pod: PodT, sink: Sink, version: tuple[int, int]) -> None:
    if _sc(pod.spec).get("runAsUser") == 0:
        pod.report(sink, "pss-run-as-user", ("securityContext", "runAsUser"), "runAsUser: 0")
    for path, c in pod.containers():
        if _sc(c).get("runAsUser") == 0:
            pod.obj.report(sink, "pss-run-as-user", (*path, "securityContext", "runAsUser"),
                           f"{_name(c)} runs as uid 0")


PSS_CHECKS: tuple[PodCheck, ...] = (
    host_process, host_namespaces, privileged, capabilities, volumes, host_ports, host_probes,
    apparmor, selinux, proc_mount, seccomp, sysctls, privilege_escalation, run_as_non_root,
    run_as_user,
)


# ---- container practices (kube-score, kube-linter, Polaris) ----------------------------------

SECRET_WORDS = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
SECRET_PAIRS = ("API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "SECRET_KEY")


def image_problem(image: Any) -> str:
    """'' for a pinned image reference, else what is wrong with it."""
    ref = string(image)
    if not ref:
        return "has no image"
    if "@sha256:" in ref:
        return ""
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {ref!r} has no tag (means :latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {ref!r} uses the mutable tag latest"
    return ""


def secret_looking(name: str) -> bool:
    upper = name.upper()
    return bool(SECRET_WORDS & set(re.split(r"[_.-]", upper))) or any(
        p in upper for p in SECRET_PAIRS)


def practices(pod: PodT, sink: Sink) -> None:
    account = string(pod.spec.get("serviceAccountName")) or "default"
    if pod.spec.get("automountServiceAccountToken") is not False and account == "default":
        pod.report(sink, "automount-service-account-token", (), "mounts the API token of the "
                   "namespace's default ServiceAccount")
    for path, c in pod.containers():
        if path[-2] == "ephemeralContainers":
            continue
        _container_practices(pod, path, c, sink)


def _container_practices(pod: PodT, path: Path, c: dict[str, Any], sink: Sink) -> None:
    obj, who = pod.obj, _name(c)
    problem = image_problem(c.get("image"))
    if problem:
        obj.report(sink, "image-tag", (*path, "image"), f"{who} {problem}")
    if "imagePullPolicy" not in c:
        obj.report(sink, "image-pull-policy", path, f"{who} relies on the default "
                   "imagePullPolicy")
    res = mapping(c.get("resources"))
    missing = [f"{kind}.{r}" for kind in ("requests", "limits") for r in ("cpu", "memory")
               if r not in mapping(res.get(kind))]
    if missing:
        obj.report(sink, "container-resources", (*path, "resources") if res else path,
                   f"{who} sets no {', '.join(missing)}")
    if _sc(c).get("readOnlyRootFilesystem") is not True:
        obj.report(sink, "read-only-root-filesystem", (*path, "securityContext") if _sc(c)
                   else path, f"{who} has a writable root filesystem")
    for j, e in enumerate(items(c.get("env"))):
        name, value = string(dig(e, "name")), dig(e, "value")
        if secret_looking(name) and isinstance(value, str) and value:
            obj.report(sink, "env-var-secret", (*path, "env", j, "value"),
                       f"{who} sets {name} to a literal value")


def check_pods(pods: list[PodT], sink: Sink, version: tuple[int, int]) -> None:
    for pod in pods:
        for check in PSS_CHECKS:
            check(pod, sink, version)
        practices(pod, sink)
