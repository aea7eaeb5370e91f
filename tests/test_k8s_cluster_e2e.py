"""Real pods on the single-node cluster of tests/kube_cluster.py (`make k8s-e2e`): a pod from a
locally built image, a StatefulSet whose pods find each other by per-pod DNS names of a headless
Service, the `kubernetes` Service through kube-proxy, a ReadWriteMany claim on the default class.
Skips with the reason when root, Docker, Go, containerd or the built binaries are missing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_cluster import HOST_IP, PROBE_IMAGE, KubeCluster, missing
from kube_server import KubeServer

pytestmark = pytest.mark.cluster
POD_TIMEOUT = 120.0
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


# ---- kdist's own jobs on the cluster ------------------------------------------------------------

TRAINER_IMAGE = "kdist-trainer:0.1.0"
KDIST = [sys.executable, "-c", "import sys; from kdist.cli import main; sys.argv[0] = 'kdist'; main()"]
METRIC = "KDIST_METRIC "
STEPS = 300


@pytest.fixture(scope="session")
def trainer_image(cluster: KubeCluster) -> str:
    """trainers/Dockerfile's image, on the node (docker save | ctr import: minutes for ~5 GB)."""
    build = subprocess.run(["docker", "build", "-t", TRAINER_IMAGE, "-f", "trainers/Dockerfile", "."],
                           cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, f"docker build failed:\n{build.stderr[-3000:]}"
    began = time.monotonic()
    cluster.import_image(TRAINER_IMAGE)
    print(f"{TRAINER_IMAGE} imported into the node's containerd in {time.monotonic() - began:.0f}s")
    return TRAINER_IMAGE


class ClusterJob:
    """cpu-gloo.yaml (3 nodes, min 2) sized for a 2-CPU node, in a namespace of its own; the
    node containers' logs are polled while it runs, since pods go when the job finishes."""

    def __init__(self, cluster: KubeCluster, tmp_path: Path, name: str, *args: str,
                 memory: str = "2Gi", max_restarts: int = 3) -> None:
        self.api, self.name, self.ns = cluster.server, name, namespace(cluster.server, name)
        spec = yaml.safe_load((ROOT / "trainers" / "examples" / "cpu-gloo.yaml").read_text())
        spec.update(name=name, args=["--synthetic", "--max-steps", str(STEPS),
                                     "--checkpoint-every", "10", "--step-sleep", "0.1", *args],
                    k8s={"namespace": name}, max_restarts=max_restarts)
        spec["resources"].update(cpu="300m", memory=memory)  # 3 nodes + the store on 2 CPUs
        self.file = tmp_path / "kdist.yaml"
        self.file.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        self.logs: dict[str, str] = {}  # pod uid -> the node container's log
        self.order: list[str] = []  # pod uids in the order first seen
        self.oom_kills: dict[str, int] = {}  # pod uid -> OOM kills in its memory cgroup
        self.returncode: int | None = None  # kdist apply --wait's

    def apply(self) -> subprocess.Popen[str]:
        return subprocess.Popen([*KDIST, "apply", "-f", str(self.file), "--wait", "--timeout", "400"],
                                cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def pods(self) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=node"
        got = self.api.get(f"/api/v1/namespaces/{self.ns}/pods?labelSelector={selector}")
        return list(got.get("items", [])) if isinstance(got, dict) else []

    def poll_logs(self) -> None:
        for pod in self.pods():
            uid, name = pod["metadata"]["uid"], pod["metadata"]["name"]
            status, text = self.api.request(
                "GET", f"/api/v1/namespaces/{self.ns}/pods/{name}/log?container=node")
            if status == 200 and isinstance(text, str):
                if uid not in self.logs:
                    self.order.append(uid)
                self.logs[uid] = max(text, self.logs.get(uid, ""), key=len)
            self.oom_kills[uid] = max(oom_kills(uid), self.oom_kills.get(uid, 0))

    def metrics(self) -> list[dict[str, Any]]:
        """Rank 0's KDIST_METRIC lines, in the order their pods were first seen."""
        return [json.loads(line.split(METRIC, 1)[1]) for uid in self.order
                for line in self.logs[uid].splitlines() if METRIC in line]

    def kdist(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KDIST, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def run_until(self, proc: subprocess.Popen[str], ready: Callable[[], bool],
                  act: Callable[[], None], finish: bool = True) -> str:
        """Polls logs; once `ready`, runs `act` (the outside failure); then, with `finish`,
        waits for kdist to exit and returns its output ("" without)."""
        acted, deadline = False, time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            self.poll_logs()
            if not acted and ready():
                act()
                acted = True
                if not finish:
                    return ""
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
        self.returncode = proc.returncode
        assert acted, f"the job never got ready for the failure:\n{out[-3000:]}"
        return out

    def checkpointed(self, step: int) -> bool:
        return any(m["event"] == "checkpoint" and m["step"] >= step for m in self.metrics())

    def volume(self) -> Path:
        """The host folder of the job's checkpoint claim (a static hostPath PV)."""
        claim = self.api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/"
                             f"{self.name}-checkpoints")
        pv = self.api.get(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
        return Path(pv["spec"]["hostPath"]["path"])

    def saved_step(self) -> int:
        import torch

        return int(torch.load(self.volume() / "checkpoint.pt", weights_only=False)["step"])


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
    container's memory limit): torchrun restarts the workers from the checkpoint."""
    job = ClusterJob(cluster, tmp_path, "e2e-hostkill")
    since = [0]

    def kill() -> None:
        since[0] = len(job.metrics())
        pid = worker_pid(f"{job.name}-2")
        assert not TOKEN_DIRS & mount_points(pid)  # the trainer holds no token
        sidecar = mount_points(sidecar_pid(f"{job.name}-2"))
        assert TOKEN_DIRS & sidecar, sorted(sidecar)  # only the sidecar does
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


def oom_kills(pod_uid: str) -> int:
    """The kernel's count of OOM kills in the pod's memory cgroups (cgroup v1, kubelet's
    cgroupfs layout: kubepods[/<qos>]/pod<uid>/<container>, each counting its own); 0 once
    the pod's cgroups are gone."""
    kills = 0
    for pod in Path("/sys/fs/cgroup/memory").glob(f"kubepods*/**/pod{pod_uid}"):
        for control in pod.rglob("memory.oom_control"):
            with contextlib.suppress(OSError):
                kills += sum(int(line.split()[1]) for line in control.read_text().splitlines()
                             if line.startswith("oom_kill "))
    return kills


# where the token is mounted; runc resolves the image's /var/run -> /run link when it mounts
TOKEN_DIRS = {"/var/run/secrets/kubernetes.io/serviceaccount", "/run/secrets/kubernetes.io/serviceaccount"}


def mount_points(pid: int) -> set[str]:
    """Where the process's container has mounts, as its own root sees them (mountinfo field
    5; paths under /proc/PID/root would follow the image's absolute /var/run link out of it)."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines}


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
    for path in (f"/apis/apps/v1/namespaces/{job.ns}/statefulsets/{job.name}",
                 f"/api/v1/namespaces/{job.ns}/configmaps/{job.name}-outcome",
                 f"/api/v1/namespaces/{job.ns}/persistentvolumeclaims/{job.name}-checkpoints"):
        assert job.api.request("GET", path)[0] == 404, path


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
