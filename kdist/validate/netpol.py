"""NetworkPolicy evaluation: may pod template A reach pod template B (on a port, or on all)?

Kubernetes semantics: a pod not selected by any policy of a direction allows all traffic in that
direction; once selected, traffic is allowed when any rule of any selecting policy allows it.
"""

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
    mapping,
    selector_matches,
    string,
)

ALL_ADDRESSES = ("0.0.0.0/0", "::/0")


def policy_types(policy: Obj) -> list[str]:
    spec = mapping(policy.data.get("spec"))
    types = spec.get("policyTypes")
    if isinstance(types, list):
        return [str(t) for t in types]
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def selecting(bundle: Bundle, pod: PodT, direction: str) -> list[Obj]:
    """Policies in the pod's namespace that select it for `direction` (Ingress/Egress)."""
    return [p for p in bundle.of_kind("NetworkPolicy")
            if p.same_namespace(pod.obj) and direction in policy_types(p)
            and selector_matches(dig(p.data, "spec", "podSelector"), pod.labels, pod.implied)]


def _peer_allows(peer: Any, policy: Obj, other: PodT) -> bool:
    peer = mapping(peer)
    block = mapping(peer.get("ipBlock"))
    if block:
        return block.get("cidr") in ALL_ADDRESSES and not block.get("except")
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None:
        ns_ok = policy.same_namespace(other.obj)
    else:
        wanted = dig(ns_sel, "matchLabels", "kubernetes.io/metadata.name")
        ns = other.obj.namespace or policy.namespace
        ns_ok = mapping(ns_sel) == {} or (wanted is not None and (not ns or wanted == ns))
    return ns_ok and (pod_sel is None or selector_matches(pod_sel, other.labels, other.implied))


def _port_allows(entry: Any, port: int | None, receiver: PodT) -> bool:
    entry = mapping(entry)
    if entry.get("protocol", "TCP") != "TCP":
        return False
    if "port" not in entry:
        return True  # every TCP port
    if port is None:
        return False
    value, end = entry["port"], integer(entry.get("endPort"))
    if isinstance(value, str) and not value.isdigit():
        return any(string(dig(p, "name")) == value and dig(p, "containerPort") == port
                   for c in items(receiver.spec.get("containers")) for p in items(dig(c, "ports")))
    number = int(value) if isinstance(value, str) else integer(value)
    return number is not None and (number == port or (end is not None and number <= port <= end))


def _rule_allows(rule: Any, key: str, policy: Obj, other: PodT, port: int | None,
                 receiver: PodT) -> bool:
    rule = mapping(rule)
    ports = items(rule.get("ports"))
    if ports and not any(_port_allows(e, port, receiver) for e in ports):
        return False
    peers = items(rule.get(key))
    return not peers or any(_peer_allows(p, policy, other) for p in peers)


def allows(bundle: Bundle, source: PodT, target: PodT, port: int | None) -> tuple[bool, Obj | None]:
    """(allowed, a policy that blocks) for source -> target on `port` (None: every port)."""
    for direction, pod, other, key in (("Egress", source, target, "to"),
                                       ("Ingress", target, source, "from")):
        policies = selecting(bundle, pod, direction)
        rules_key = "egress" if direction == "Egress" else "ingress"
        if policies and not any(_rule_allows(r, key, p, other, port, target)
                                for p in policies for r in items(dig(p.data, "spec", rules_key))):
            return False, policies[0]
    return True, None


def check_job_traffic(bundle: Bundle, jobs: list[tuple[PodT, list[PodT], int]],
                      sink: Sink) -> None:
    """Each torchrun workload's pods reach each other on every port, and its store's port."""
    for pod, stores, port in jobs:
        ok, policy = allows(bundle, pod, pod, None)
        if not ok and policy is not None:
            policy.report(sink, "network-policy-job", ("spec",), f"blocks traffic between the "
                          f"pods of {pod.obj.ref}: collectives (NCCL/Gloo) open random ports "
                          "after rendezvous, so allow every port between them")
        for store in stores:
            if store is pod:
                continue
            ok, policy = allows(bundle, pod, store, port)
            if not ok and policy is not None:
                policy.report(sink, "network-policy-job", ("spec",), f"blocks {pod.obj.ref} -> "
                              f"{store.obj.ref} on the rendezvous port {port}")


def check_coverage(bundle: Bundle, sink: Sink) -> None:
    """kube-score pod-networkpolicy: every pod is selected for ingress and for egress."""
    for pod in bundle.pods:
        missing = [d for d in ("Ingress", "Egress") if not selecting(bundle, pod, d)]
        if missing:
            pod.obj.report(sink, "pod-network-policy", (), f"no NetworkPolicy in this file "
                           f"selects its pods for {' or '.join(missing).lower()}")



def check_targets(bundle: Bundle, sink: Sink) -> None:
    """kube-score networkpolicy-targets-pod: each NetworkPolicy selects a pod of the file."""
    if not bundle.pods:
        return  # a file of policies only: the pods are elsewhere
    for policy in bundle.of_kind("NetworkPolicy"):
        selector = dig(policy.data, "spec", "podSelector")
        if not any(p.obj.same_namespace(policy) and selector_matches(selector, p.labels, p.implied)
                   for p in bundle.pods):
            policy.report(sink, "network-policy-targets-pod", ("spec", "podSelector"),
                          "selects no pod template in this file")
