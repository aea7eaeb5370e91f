"""RBAC: wildcard and secret grants, and pods that may rewrite their own controller."""

from __future__ import annotations

from kdist.validate.objects import Bundle, Obj, PodT, Sink, dig, items, mapping, string

ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
WRITE_VERBS = {"patch", "update", "*"}
# resources whose spec holds a pod template (or is a pod): writing them runs any image
TEMPLATES = {"pods", "deployments", "statefulsets", "replicasets", "daemonsets", "jobs",
             "cronjobs", "replicationcontrollers", "*"}


def _words(value: object) -> list[str]:
    return [x for x in items(value) if isinstance(x, str)]


def check_roles(bundle: Bundle, sink: Sink) -> None:
    for role in (o for o in bundle.objects if o.kind in ROLE_KINDS):
        for i, rule in enumerate(items(role.data.get("rules"))):
            verbs, resources = _words(dig(rule, "verbs")), _words(dig(rule, "resources"))
            if "*" in verbs:
                role.report(sink, "rbac-wildcard", ("rules", i, "verbs"), "grants every verb (*)")
            if "*" in resources:
                role.report(sink, "rbac-wildcard", ("rules", i, "resources"),
                            "grants every resource (*)")
            if "secrets" in resources:
                role.report(sink, "rbac-secrets", ("rules", i, "resources"),
                            f"grants {', '.join(verbs) or 'access'} on secrets")


def _service_account(pod: PodT) -> str:
    return string(pod.spec.get("serviceAccountName")) or string(
        pod.spec.get("serviceAccount")) or "default"


def _binds(binding: Obj, account: str, pod: PodT) -> bool:
    for subject in items(binding.data.get("subjects")):
        ns = string(dig(subject, "namespace"))
        if dig(subject, "kind") == "ServiceAccount" and dig(subject, "name") == account \
                and (not ns or not pod.obj.namespace or ns == pod.obj.namespace):
            return True
    return False


def _role_of(bundle: Bundle, binding: Obj) -> Obj | None:
    ref = mapping(binding.data.get("roleRef"))
    kind = string(ref.get("kind"))
    for role in bundle.of_kind(kind) if kind in ROLE_KINDS else []:
        if role.name == ref.get("name") and (kind == "ClusterRole" or role.same_namespace(binding)):
            return role
    return None


def _has_token(bundle: Bundle, pod: PodT, account: str) -> bool:
    """automountServiceAccountToken of the pod, else of its ServiceAccount, else true."""
    own = pod.spec.get("automountServiceAccountToken")
    if isinstance(own, bool):
        return own or _projected_token(pod)
    sa = bundle.find("ServiceAccount", account, pod.obj)
    automount = sa is None or sa.data.get("automountServiceAccountToken") is not False
    return automount or _projected_token(pod)


def _projected_token(pod: PodT) -> bool:
    """A main container mounts a projected serviceAccountToken (a native sidecar may hold it)."""
    volumes = {dig(v, "name") for v in items(pod.spec.get("volumes"))
               if any("serviceAccountToken" in source for source in items(dig(v, "projected", "sources")))}
    mounts = (dig(m, "name") for c in items(pod.spec.get("containers"))
              for m in items(dig(c, "volumeMounts")))
    return any(name in volumes for name in mounts)


def check_controller_patch(bundle: Bundle, sink: Sink) -> None:
    """A pod with a token whose service account may patch/update pod templates (not /scale)."""
    reported: set[tuple[int, int]] = set()
    bindings = [o for o in bundle.objects if o.kind in BINDING_KINDS]
    for pod in bundle.pods:
        account = _service_account(pod)
        if not _has_token(bundle, pod, account):
            continue
        for binding in (b for b in bindings if b.same_namespace(pod.obj) and _binds(b, account, pod)):
            role = _role_of(bundle, binding)
            if role is None:
                continue
            for i, rule in enumerate(items(role.data.get("rules"))):
                verbs = WRITE_VERBS & set(_words(dig(rule, "verbs")))
                targets = TEMPLATES & set(_words(dig(rule, "resources")))
                if verbs and targets and (id(role), i) not in reported:
                    reported.add((id(role), i))
                    role.report(sink, "rbac-controller-patch", ("rules", i),
                                f"lets the pods of {pod.obj.ref} (service account {account}, "
                                f"bound by {binding.ref}) {'/'.join(sorted(verbs))} "
                                f"{', '.join(sorted(targets))}: a changed pod template runs "
                                "any image with this account")
