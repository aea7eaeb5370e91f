"""Cross-object references in a Kubernetes file: selectors, Services, ports, StatefulSets."""

from __future__ import annotations

from typing import Any

from kdist.validate.objects import (
    Bundle,
    Obj,
    PodT,
    Sink,
    dig,
    integer,
    items,
    labels_of,
    map_selector_matches,
    mapping,
    selector_matches,
    string,
)

SELECTING_WORKLOADS = ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet")


def check_selectors(bundle: Bundle, sink: Sink) -> None:
    """A workload whose selector misses its own template is rejected or orphans its pods."""
    for pod in bundle.pods:
        obj = pod.obj
        selector = dig(obj.data, "spec", "selector")
        checked = obj.kind in SELECTING_WORKLOADS or (
            obj.kind == "Job" and dig(obj.data, "spec", "manualSelector") is True)
        if checked and isinstance(selector, dict) and not selector_matches(selector, pod.labels):
            obj.report(sink, "selector-labels", ("spec", "selector"),
                       f"spec.selector does not match the pod template labels "
                       f"{_labels_text(pod.labels)}")


def _labels_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in labels.items()) + "}" if labels else "{}"


def is_headless(svc: Obj) -> bool:
    return bool(dig(svc.data, "spec", "clusterIP") == "None")


def publishes_not_ready(svc: Obj) -> bool:
    return dig(svc.data, "spec", "publishNotReadyAddresses") is True


def governing_service(bundle: Bundle, sts: Obj) -> Obj | None:
    name = string(dig(sts.data, "spec", "serviceName"))
    return bundle.find("Service", name, sts) if name else None


def check_statefulsets(bundle: Bundle, sink: Sink) -> None:
    for pod in bundle.pods:
        sts = pod.obj
        if sts.kind != "StatefulSet":
            continue
        name = string(dig(sts.data, "spec", "serviceName"))
        svc = governing_service(bundle, sts)
        where = ("spec", "serviceName")
        if not name:
            sts.report(sink, "statefulset-service", ("spec",), "no spec.serviceName: the pods get "
                       "no stable DNS names (<pod>.<service>)")
        elif svc is None:
            sts.report(sink, "statefulset-service", where, f"serviceName {name!r} names no "
                       "Service in this file")
        elif not is_headless(svc):
            sts.report(sink, "statefulset-service", where, f"Service/{name} is not headless "
                       "(clusterIP: None): pods get no per-pod DNS records")
        elif not map_selector_matches(labels_of(dig(svc.data, "spec", "selector")), pod.labels,
                                      pod.implied):
            sts.report(sink, "statefulset-service", where, f"Service/{name} does not select this "
                       "StatefulSet's pods: their DNS records are never published")


def check_services(bundle: Bundle, sink: Sink) -> None:
    for svc in bundle.of_kind("Service"):
        spec = mapping(svc.data.get("spec"))
        selector = labels_of(spec.get("selector"))
        if not selector or spec.get("type") == "ExternalName":
            continue  # endpoints managed elsewhere
        pods = bundle.pods_for(svc, selector, plain=True)
        if not pods:
            svc.report(sink, "service-no-pods", ("spec", "selector"),
                       f"selector {_labels_text(selector)} matches no pod template in this file")
            continue
        for i, port in enumerate(items(spec.get("ports"))):
            _check_target_port(svc, i, mapping(port), pods, sink)
        if not (is_headless(svc) and publishes_not_ready(svc)):
            _check_probes(svc, pods, sink)


def container_ports(pod: PodT) -> tuple[set[str], set[int]]:
    names, numbers = set(), set()
    for c in items(pod.spec.get("containers")):
        for p in items(dig(c, "ports")):
            if isinstance(dig(p, "name"), str):
                names.add(p["name"])
            if integer(dig(p, "containerPort")) is not None:
                numbers.add(p["containerPort"])
    return names, numbers


def _check_target_port(svc: Obj, i: int, port: dict[str, Any], pods: list[PodT],
                       sink: Sink) -> None:
    target = port.get("targetPort", port.get("port"))
    path = ("spec", "ports", i, "targetPort" if "targetPort" in port else "port")
    for pod in pods:
        names, numbers = container_ports(pod)
        if isinstance(target, str) and not target.isdigit() and target not in names:
            svc.report(sink, "service-target-port", path, f"targetPort {target!r} is not a "
                       f"named containerPort of {pod.obj.ref} (has: {', '.join(sorted(names)) or 'none'})")
        elif integer(target) is not None and target not in numbers:
            svc.report(sink, "service-target-port", path, f"targetPort {target} is not a "
                       f"containerPort of {pod.obj.ref}")


def _check_probes(svc: Obj, pods: list[PodT], sink: Sink) -> None:
    for pod in pods:
        for i, c in enumerate(items(pod.spec.get("containers"))):
            if isinstance(c, dict) and not isinstance(c.get("readinessProbe"), dict):
                pod.report(sink, "readiness-probe", ("containers", i),
                           f"container {string(c.get('name'))!r} is behind Service/{svc.name} "
                           "but has no readinessProbe")


def check_pdbs(bundle: Bundle, sink: Sink) -> None:
    for pdb in bundle.of_kind("PodDisruptionBudget"):
        selector = dig(pdb.data, "spec", "selector")
        if not isinstance(selector, dict):
            continue  # a null selector selects nothing by design (policy/v1)
        if not bundle.pods_for(pdb, selector):
            pdb.report(sink, "pdb-no-pods", ("spec", "selector"),
                       "selector matches no pod template in this file")
