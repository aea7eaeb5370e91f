"""Real pods on the single-node cluster of tests/kube_cluster.py (`make k8s-e2e`): a pod from a
locally built image, a StatefulSet whose pods find each other by per-pod DNS names of a headless
Service, the `kubernetes` Service through kube-proxy, a ReadWriteMany claim on the default class.
Skips with the reason when root, Docker, Go, containerd or the built binaries are missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_job import KDIST, STEPS, TRAINER_IMAGE, ClusterJob, import_trainer_image, namespace, wait_for
from kube_cluster import HOST_IP, PROBE_IMAGE, KubeCluster, missing
from kube_server import KubeServer
from tutorial_logs import RESUMED_RE, SAVED

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parent.parent


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


# ---- kdist's own jobs on the cluster ------------------------------------------------------------

@pytest.fixture(scope="session")
def trainer_image(cluster: KubeCluster) -> str:
    took = import_trainer_image(cluster)
    print(f"{TRAINER_IMAGE} imported into the node's containerd in {took:.0f}s")
    return TRAINER_IMAGE


def assert_resumed(job: ClusterJob, since: int) -> None:
    """After the loss (the first `since` metrics came before it) the ranks started again from
    the newest checkpoint, and the job's last checkpoint is its last step."""
    metrics = job.metrics()
    before = [m["step"] for m in metrics[:since] if m["event"] == "checkpoint"]
    starts = [m for m in metrics[since:] if m["event"] == "start" and m["resumed_step"] > 0]
    assert starts, f"no restart from a checkpoint after the loss: {metrics[since:][:5]}"
    assert starts[0]["resumed_step"] >= max(before) >= 10
    assert job.saved_step() == STEPS


def test_kdist_apply_survives_a_deleted_pod(cluster: KubeCluster, trainer_image: str,
                                            tmp_path: Path) -> None:
    """`kubectl delete pod` (what a drain or an eviction does): the StatefulSet makes the pod
    again, the other nodes go on from the checkpoint, and `kdist apply --wait` exits 0."""
    job = ClusterJob(cluster, tmp_path, "e2e-deleted")
    began, since = time.monotonic(), [0]

    def delete() -> None:
        since[0] = len(job.metrics())
        status, _ = job.api.request("DELETE", f"/api/v1/namespaces/{job.ns}/pods/{job.name}-1")
        assert status == 200

    out = job.run_until(job.apply(), lambda: job.checkpointed(50), delete)
    print(f"deleted-pod job finished in {time.monotonic() - began:.0f}s")
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    assert len(job.order) >= 4, "the deleted pod was not made again"  # 3 pods + a new node-1
    assert_resumed(job, since[0])


def test_kdist_apply_survives_a_worker_killed_from_the_host(cluster: KubeCluster,
                                                            trainer_image: str,
                                                            tmp_path: Path) -> None:
    """SIGKILL of a node's training process from the host (what the OOM killer does at the
    container's memory limit): torchrun restarts the workers from the checkpoint. The trainer
    has HF_TOKEN (secret_env, through the Secret kdist apply wrote) and no API token; the
    finish sidecar has the API token and not HF_TOKEN."""
    job = ClusterJob(cluster, tmp_path, "e2e-hostkill", extra={"secret_env": ["HF_TOKEN"]})
    token = f"HF_TOKEN=hf_{uuid.uuid4().hex}".encode()
    job.env["HF_TOKEN"] = token.decode().partition("=")[2]
    since = [0]

    def kill() -> None:
        since[0] = len(job.metrics())
        pid, sidecar = worker_pid(f"{job.name}-2"), sidecar_pid(f"{job.name}-2")
        assert not TOKEN_DIRS & mount_points(pid)  # the trainer holds no API token
        assert TOKEN_DIRS & mount_points(sidecar), sorted(mount_points(sidecar))  # the sidecar does
        assert token in environ(pid) and token not in environ(sidecar)
        os.kill(pid, signal.SIGKILL)

    out = job.run_until(job.apply(), lambda: job.checkpointed(50), kill)
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    assert_resumed(job, since[0])


def test_kdist_apply_survives_a_rank_out_of_memory(cluster: KubeCluster, trainer_image: str,
                                                   tmp_path: Path) -> None:
    """The last rank allocates past its pod's memory limit once (trainer --hog-at-step): the
    kernel's OOM killer ends it inside the pod's cgroup, torchrun restarts the workers from the
    checkpoint, and the job finishes."""
    job = ClusterJob(cluster, tmp_path, "e2e-oom", "--hog-at-step", "60", memory="1Gi")
    began = time.monotonic()
    proc = job.apply()
    out = job.run_until(proc, lambda: job.checkpointed(50), lambda: None)
    print(f"out-of-memory job finished in {time.monotonic() - began:.0f}s")
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    metrics = job.metrics()
    since = next((i for i, m in enumerate(metrics) if m["event"] == "start" and
                  m["resumed_step"] > 0), len(metrics))  # the workers' restart after the kill
    assert_resumed(job, since)
    assert sum(job.oom_kills.values()) >= 1, "the kernel OOM-killed nothing in the job's pods"


# where the token is mounted; runc resolves the image's /var/run -> /run link when it mounts
TOKEN_DIRS = {"/var/run/secrets/kubernetes.io/serviceaccount", "/run/secrets/kubernetes.io/serviceaccount"}


def mount_points(pid: int) -> set[str]:
    """Where the process's container has mounts, as its own root sees them (mountinfo field
    5; paths under /proc/PID/root would follow the image's absolute /var/run link out of it)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines}


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def pid_of(pod: str, what: str, match: Callable[[list[bytes]], bool]) -> int:
    """A process of `pod` whose argv `match`es, found in the host's /proc."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"HOSTNAME=" + pod.encode() in environ and match(cmdline):
            return int(proc.name)
    raise AssertionError(f"no {what} of pod {pod} on this host")


def worker_pid(pod: str) -> int:
    """The training process (not torchrun)."""
    return pid_of(pod, "training process", lambda argv: any(
        a.endswith(b"trainers/train.py") for a in argv) and b"torchrun" not in b" ".join(argv))


def sidecar_pid(pod: str) -> int:
    """The finish sidecar (python3 -I -S -c <kdist/node/finish.py>)."""
    return pid_of(pod, "finish sidecar", lambda argv: argv[:4] == [b"python3", b"-I", b"-S", b"-c"])


def test_a_trainer_that_raises_fails_the_job_and_kdist_names_the_cause(
        cluster: KubeCluster, trainer_image: str, tmp_path: Path) -> None:
    """Rank 0 raises at step 20 and there are no restarts: every node's torchrun ends, too few
    are left, the job is Failed, and `kdist apply --wait` exits non-zero with the exception."""
    job = ClusterJob(cluster, tmp_path, "e2e-raise", "--fail-at-step", "20", max_restarts=0)
    out = job.run_until(job.apply(), lambda: True, lambda: None)
    assert job.returncode not in (0, None), out[-3000:]
    assert f"kdist: job {job.name} failed" in out, out[-3000:]
    assert "root cause" in out and "RuntimeError: injected failure at step 20" in out, \
        out[-3000:]
    status = job.kdist("status", "-t", "k8s", "-f", str(job.file), "-o", "json")
    assert json.loads(status.stdout)["phase"] == "failed", status.stdout + status.stderr
    deleted = job.kdist("delete", "-f", str(job.file), "--volumes")
    assert deleted.returncode == 0, deleted.stderr
    paths = (f"/apis/apps/v1/namespaces/{job.ns}/statefulsets/{job.name}",
             f"/api/v1/namespaces/{job.ns}/configmaps/{job.name}-outcome",
             f"/api/v1/namespaces/{job.ns}/persistentvolumeclaims/{job.name}-checkpoints")
    # the claim goes once the last pod using it has stopped (pvc-protection)
    wait_for(lambda: all(job.api.request("GET", p)[0] == 404 for p in paths),
             "the job's StatefulSet, record and claim deleted", timeout=90)


def test_kdist_scale_down_and_up_while_running(cluster: KubeCluster, trainer_image: str,
                                               tmp_path: Path) -> None:
    """`kdist scale 2` stops the highest pod and the other two train on; `kdist scale 3` brings
    it back into the next round; the job finishes."""
    job = ClusterJob(cluster, tmp_path, "e2e-scale")
    steps: list[tuple[int, int]] = []

    def world(size: int) -> bool:
        steps[:] = [(m["step"], m["world_size"]) for m in job.metrics() if m["event"] == "step"]
        return any(w == size for _, w in steps)

    def scale(n: int) -> None:
        scaled = job.kdist("scale", "-t", "k8s", "-f", str(job.file), str(n))
        assert scaled.returncode == 0, scaled.stderr

    proc = job.apply()
    job.run_until(proc, lambda: job.checkpointed(30), lambda: scale(2), finish=False)
    job.run_until(proc, lambda: world(2), lambda: scale(3), finish=False)
    out = job.run_until(proc, lambda: world(3) and steps[-1][1] == 3, lambda: None)
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    sizes = [w for _, w in steps]
    assert 2 in sizes and sizes[-1] == 3, sizes


def test_the_tutorial_trainer_runs_unchanged_and_resumes_after_a_deleted_pod(
        cluster: KubeCluster, trainer_image: str, tmp_path: Path) -> None:
    """PyTorch's torchrun tutorial (trainers/examples/tutorial.yaml), which knows nothing of
    kdist: while it trains, `kdist status` and `kdist logs` show all three nodes; a deleted
    node pod comes back, every rank of the last round resumes from the same snapshot epoch > 0,
    and the job succeeds with model_final.pth on the checkpoint claim."""
    job = ClusterJob(cluster, tmp_path, "e2e-tutorial", example="tutorial.yaml")
    seen: dict[str, Any] = {}

    def all_logs() -> str:
        return "\n".join(job.logs[uid] for uid in job.order)

    def look_then_delete() -> None:
        status = job.kdist("status", "-t", "k8s", "-f", str(job.file), "-o", "json")
        seen["status"] = json.loads(status.stdout)
        seen["logs"] = job.kdist("logs", "-t", "k8s", "--file", str(job.file)).stdout
        seen["before"] = len(job.order)
        status_code, _ = job.api.request("DELETE",
                                         f"/api/v1/namespaces/{job.ns}/pods/{job.name}-1")
        assert status_code == 200

    out = job.run_until(job.apply(), lambda: all_logs().count(SAVED) >= 3, look_then_delete)
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    assert seen["status"]["phase"] == "running", seen["status"]
    assert [n["name"] for n in seen["status"]["nodes"] if n["running"]] == \
        [f"{job.name}-{i}" for i in range(3)], seen["status"]
    for i in range(3):
        assert f"node-{i} | " in seen["logs"], seen["logs"][-2000:]
    assert len(job.order) > seen["before"], "the deleted pod was not made again"
    last = [RESUMED_RE.findall(log)[-1:] for log in job.newest_logs().values()]
    assert all(last), f"a node did not resume from the snapshot: {last}"
    assert sorted(int(rank) for (rank, _), in last) == [0, 1, 2], last  # one round, every rank
    assert len({epoch for (_, epoch), in last}) == 1 and int(last[0][0][1]) > 0, last
    assert (job.volume() / "model_final.pth").is_file()


def test_kdist_apply_survives_losing_the_store_pod(cluster: KubeCluster, trainer_image: str,
                                                   tmp_path: Path) -> None:
    """The standalone store's pod deleted mid-run: its Deployment makes a new one behind the
    same Service; every node's torchrun loses the store, its container restarts (one of
    max_restarts: torch's store clients never reconnect), waits for the new store and the
    ranks go on from the checkpoint."""
    job = ClusterJob(cluster, tmp_path, "e2e-store")
    since = [0]

    def delete_store() -> None:
        since[0] = len(job.metrics())
        pods = job.api.get(f"/api/v1/namespaces/{job.ns}/pods?labelSelector="
                           f"app.kubernetes.io/instance={job.name},"
                           "app.kubernetes.io/component=rdzv")["items"]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        name = pods[0]["metadata"]["name"]
        assert job.api.request("DELETE", f"/api/v1/namespaces/{job.ns}/pods/{name}")[0] == 200

    out = job.run_until(job.apply(), lambda: job.checkpointed(50), delete_store)
    assert f"kdist: job {job.name} succeeded" in out, out[-3000:]
    assert job.restarts() >= 1, "no node container was started again"
    assert_resumed(job, since[0])


def test_helm_install_runs_the_same_job_and_uninstall_keeps_the_claim(
        cluster: KubeCluster, trainer_image: str, tmp_path: Path) -> None:
    """`kdist render --target helm-values` into `helm install` of charts/kdist: the job trains
    to Succeeded (kdist status reads it like an applied one), `helm test` reaches the store
    while it runs, and `helm uninstall` removes the job but keeps the checkpoint claim."""
    if shutil.which("helm") is None:
        pytest.skip("helm is not installed (../shared/env/k8s-tools.sh installs it)")
    job = ClusterJob(cluster, tmp_path, "e2e-helm")
    values = job.kdist("render", "-t", "helm-values", "-f", str(job.file))
    assert values.returncode == 0, values.stderr
    (tmp_path / "values.yaml").write_text(values.stdout)

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["helm", *args, "--namespace", job.ns], cwd=ROOT, env=job.env,
                              capture_output=True, text=True, timeout=180)

    installed = helm("install", "release", "charts/kdist", "-f", str(tmp_path / "values.yaml"))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def phase() -> str:
        status = job.kdist("status", "-t", "k8s", "-f", str(job.file), "-o", "json")
        return str(json.loads(status.stdout)["phase"]) if status.stdout else status.stderr

    def trained(step: int) -> bool:
        job.poll_logs()
        return job.checkpointed(step)

    wait_for(lambda: trained(10), "the first checkpoint", timeout=300)
    tested = helm("test", "release")
    assert tested.returncode == 0 and "Phase:          Succeeded" in tested.stdout, \
        tested.stdout + tested.stderr
    wait_for(lambda: phase() == "succeeded", "the helm-installed job succeeded", timeout=400)
    assert job.saved_step() == STEPS
    uninstalled = helm("uninstall", "release", "--wait")
    assert uninstalled.returncode == 0, uninstalled.stderr
    base = f"/namespaces/{job.ns}"
    assert job.api.request("GET", f"/apis/apps/v1{base}/statefulsets/{job.name}")[0] == 404
    claim = job.api.get(f"/api/v1{base}/persistentvolumeclaims/{job.name}-checkpoints")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_an_image_the_node_lacks_is_named_while_apply_waits(cluster: KubeCluster,
                                                           tmp_path: Path) -> None:
    """No registry is reachable, so the kubelet's pull fails: `kdist apply --wait` names the
    failed pull as the reason the pods are Pending before its 30 s timeout and exits 1 saying
    the job keeps running."""
    job = ClusterJob(cluster, tmp_path, "e2e-noimage", image="kdist-missing:0.0")
    waited = subprocess.run([*KDIST, "apply", "-f", str(job.file), "--wait", "--timeout", "30"],
                            cwd=ROOT, env=job.env, capture_output=True, text=True, timeout=120)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    before_timeout = waited.stderr.split("kdist: timed out after 30s", 1)[0]
    assert 'why pending: pod/e2e-noimage-0: Failed: Failed to pull image "kdist-missing:0.0"' in \
        before_timeout, waited.stderr
    assert "it keeps running" in waited.stderr
    assert job.kdist("delete", "-f", str(job.file), "--volumes").returncode == 0


def test_no_cluster_and_a_wrong_context_are_one_clear_message(cluster: KubeCluster,
                                                              tmp_path: Path) -> None:
    """The cluster's own kubeconfig with a context it lacks (exit 2, did-you-mean), and with
    the server's port closed (exit 3, nothing written, no traceback)."""
    spec = tmp_path / "kdist.yaml"
    spec.write_text((ROOT / "trainers" / "examples" / "cpu-gloo.yaml").read_text())
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    context = yaml.safe_load(cluster.kubeconfig.read_text())["current-context"]
    wrong = subprocess.run([*KDIST, "apply", "-f", str(spec), "--context", context + "x"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2, wrong.stderr
    assert f"did you mean '{context}'" in wrong.stderr and "Traceback" not in wrong.stderr
    closed = yaml.safe_load(cluster.kubeconfig.read_text())
    closed["clusters"][0]["cluster"]["server"] = f"https://{HOST_IP}:1"
    (tmp_path / "closed.kubeconfig").write_text(yaml.safe_dump(closed))
    gone = subprocess.run([*KDIST, "apply", "-f", str(spec)], cwd=ROOT, capture_output=True,
                          env={**env, "KUBECONFIG": str(tmp_path / "closed.kubeconfig")},
                          text=True, timeout=60)
    assert gone.returncode == 3, gone.stderr
    assert "connection refused" in gone.stderr and "Traceback" not in gone.stderr
