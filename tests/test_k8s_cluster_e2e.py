"""Real pods on the single-node cluster of tests/kube_cluster.py (`make k8s-e2e`): a pod from a
locally built image, a StatefulSet whose pods find each other by per-pod DNS names of a headless
Service, the `kubernetes` Service through kube-proxy, a ReadWriteMany claim on the default class.
Skips with the reason when root, Docker, Go, containerd or the built binaries are missing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kube_cluster import HOST_IP, PROBE_IMAGE, KubeCluster, missing
from kube_server import KubeServer

pytestmark = pytest.mark.cluster
POD_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    if "cluster" not in str(request.config.getoption("markexpr")):
        pytest.skip("starts a whole cluster: run with -m cluster (make k8s-e2e)")
    reason = missing()
    if reason:
        pytest.skip(reason)
    if HOST_IP in subprocess.run(["ip", "-4", "addr", "show", "dev", "lo"],
                                 capture_output=True, text=True).stdout:
        pytest.skip(f"{HOST_IP} is already on lo: a cluster is up (`make cluster-down` stops it)")
    with KubeCluster(tmp_path_factory.mktemp("cluster")) as started:
        print(f"cluster up: {started.timings}")
        yield started


def wait_for(check: Callable[[], Any], what: str, timeout: float = POD_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.5)


def namespace(api: KubeServer, name: str) -> str:
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name}})
    wait_for(lambda: api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0]
             == 200, f"ServiceAccount {name}/default")
    return name


def probe_pod(name: str, *args: str) -> dict[str, Any]:
    return {"name": name, "image": PROBE_IMAGE, "imagePullPolicy": "Never", "args": list(args)}


def run_pod(api: KubeServer, ns: str, name: str, *args: str) -> tuple[str, str]:
    """(phase, log) of a one-shot probe pod, once it has finished."""
    api.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [probe_pod("probe", *args)]}})
    path = f"/api/v1/namespaces/{ns}/pods/{name}"

    def finished() -> str:
        phase = str(api.get(path).get("status", {}).get("phase", ""))
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_for(finished, f"pod {ns}/{name} finished")
    return phase, str(api.get(f"{path}/log"))


def test_pod_from_local_image_exits_zero(cluster: KubeCluster) -> None:
    api = cluster.server
    ns = namespace(api, "e2e-hello")
    began = time.monotonic()
    phase, log = run_pod(api, ns, "hello", "hello")
    print(f"pod created to Succeeded in {time.monotonic() - began:.1f}s")
    assert (phase, log.strip()) == ("Succeeded", "hello from a locally built image")


def test_kubernetes_service_through_kube_proxy(cluster: KubeCluster) -> None:
    api = cluster.server
    ns = namespace(api, "e2e-service")
    phase, log = run_pod(api, ns, "dial", "dial", "kubernetes.default.svc.cluster.local", "443")
    assert phase == "Succeeded", log
    assert "connected to kubernetes.default.svc.cluster.local (10.0.0.1) port 443" in log


def test_statefulset_pods_reach_each_other_by_dns(cluster: KubeCluster) -> None:
    api = cluster.server
    ns = namespace(api, "e2e-peers")
    labels = {"app": "peer"}
    api.create(f"/api/v1/namespaces/{ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                 "ports": [{"name": "tcp", "port": 8080}]}})
    container = probe_pod("peer", "peer", "8080") | {
        "env": [{"name": "PEER_SUBDOMAIN", "value": f"peers.{ns}.svc.cluster.local"}]}
    api.create(f"/apis/apps/v1/namespaces/{ns}/statefulsets", {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "peer"},
        "spec": {"serviceName": "peers", "replicas": 2, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "terminationGracePeriodSeconds": 1, "containers": [container]}}}})
    log_path = f"/api/v1/namespaces/{ns}/pods/peer-1/log"

    def connected() -> str:
        status, log = api.request("GET", log_path)
        return str(log) if status == 200 and "connected to" in str(log) else ""

    try:
        log = wait_for(connected, "peer-1 connected to peer-0")
    except AssertionError as e:
        raise AssertionError(f"{e}; peer-1's log: {api.request('GET', log_path)[1]}") from None
    assert f"connected to peer-0.peers.{ns}.svc.cluster.local" in log
    assert log.strip().endswith("pong from peer-0"), log


def test_read_write_many_claim_binds_on_the_default_class(cluster: KubeCluster) -> None:
    api = cluster.server
    ns = namespace(api, "e2e-storage")
    api.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    path = f"/api/v1/namespaces/{ns}/persistentvolumeclaims/shared"
    claim = wait_for(lambda: (c := api.get(path)).get("status", {}).get("phase") == "Bound" and c,
                     "claim shared Bound", 60)
    assert claim["spec"]["storageClassName"] == "kdist-local"
    assert claim["spec"]["volumeName"].startswith("kdist-pv-")
