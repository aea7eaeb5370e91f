"""Kubernetes target: NetworkPolicy, PVC, headless Service, store, PDB and StatefulSet."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from kdist.plan import NODE_COMPONENT, STORE_COMPONENT, LaunchPlan
from kdist.targets.k8s.node import FINISH_DIR, finish_argv, node_script

PORT_NAME = "c10d"
FINISH_COMPONENT = "finish"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# GKE answers DNS from NodeLocal DNSCache or the metadata server, on the node's host network.
HOST_RESOLVERS = ("169.254.20.10/32", "169.254.169.254/32")
GPU_NODE_LABEL = "nvidia.com/gpu.present"  # set by the NVIDIA GPU Operator / NFD


def _meta(plan: LaunchPlan, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if plan.spec.k8s.namespace:
        meta["namespace"] = plan.spec.k8s.namespace
    meta["labels"] = plan.labels(component)
    meta.update(extra)
    return meta


def _obj(kind: str, api: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}


def network_policy(plan: LaunchPlan) -> dict[str, Any]:
    """The job's pods may talk to each other on any port (collectives pick random ports after
    rendezvous) and resolve DNS (kube-dns, or a resolver on the node: HOST_RESOLVERS); nothing
    else gets in or out."""
    job = {"podSelector": {"matchLabels": plan.selector_job()}}
    dns = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
               *({"ipBlock": {"cidr": cidr}} for cidr in HOST_RESOLVERS)],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    return _obj("NetworkPolicy", "networking.k8s.io/v1", _meta(plan, plan.name, "job"), {
        "podSelector": {"matchLabels": plan.selector_job()},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [job]}],
        # HTTPS to the API server (443, or 6443 on kubeadm/kind): the finish sidecar
        "egress": [{"to": [job]}, dns, {"ports": [{"protocol": "TCP", "port": 443},
                                                  {"protocol": "TCP", "port": 6443}]}],
    })


def checkpoint_claim(plan: LaunchPlan) -> dict[str, Any]:
    c = plan.spec.checkpoint
    spec: dict[str, Any] = {
        "accessModes": [c.access_mode],
        "resources": {"requests": {"storage": c.size}},
    }
    if c.storage_class:
        spec["storageClassName"] = c.storage_class
    return _obj("PersistentVolumeClaim", "v1",
                _meta(plan, plan.checkpoint_claim, "checkpoint"), spec)


def _service(plan: LaunchPlan, name: str, component: str, headless: bool) -> dict[str, Any]:
    port = plan.spec.rendezvous.port
    spec: dict[str, Any] = {}
    if headless:  # per-pod DNS records, published before pods are ready
        spec |= {"clusterIP": "None", "publishNotReadyAddresses": True}
    spec |= {
        "selector": plan.selector(component),
        "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}],
    }
    return _obj("Service", "v1", _meta(plan, name, component), spec)


def finish_access(plan: LaunchPlan) -> list[dict[str, Any]]:
    """ServiceAccount (unless the spec names one), the job's outcome record (a ConfigMap), and
    the finish sidecar's Role: read and patch that record, and scale the job's StatefulSet and
    the store to zero, by resourceNames; nothing that holds a pod template. Only the sidecar
    holds the account's token."""
    docs = []
    account = plan.spec.k8s.service_account or plan.name
    if not plan.spec.k8s.service_account:
        docs.append({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": _meta(plan, account, FINISH_COMPONENT)})
    docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": _meta(plan, plan.outcome_record, FINISH_COMPONENT)})
    grants = [("", "configmaps", plan.outcome_record, ["get", "patch"]),
              ("apps", "statefulsets/scale", plan.name, ["get", "patch"])]
    if plan.standalone_store:
        grants.append(("apps", "deployments/scale", plan.store_name, ["patch"]))
    rules = [{"apiGroups": [group], "resources": [resource], "resourceNames": [name],
              "verbs": verbs} for group, resource, name, verbs in grants]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(plan, plan.finish_role, FINISH_COMPONENT), "rules": rules}
    subject: dict[str, Any] = {"kind": "ServiceAccount", "name": account}
    if plan.spec.k8s.namespace:
        subject["namespace"] = plan.spec.k8s.namespace
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": _meta(plan, plan.finish_role, FINISH_COMPONENT),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": plan.finish_role},
               "subjects": [subject]}
    return [*docs, role, binding]


def disruption_budget(plan: LaunchPlan, component: str = NODE_COMPONENT) -> dict[str, Any]:
    """Drains keep nodes.min nodes, and the standalone store, running."""
    store = component == STORE_COMPONENT
    return _obj("PodDisruptionBudget", "policy/v1",
                _meta(plan, plan.store_name if store else plan.name, component), {
        "minAvailable": 1 if store else plan.spec.nodes.min,
        "selector": {"matchLabels": plan.selector(component)},
    })


def render(plan: LaunchPlan) -> list[dict[str, Any]]:
    """Objects in dependency order: policy and storage before the pods that need them."""
    docs = [network_policy(plan), *finish_access(plan), checkpoint_claim(plan),
            _service(plan, plan.name, NODE_COMPONENT, headless=True)]
    if plan.standalone_store:
        docs += [_service(plan, plan.store_name, STORE_COMPONENT, headless=False),
                 store_deployment(plan), disruption_budget(plan, STORE_COMPONENT)]
    docs += [disruption_budget(plan), statefulset(plan)]
    return docs


SHM, CKPT, TMP, FINISH, TOKEN = "dshm", "checkpoints", "tmp", "finish", "kdist-token"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def _container_security(plan: LaunchPlan) -> dict[str, Any]:
    """Pod Security Standards "restricted", plus a read-only root filesystem."""
    uid = plan.spec.run_as_user
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(plan: LaunchPlan) -> dict[str, Any]:
    uid = plan.spec.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(plan: LaunchPlan) -> dict[str, Any]:
    res = plan.spec.resources
    amounts: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu:
        amounts["nvidia.com/gpu"] = res.gpu
    return {"requests": dict(amounts), "limits": dict(amounts)}  # Guaranteed QoS


def _env(plan: LaunchPlan) -> list[dict[str, Any]]:
    pod_ip = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    env: list[dict[str, Any]] = [{"name": "PET_LOCAL_ADDR", **pod_ip}]
    env += [{"name": k, "value": v} for k, v in {**plan.env(), "HOME": "/tmp"}.items()]
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": plan.secret_env_name, "key": k}}}
            for k in plan.spec.secret_env]
    return env


def secret_env(plan: LaunchPlan, values: Mapping[str, str]) -> dict[str, Any]:
    """The Secret the node containers read `secret_env` from. kdist apply writes it from its
    own environment; `render` never prints it (the values are not in the spec)."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": _meta(plan, plan.secret_env_name, NODE_COMPONENT),
            "type": "Opaque", "data": data}


def store_host(plan: LaunchPlan) -> str:
    """The rendezvous host the nodes dial: the store's Service, or pod 0's name under the
    headless Service (node0 store)."""
    return plan.store_name if plan.standalone_store else f"{plan.name}-0.{plan.name}"


def _node_container(plan: LaunchPlan) -> dict[str, Any]:
    s = plan.spec
    script = node_script(plan, store_host(plan))
    return {
        "name": NODE_COMPONENT,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "env": _env(plan),
        "ports": [{"name": PORT_NAME, "containerPort": s.rendezvous.port, "protocol": "TCP"}],
        "resources": _resources(plan),
        "securityContext": _container_security(plan),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": SHM, "mountPath": "/dev/shm"},
            {"name": CKPT, "mountPath": s.checkpoint.path},
            {"name": TMP, "mountPath": "/tmp"},
            {"name": FINISH, "mountPath": FINISH_DIR},
        ],
    }


def _finish_container(plan: LaunchPlan) -> dict[str, Any]:
    """The native sidecar (Kubernetes >= 1.29) that records the outcome: the only container
    with an API token. Its startupProbe holds the trainer back until it checked the job."""
    amounts = {"cpu": "100m", "memory": "64Mi"}
    return {
        "name": FINISH_COMPONENT,
        "image": plan.spec.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": finish_argv(plan),
        "startupProbe": {"exec": {"command": ["sh", "-c", f"test -e {FINISH_DIR}/ready"]},
                         "periodSeconds": 1, "failureThreshold": 120},
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "securityContext": _container_security(plan),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": FINISH, "mountPath": FINISH_DIR},
            {"name": TOKEN, "mountPath": TOKEN_PATH, "readOnly": True},
        ],
    }


def _token_volume() -> dict[str, Any]:
    """What the kubelet would automount (a rotating token, the cluster CA, the namespace), as a
    volume that only the finish sidecar mounts."""
    namespace = {"path": "namespace",
                 "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
    return {"name": TOKEN, "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [namespace]}},
    ]}}


def _store_affinity() -> dict[str, Any]:
    """Prefer nodes without GPUs; harmless where no node carries GPU_NODE_LABEL."""
    avoid = {"key": GPU_NODE_LABEL, "operator": "NotIn", "values": ["true"]}
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [avoid]}}]}}


def _pod_spec(plan: LaunchPlan, containers: list[dict[str, Any]], node: bool) -> dict[str, Any]:
    """No container gets an automounted token. Node pods run as the finishing ServiceAccount
    (for the sidecar's projected token) and get the spec's scheduling; the store pod avoids
    GPU nodes instead."""
    k = plan.spec.k8s
    spec: dict[str, Any] = {"automountServiceAccountToken": False}
    if node:
        spec["serviceAccountName"] = k.service_account or plan.name
    if k.priority_class:
        spec["priorityClassName"] = k.priority_class
    if node and k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if node and k.tolerations:
        spec["tolerations"] = [{f: v for f in ("key", "operator", "value", "effect")
                                if (v := getattr(t, f))} for t in k.tolerations]
    if not node:
        spec["affinity"] = _store_affinity()
    if k.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in k.image_pull_secrets]
    spec |= {
        "securityContext": _pod_security(plan),
        "terminationGracePeriodSeconds": 60,  # > torchrun's 30 s worker shutdown
    }
    if node:
        spec["initContainers"] = [_finish_container(plan)]
    spec["containers"] = containers
    return spec


def statefulset(plan: LaunchPlan) -> dict[str, Any]:
    s = plan.spec
    labels = plan.labels(NODE_COMPONENT)
    if s.k8s.queue:
        labels[QUEUE_LABEL] = s.k8s.queue
    pod = _pod_spec(plan, [_node_container(plan)], node=True)
    pod["volumes"] = [
        {"name": SHM, "emptyDir": {"medium": "Memory", "sizeLimit": s.resources.shm}},
        {"name": CKPT, "persistentVolumeClaim": {"claimName": plan.checkpoint_claim}},
        {"name": TMP, "emptyDir": {}},
        {"name": FINISH, "emptyDir": {}},
        _token_volume(),
    ]
    meta = _meta(plan, plan.name, NODE_COMPONENT)
    meta["labels"] = labels
    return _obj("StatefulSet", "apps/v1", meta, {
        "serviceName": plan.name,
        "replicas": s.nodes.count,
        "podManagementPolicy": "Parallel",
        # a changed template must not roll pods one by one into a running DDP group: new pods
        # take it when the job is deleted and applied again
        "updateStrategy": {"type": "OnDelete"},
        "selector": {"matchLabels": plan.selector(NODE_COMPONENT)},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    })


def store_deployment(plan: LaunchPlan) -> dict[str, Any]:
    """The standalone c10d store: one small pod every node joins as a client. The startupProbe
    covers a slow torch import, which a CPU limit well above the request does not starve; the
    finish sidecar scales it to zero."""
    s = plan.spec
    container = {
        "name": STORE_COMPONENT,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": plan.store_argv(),
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": PORT_NAME, "containerPort": s.rendezvous.port, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 2},
        "startupProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 2,
                         "failureThreshold": 150},
        "livenessProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": _container_security(plan),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": TMP, "mountPath": "/tmp"}],
    }
    pod = _pod_spec(plan, [container], node=False)
    pod["volumes"] = [{"name": TMP, "emptyDir": {}}]
    labels = plan.labels(STORE_COMPONENT)
    return _obj("Deployment", "apps/v1", _meta(plan, plan.store_name, STORE_COMPONENT), {
        "replicas": 1,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": plan.selector(STORE_COMPONENT)},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    })
