"""kdist's jobs on the single-node cluster of tests/kube_cluster.py, for the cluster e2e
(tests/test_k8s_cluster_e2e.py) and benchmarks/bench_cluster.py: the trainer image on the node,
a namespace per job, and ClusterJob, which applies a job and reads its pods while they exist."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kube_cluster import KubeCluster
from kube_server import KubeServer

ROOT = Path(__file__).resolve().parent.parent
POD_TIMEOUT = 120.0


def import_trainer_image(cluster: KubeCluster) -> float:
    """trainers/Dockerfile's image built and put on the node (docker save | ctr import: minutes
    for ~5 GB); returns the seconds the import took."""
    build = subprocess.run(["docker", "build", "-t", TRAINER_IMAGE, "-f", "trainers/Dockerfile", "."],
                           cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if build.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{build.stderr[-3000:]}")
    began = time.monotonic()
    cluster.import_image(TRAINER_IMAGE)
    return time.monotonic() - began


def wait_for(check: Callable[[], Any], what: str, timeout: float = POD_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.5)


RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def namespace(api: KubeServer, name: str, labels: dict[str, str] | None = None) -> str:
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name, "labels": labels or {}}})
    wait_for(lambda: api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0]
             == 200, f"ServiceAccount {name}/default")
    return name


TRAINER_IMAGE = "kdist-trainer:0.1.0"
KDIST = [sys.executable, "-c", "import sys; from kdist.cli import main; sys.argv[0] = 'kdist'; main()"]
METRIC = "KDIST_METRIC "
STEPS = 300


def write_spec(path: Path, name: str, *args: str, example: str = "cpu-gloo.yaml",
               memory: str = "2Gi", max_restarts: int = 3, image: str = TRAINER_IMAGE,
               nodes: str | int | None = None, extra: dict[str, Any] | None = None) -> None:
    """An example (cpu-gloo.yaml: 3 nodes, min 2, kdist's trainer with `args` added) sized for
    a 2-CPU node, in namespace `name`, with the `extra` keys."""
    spec = yaml.safe_load((ROOT / "trainers" / "examples" / example).read_text())
    if example == "cpu-gloo.yaml":
        spec["args"] = ["--synthetic", "--max-steps", str(STEPS), "--checkpoint-every", "10",
                        "--step-sleep", "0.1", *args]
    spec.update(name=name, image=image, k8s={"namespace": name}, max_restarts=max_restarts)
    if nodes is not None:
        spec["nodes"] = nodes
    spec.update(extra or {})
    spec["resources"].update(cpu="300m", memory=memory)  # 3 nodes + the store on 2 CPUs
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


class ClusterJob:
    """A job of write_spec in a namespace of its own that enforces Pod Security "restricted";
    the node containers' logs are polled while it runs, since pods go when the job finishes."""

    def __init__(self, cluster: KubeCluster, tmp_path: Path, name: str, *args: str,
                 **spec: Any) -> None:
        self.api, self.name = cluster.server, name
        self.ns = namespace(cluster.server, name, RESTRICTED)
        self.file = tmp_path / "kdist.yaml"
        write_spec(self.file, name, *args, **spec)
        self.env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        self.logs: dict[str, str] = {}  # "<pod uid>/<restarts>" -> that node container's log
        self.order: list[str] = []  # those keys in the order first seen
        self.pod_of: dict[str, str] = {}  # key -> pod name
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
            restarts = [c.get("restartCount", 0) for c in pod.get("status", {}).get(
                "containerStatuses", []) if c["name"] == "node"]
            key = f"{uid}/{restarts[0] if restarts else 0}"  # a restarted container's log is new
            status, text = self.api.request(
                "GET", f"/api/v1/namespaces/{self.ns}/pods/{name}/log?container=node")
            if status == 200 and isinstance(text, str):
                if key not in self.logs:
                    self.order.append(key)
                    self.pod_of[key] = name
                self.logs[key] = max(text, self.logs.get(key, ""), key=len)
            self.oom_kills[uid] = max(oom_kills(uid), self.oom_kills.get(uid, 0))

    def newest_logs(self) -> dict[str, str]:
        """pod name -> the log of its newest container seen."""
        return {self.pod_of[key]: self.logs[key] for key in self.order}

    def restarts(self) -> int:
        """Node containers started again in their pods (each a new log in `logs`)."""
        return sum(not key.endswith("/0") for key in self.order)

    def metrics(self) -> list[dict[str, Any]]:
        """Rank 0's KDIST_METRIC lines, in the order their pods were first seen."""
        return [m for uid in self.order for m in self.metrics_of(uid)]

    def metrics_of(self, key: str) -> list[dict[str, Any]]:
        """The KDIST_METRIC lines in one container's log (while rank 0 ran there)."""
        return [json.loads(line.split(METRIC, 1)[1]) for line in self.logs[key].splitlines()
                if METRIC in line]

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
