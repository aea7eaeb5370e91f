"""kdist.targets.k8s.job and kdist.cli.k8s against a real local HTTP server acting as the API server.

Only the API server is stood in for (FakeApi, from test_kube_client): kubeconfig loading, the
client, the backend and the CLI run for real. Recorded objects come from tests/fixtures/k8s_api.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import FIXTURES, ROOT
from test_kube_client import FakeApi, Reply, free_port, status_body, write_kubeconfig

from kdist.cli import cli
from kdist.errors import UsageError
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets.k8s import job as backend
from kdist.targets.k8s import render as k8s
from kdist.targets.k8s.job import (
    JobFinished,
    K8sJob,
    WaitTimeout,
    manifests,
    object_path,
)

EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))
TORCHRUN_FIXTURES = Path(__file__).parent / "fixtures" / "torchrun"
CPU = ROOT / "trainers" / "examples" / "cpu-gloo.yaml"  # job cifar-cpu, nodes 2:3, no namespace
GPU = ROOT / "trainers" / "examples" / "gpu-nccl.yaml"  # job cifar-gpu, namespace ml
STS = "/apis/apps/v1/namespaces/default/statefulsets/cifar-cpu"
PODS = "/api/v1/namespaces/default/pods"
RECORD = "/api/v1/namespaces/default/configmaps/cifar-cpu-outcome"  # the finish sidecar's
SELECTOR = "app.kubernetes.io/instance=cifar-cpu,app.kubernetes.io/managed-by=kdist"
APPLY_QUERY = {"fieldManager": ["kdist"], "force": ["true"]}
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
CLAIM = "/api/v1/namespaces/default/persistentvolumeclaims/cifar-cpu-checkpoints"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / "k8s_api" / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def api() -> Iterator[FakeApi]:
    with FakeApi() as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, api: FakeApi) -> dict[str, str]:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", api.url, contexts=("kind-kdist", "prod"))
    return {"KUBECONFIG": str(cfg), "HOME": str(tmp_path)}


def plan(path: Path = CPU) -> LaunchPlan:
    return LaunchPlan(load_file(path))


def job(env: dict[str, str], path: Path = CPU, namespace: str | None = None) -> K8sJob:
    return K8sJob.connect(plan(path), None, namespace, env)


def preflight_reviews(docs: list[dict[str, Any]], namespace: str = "default") -> list[dict[str, str]]:
    """The access reviews apply sends first: what --wait reads, then create+patch per kind."""
    needed = [("get", "apps", "statefulsets"), ("list", "", "pods")]
    for d in docs:
        group = d["apiVersion"].rpartition("/")[0]
        plural = backend.KINDS[d["kind"]].plural
        needed += [("create", group, plural), ("patch", group, plural)]
    return [{"namespace": namespace, "verb": v, "group": g, "resource": r}
            for v, g, r in dict.fromkeys(needed)]


def sequence(*replies: Reply) -> Any:
    """A handler answering with each reply in turn, then the last one again."""
    it = itertools.chain(replies, itertools.repeat(replies[-1]))
    return lambda _req: next(it)


def finishing(api: FakeApi, *replies: Reply, record: dict[str, Any] | None = None) -> None:
    """The StatefulSet answers each reply in turn (then the last again); the job's outcome
    record (a ConfigMap) is there once the last was answered, as the finish sidecar writes it
    when it scales the StatefulSet to 0."""
    answered: list[Reply] = []
    it = itertools.chain(replies, itertools.repeat(replies[-1]))

    def sts(_req: Any) -> Reply:
        answered.append(next(it))
        return answered[-1]

    def outcome(_req: Any) -> Reply:
        if record is not None and answered and answered[-1] is replies[-1]:
            return Reply(200, record)
        return Reply(404, status_body(404, "NotFound", 'configmaps "cifar-cpu-outcome" not found'))

    api.on("GET", STS, sts)
    api.on("GET", RECORD, outcome)


# ---- apply -------------------------------------------------------------------------------------


def test_apply_sends_every_rendered_object_in_order(env: dict[str, str], api: FakeApi) -> None:
    p = plan()
    applied = list(job(env).apply())
    docs = k8s.render(p)
    get, *reviews, claim, classes = api.requests[:-len(docs)]
    patches = api.requests[-len(docs):]
    assert (get.method, get.path) == ("GET", STS)  # is the job already finished?
    assert [r.json()["spec"]["resourceAttributes"] for r in reviews] == preflight_reviews(docs)
    assert {(r.method, r.path) for r in reviews} == {("POST", SSAR)}
    assert (claim.method, claim.path) == ("GET", CLAIM)
    assert (classes.method, classes.path) == ("GET", "/apis/storage.k8s.io/v1/storageclasses")
    assert [(r.method, r.path) for r in patches] == [
        ("PATCH", object_path(d, "default")) for d in docs]
    for req, doc in zip(patches, docs, strict=True):
        assert req.query == APPLY_QUERY
        assert req.headers["content-type"] == "application/apply-patch+yaml"
        assert req.headers["authorization"] == "Bearer t0ken-abc"
        body = yaml.safe_load(req.body)
        assert body["metadata"]["namespace"] == "default"
        assert body == {**doc, "metadata": {**doc["metadata"], "namespace": "default"}}
    assert [str(a) for a in applied][-1] == "statefulset.apps/cifar-cpu serverside-applied"
    kinds = [d["kind"] for d in docs]
    assert kinds[-1] == "StatefulSet"
    assert {"NetworkPolicy", "PersistentVolumeClaim", "Service"} < set(kinds[:kinds.index("StatefulSet")])


def test_rest_paths_for_every_kind() -> None:
    paths = {kind: object_path({"kind": kind, "apiVersion": k.api_version, "metadata": {"name": "x"}},
                               "ml") for kind, k in backend.KINDS.items()}
    assert paths == {
        "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/x",
        "ServiceAccount": "/api/v1/namespaces/ml/serviceaccounts/x",
        "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/roles/x",
        "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings/x",
        "PersistentVolumeClaim": "/api/v1/namespaces/ml/persistentvolumeclaims/x",
        "Service": "/api/v1/namespaces/ml/services/x",
        "Deployment": "/apis/apps/v1/namespaces/ml/deployments/x",
        "PodDisruptionBudget": "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/x",
        "ConfigMap": "/api/v1/namespaces/ml/configmaps/x",
        "Secret": "/api/v1/namespaces/ml/secrets/x",
            "StatefulSet": "/apis/apps/v1/namespaces/ml/statefulsets/x",
    }
    for example in EXAMPLES:  # every kind the renderer emits has a path
        for doc in k8s.render(plan(example)):
            assert doc["kind"] in backend.KINDS


def test_spec_namespace_body_is_exactly_the_rendered_object(env: dict[str, str], api: FakeApi) -> None:
    list(job(env, GPU).apply())
    docs = k8s.render(plan(GPU))
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [r.json() for r in patches] == docs
    assert all("/namespaces/ml/" in r.path for r in patches)


def test_applying_twice_sends_identical_requests(env: dict[str, str], api: FakeApi) -> None:
    list(job(env).apply())
    first = [r.key() for r in api.requests]
    api.requests.clear()
    list(job(env).apply())
    assert [r.key() for r in api.requests] == first


def test_server_dry_run_adds_dry_run_all(env: dict[str, str], api: FakeApi) -> None:
    applied = list(job(env).apply(dry_run=True))
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert patches and all(r.query == {**APPLY_QUERY, "dryRun": ["All"]} for r in patches)
    assert str(applied[0]).endswith("serverside-applied (server dry run)")


def test_namespace_precedence(tmp_path: Path, env: dict[str, str], api: FakeApi) -> None:
    assert job(env).namespace == "default"
    assert job(env, GPU).namespace == "ml"  # the spec's
    assert job(env, GPU, "team-b").namespace == "team-b"  # --namespace wins
    cfg = write_kubeconfig(tmp_path / "ns-config", api.url, namespace="research")
    assert job({"KUBECONFIG": str(cfg)}).namespace == "research"  # the context's
    moved = manifests(plan(GPU), "team-b")
    assert all(d["metadata"]["namespace"] == "team-b" for d in moved)
    assert list(moved[0]["metadata"])[:2] == ["name", "namespace"]


def test_a_finished_job_is_not_reapplied(env: dict[str, str], api: FakeApi) -> None:
    finishing(api, Reply(200, fixture("statefulset-succeeded")),
              record=fixture("outcome-succeeded"))
    with pytest.raises(JobFinished, match=r"job cifar-cpu already finished .*succeeded: exit code 0"):
        list(job(env).apply())
    assert [r.method for r in api.requests] == ["GET", "GET"]  # the StatefulSet, its record


# ---- status and wait ---------------------------------------------------------------------------


def test_status_reads_the_statefulset_and_the_jobs_pods(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("GET", PODS, Reply(200, fixture("pods-restarting")))
    s = job(env).status()
    assert (s.phase, s.running) == ("running", 2)
    assert api.requests[1].query == {"labelSelector": [SELECTOR]}
    assert [n.restarts for n in s.nodes] == [0, 3, 1]


def test_status_not_found(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", PODS, Reply(200, fixture("pods-empty")))
    assert job(env).status().phase == "not-started"


def test_watch_yields_snapshots_until_finished(env: dict[str, str], api: FakeApi) -> None:
    finishing(api, Reply(200, fixture("statefulset-pending")),
              Reply(200, fixture("statefulset-running")),
              Reply(200, fixture("statefulset-succeeded")), record=fixture("outcome-succeeded"))
    api.on("GET", PODS, sequence(Reply(200, fixture("pods-pending")),
                                 Reply(200, fixture("pods-running")),
                                 Reply(200, fixture("pods-finished"))))
    slept: list[float] = []
    phases = [s.phase for s in job(env).watch(sleep=slept.append)]
    assert phases == ["pending", "running", "succeeded"]
    assert slept == [2.0, 2.0]


def test_watch_times_out(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("GET", PODS, Reply(200, fixture("pods-running")))
    clock = itertools.count(0, 5).__next__
    with pytest.raises(WaitTimeout, match=r"timed out after 3s .* running: 3 of 3 nodes running"):
        list(job(env).watch(timeout=3, sleep=lambda _s: None, clock=clock))


# ---- scale, delete, logs -----------------------------------------------------------------------


def test_scale_patches_the_scale_subresource(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("PATCH", STS + "/scale", Reply(200, {"kind": "Scale", "apiVersion": "autoscaling/v1",
                                                "spec": {"replicas": 2}}))
    change = job(env).scale(2)
    assert (change.before, change.after) == (3, 2)
    patch = api.requests[-1]
    assert (patch.method, patch.path, patch.query, patch.json()) == (
        "PATCH", STS + "/scale", {"fieldManager": ["kdist"]}, {"spec": {"replicas": 2}})
    assert patch.headers["content-type"] == "application/merge-patch+json"


def test_scale_outside_min_max_sends_nothing(env: dict[str, str], api: FakeApi) -> None:
    with pytest.raises(UsageError, match="cannot scale job cifar-cpu to 4 nodes: the spec allows 2 to 3"):
        job(env).scale(4)
    assert api.requests == []


def _listing(kind: str, *names: str) -> Reply:
    return Reply(200, {"kind": f"{kind}List", "items": [{"metadata": {"name": n}} for n in names]})


def test_delete_lists_by_label_and_keeps_the_claim(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", "/apis/apps/v1/namespaces/default/statefulsets", _listing("StatefulSet", "cifar-cpu"))
    api.on("GET", "/api/v1/namespaces/default/services",
           _listing("Service", "cifar-cpu-rdzv", "cifar-cpu"))
    api.on("GET", "/api/v1/namespaces/default/persistentvolumeclaims",
           _listing("PersistentVolumeClaim", "cifar-cpu-checkpoints"))
    for path in ("/apis/apps/v1/namespaces/default/statefulsets/cifar-cpu",
                 "/api/v1/namespaces/default/services/cifar-cpu",
                 "/api/v1/namespaces/default/services/cifar-cpu-rdzv",
                 "/api/v1/namespaces/default/persistentvolumeclaims/cifar-cpu-checkpoints"):
        api.on("DELETE", path, Reply(200, {"kind": "Status", "status": "Success"}))
    for kind in ("Deployment", "PodDisruptionBudget", "NetworkPolicy", "RoleBinding", "Role",
                 "ServiceAccount"):
        api.on("GET", backend.collection_path(kind, "default"), _listing(kind))
    kept = job(env).delete()
    assert kept.removed == ["statefulset.apps/cifar-cpu", "service/cifar-cpu", "service/cifar-cpu-rdzv"]
    assert kept.kept == ["persistentvolumeclaim/cifar-cpu-checkpoints"]
    lists = [r for r in api.requests if r.method == "GET"]
    assert [r.path.rsplit("/", 1)[1] for r in lists] == [
        backend.KINDS[k].plural for k in backend.DELETE_ORDER]
    assert all(r.query == {"labelSelector": [SELECTOR]} for r in lists)
    deletes = [r for r in api.requests if r.method == "DELETE"]
    assert all(r.query == {"propagationPolicy": ["Background"]} for r in deletes)
    api.requests.clear()
    gone = job(env).delete(volumes=True)
    assert gone.removed[-1] == "persistentvolumeclaim/cifar-cpu-checkpoints" and gone.kept == []


def test_logs_of_every_pod_with_node_prefixes(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("GET", PODS, Reply(200, fixture("pods-running")))
    for i in range(3):
        api.on("GET", f"{PODS}/cifar-cpu-{i}/log", Reply(200, f"hello from {i}\nbye {i}\n"))
    api.on("GET", f"{PODS}/cifar-cpu-rdzv-6b8f9d7c5-x4k2p/log", Reply(200, "store up\n"))
    lines = list(job(env).logs(tail=10))
    assert lines == ["node-0 | hello from 0", "node-0 | bye 0", "node-1 | hello from 1",
                     "node-1 | bye 1", "node-2 | hello from 2", "node-2 | bye 2", "rdzv | store up"]
    log_req = next(r for r in api.requests if r.path.endswith("cifar-cpu-1/log"))
    assert log_req.query == {"container": ["node"], "tailLines": ["10"]}


def test_follow_logs_of_one_node(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", f"{PODS}/cifar-cpu-2/log", Reply(200, chunks=[
        b"2025-01-14T09:12:03.5Z step 1\n", b"2025-01-14T09:12:04.123456789Z step 2\n"]))
    assert list(job(env).logs(["node-2"], follow=True)) == ["node-2 | step 1", "node-2 | step 2"]
    assert api.requests[0].query == {"container": ["node"], "follow": ["true"], "timestamps": ["true"]}
    with pytest.raises(UsageError, match="unknown node '7': expected 0 to 2"):
        list(job(env).logs(["7"]))


def test_follow_logs_resume_after_a_dropped_stream(env: dict[str, str], api: FakeApi,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    first = [b"2025-01-14T09:12:03.5Z step 1\n", b"2025-01-14T09:12:03.9Z step 2\n"]
    again = [b"2025-01-14T09:12:03.5Z step 1\n", b"2025-01-14T09:12:03.9Z step 2\n",
             b"2025-01-14T09:12:04Z step 3\n"]  # sinceTime has whole seconds: lines repeat
    api.on("GET", f"{PODS}/cifar-cpu-2/log", sequence(Reply(200, chunks=first, drop=True),
                                                      Reply(200, chunks=again)))
    lines = list(job(env).logs(["node-2"], follow=True, tail=5))
    assert lines == ["node-2 | step 1", "node-2 | step 2", "node-2 | kdist: log stream dropped; resuming",
                     "node-2 | step 3"]
    assert [r.query for r in api.requests] == [
        {"container": ["node"], "tailLines": ["5"], "follow": ["true"], "timestamps": ["true"]},
        {"container": ["node"], "follow": ["true"], "timestamps": ["true"],
         "sinceTime": ["2025-01-14T09:12:03Z"]}]


# ---- the command line --------------------------------------------------------------------------


def run(env: dict[str, str], *args: str) -> Result:
    """The real CLI; the commands shared with Compose get `--target k8s`."""
    argv = [args[0], "--target", "k8s", *args[1:]] if args[0] in {"status", "logs", "scale"} \
        else list(args)
    result = CliRunner().invoke(cli, argv, env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_client_dry_run_yaml_equals_render(example: Path, tmp_path: Path) -> None:
    rendered = CliRunner().invoke(cli, ["render", "--target", "k8s", "-f", str(example)])
    assert rendered.exit_code == 0
    no_cluster = {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    applied = run(no_cluster, "apply", "--target", "k8s", "-f", str(example), "--dry-run=client",
                  "-o", "yaml")
    assert applied.exit_code == 0
    assert applied.stdout == rendered.stdout


def test_cli_apply_then_wait_until_succeeded(env: dict[str, str], api: FakeApi,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    finishing(api, Reply(404, status_body(404, "NotFound", "not found")),
              Reply(200, fixture("statefulset-pending")),
              Reply(200, fixture("statefulset-running")),
              Reply(200, fixture("statefulset-succeeded")), record=fixture("outcome-succeeded"))
    api.on("GET", PODS, sequence(Reply(200, fixture("pods-pending")),
                                 Reply(200, fixture("pods-running")),
                                 Reply(200, fixture("pods-finished"))))
    result = run(env, "apply", "-f", str(CPU), "--wait", "--timeout", "60")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == "networkpolicy.networking.k8s.io/cifar-cpu serverside-applied"
    assert out[-1] == "statefulset.apps/cifar-cpu serverside-applied"
    progress = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if "] " in line]
    assert progress == [
        "pending: 1 of 3 nodes running (needs 2); cifar-cpu-1 Unschedulable, cifar-cpu-2 ImagePullBackOff",
        "running: 3 of 3 nodes running (min 2)",
        "succeeded: exit code 0; reported by cifar-cpu-1, 1 pods stopping"]
    assert result.stderr.splitlines()[-1] == "kdist: job cifar-cpu succeeded"


def test_cli_wait_for_a_failed_job_exits_with_its_code(env: dict[str, str], api: FakeApi) -> None:
    record = fixture("outcome-failed")
    record["data"]["exit-code"] = "3"
    finishing(api, Reply(404, status_body(404, "NotFound", "not found")),
              Reply(200, fixture("statefulset-failed")), record=record)
    api.on("GET", PODS, Reply(200, fixture("pods-empty")))
    result = run(env, "apply", "-f", str(CPU), "--wait")
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1] == (
        "kdist: job cifar-cpu failed: torchrun exited with code 3 on cifar-cpu-0; "
        "see `kdist logs --target k8s`")
    log_req = api.requests[-1]  # the finishing pod was gone: no cause, the message says where
    assert (log_req.path, log_req.query) == (f"{PODS}/cifar-cpu-0/log",
                                             {"container": ["node"], "tailLines": ["2000"]})


def test_cli_wait_for_a_failed_job_reads_the_root_cause_from_the_finishing_pod(
        env: dict[str, str], api: FakeApi) -> None:
    """While the pod that reported the outcome is still there, its node log names the cause:
    the same parser (kdist/torchlog.py) as `kdist run` and `kdist up`."""
    finishing(api, Reply(404, status_body(404, "NotFound", "not found")),
              Reply(200, fixture("statefulset-failed")), record=fixture("outcome-failed"))
    api.on("GET", PODS, Reply(200, fixture("pods-empty")))
    log = (TORCHRUN_FIXTURES / "raise-no-restarts" / "node-0.log").read_text(encoding="utf-8")
    api.on("GET", f"{PODS}/cifar-cpu-0/log", Reply(200, log))
    # not run(): the trainer's own traceback is part of the message
    result = CliRunner().invoke(cli, ["apply", "-f", str(CPU), "--wait"], env=env)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert ("kdist: job cifar-cpu failed: torchrun exited with code 1 on cifar-cpu-0; root cause: "
            "RuntimeError: tutorial trainer: deliberate failure at epoch 3") in result.stderr
    assert ("  rank 0 exited with code 1: RuntimeError: tutorial trainer: deliberate failure at "
            "epoch 3") in result.stderr.splitlines()
    status = CliRunner().invoke(cli, ["status", "-t", "k8s", "-o", "json", "-f", str(CPU)], env=env)
    cause = json.loads(status.stdout)["root_cause"]
    assert (cause["node"], cause["exit_code"]) == ("cifar-cpu-0", 1)
    assert cause["exception"] == "RuntimeError: tutorial trainer: deliberate failure at epoch 3"


def test_cli_status_table_and_json(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("GET", PODS, Reply(200, fixture("pods-restarting")))
    table = run(env, "status", "-f", str(CPU))
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0] == ("job cifar-cpu (namespace default, context kind-kdist): running: 2 of 3 nodes "
                        "running (min 2); cifar-cpu-1 CrashLoopBackOff, cifar-cpu-2 restarted 1x "
                        "(last exit 137)")
    assert lines[1].split() == ["NODE", "STATE", "EXIT", "RESTARTS", "HOST", "NOTE"]
    assert lines[3].split()[:5] == ["cifar-cpu-1", "Waiting", "1", "3", "kdist-worker2"]
    assert "CrashLoopBackOff" in lines[3]
    data = json.loads(run(env, "status", "-f", str(CPU), "-o", "json").stdout)
    assert (data["target"], data["phase"], data["running"]) == ("k8s", "running", 2)
    assert (data["nodes"][2]["exit_code"], data["nodes"][2]["host"]) == (137, "kdist-worker")


@pytest.mark.parametrize(("code", "reason", "message", "expected"), [
    (403, "Forbidden", 'services "cifar-cpu" is forbidden: User "jane" cannot patch resource '
                       '"services" in API group "" in the namespace "default"',
     "kdist: permission denied: user 'jane' cannot patch services in namespace 'default'"),
    (422, "Invalid", 'Service "cifar-cpu" is invalid: spec.ports[0].port: Invalid value: 0',
     "kdist: the API server refused to patch services cifar-cpu in namespace 'default' (context "
     "'kind-kdist'): Service \"cifar-cpu\" is invalid"),
    (400, "BadRequest", 'admission webhook "policy.kyverno.svc" denied the request: no GPUs',
     "kdist: the API server refused to patch services cifar-cpu in namespace 'default' (context "
     "'kind-kdist'): admission webhook"),
])
def test_cli_api_errors_are_messages(env: dict[str, str], api: FakeApi, code: int, reason: str,
                                     message: str, expected: str) -> None:
    api.on("PATCH", "/api/v1/namespaces/default/services/cifar-cpu",
           Reply(code, status_body(code, reason, message)))
    result = run(env, "apply", "-f", str(CPU))
    assert result.exit_code == 2
    assert result.stderr.startswith(expected)


def test_cli_unreachable_unknown_context_and_range(env: dict[str, str], tmp_path: Path) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    refused = write_kubeconfig(tmp_path / "refused", server)
    result = run({"KUBECONFIG": str(refused)}, "status", "-f", str(CPU))
    assert result.exit_code == 3
    assert result.stderr.startswith(f"kdist: cannot reach the Kubernetes API server {server} "
                                    "(context 'kind-kdist'): connection refused")
    result = run(env, "apply", "-f", str(CPU), "--context", "prdo")
    assert result.exit_code == 2
    assert "(contexts: kind-kdist, prod); did you mean 'prod'?" in result.stderr
    result = run(env, "apply", "-f", str(CPU), "--dry-run=client", "--wait")
    assert (result.exit_code, result.stderr.strip()) == (
        2, "kdist: --wait needs a real apply (--dry-run=none)")
    result = run(env, "scale", "-f", str(CPU), "9")
    assert (result.exit_code, result.stderr.strip()) == (
        2, "kdist: cannot scale job cifar-cpu to 9 nodes: the spec allows 2 to 3 (nodes: 2:3)")
    result = run({"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}, "delete", "-f", str(CPU))
    assert result.exit_code == 2 and "no kubeconfig" in result.stderr


def test_cli_delete_output(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", "/apis/apps/v1/namespaces/default/statefulsets", _listing("StatefulSet", "cifar-cpu"))
    api.on("DELETE", STS, Reply(200, {"kind": "Status", "status": "Success"}))
    api.on("GET", "/api/v1/namespaces/default/persistentvolumeclaims",
           _listing("PersistentVolumeClaim", "cifar-cpu-checkpoints"))
    result = run(env, "delete", "-f", str(CPU))
    assert result.exit_code == 0
    assert result.stdout == "statefulset.apps/cifar-cpu deleted\n"
    assert "kept persistentvolumeclaim/cifar-cpu-checkpoints" in result.stderr


# ---- credentials, watches, preflight (issue 13) --------------------------------------------------


def _wait_routes(api: FakeApi, on_pending: Any = None) -> None:
    """A job that is not there yet, then Pending, Running, Succeeded (one step per poll)."""
    steps = iter([Reply(404, status_body(404, "NotFound", "not found")),
                  Reply(200, fixture("statefulset-pending")), Reply(200, fixture("statefulset-running"))])

    finished: list[bool] = []

    def sts(req: Any) -> Reply:
        reply = next(steps, None)
        if reply is None:
            finished.append(True)
            reply = Reply(200, fixture("statefulset-succeeded"))
        if reply.body is not None and reply.body.get("metadata", {}).get("name") and on_pending:
            on_pending(reply)
        return reply

    api.on("GET", STS, sts)
    api.on("GET", RECORD, lambda _req: Reply(200, fixture("outcome-succeeded")) if finished else
           Reply(404, status_body(404, "NotFound", "not found")))
    api.on("GET", PODS, sequence(Reply(200, fixture("pods-pending")),
                                 Reply(200, fixture("pods-running")),
                                 Reply(200, fixture("pods-finished"))))


def test_exec_credential_expiring_during_apply_wait_is_refreshed(
        tmp_path: Path, api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real plugin script; its first token stops working mid-wait: 401, the plugin runs again,
    the wait goes on. The expirationTimestamp lies (as clock skew or early revocation do), so the
    client's own refresh-by-expiry does not help: kdist's reload on 401 must."""
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    runs = tmp_path / "runs"
    plugin = tmp_path / "get-token"
    plugin.write_text(f"""#!{sys.executable}
import json, pathlib
runs = pathlib.Path({str(runs)!r})
n = len(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text("x" * n)
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": f"tok-{{n}}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}))
""")
    plugin.chmod(0o755)
    cfg = write_kubeconfig(tmp_path / "kubeconfig", api.url, exec={
        "apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)})
    api.tokens = {"Bearer tok-1"}

    def expire(_reply: Reply) -> None:
        api.tokens = {"Bearer tok-2"}  # revoked right after the first status read

    _wait_routes(api, expire)
    result = run({"KUBECONFIG": str(cfg), "HOME": str(tmp_path)}, "apply", "-f", str(CPU), "--wait")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == "kdist: job cifar-cpu succeeded"
    assert runs.read_text() == "xx"  # the plugin ran twice: at start and after the 401
    auth = [r.headers["authorization"] for r in api.requests]
    first_new = auth.index("Bearer tok-2")
    assert set(auth[:first_new]) == {"Bearer tok-1"} and set(auth[first_new:]) == {"Bearer tok-2"}
    retried = api.requests[first_new - 1], api.requests[first_new]
    assert retried[0].key()[:3] == retried[1].key()[:3]  # the same request, sent once more
    assert (retried[0].method, retried[0].path) == ("GET", PODS)


def test_wait_resumes_after_a_dropped_connection(env: dict[str, str], api: FakeApi,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    _wait_routes(api)
    pods = api.routes[("GET", PODS)]
    dropped = iter([False, True])
    api.on("GET", PODS, lambda req: Reply(drop=True) if next(dropped, False) else pods(req))
    result = run(env, "apply", "-f", str(CPU), "--wait")
    assert result.exit_code == 0, result.output
    notes = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if "] kdist:" in line]
    assert len(notes) == 1 and notes[0].startswith(
        f"kdist: the API server dropped the watch (cannot reach the Kubernetes API server {api.url}")
    assert notes[0].endswith("; resumed")
    assert result.stderr.splitlines()[-1] == "kdist: job cifar-cpu succeeded"
    polls = [r.path for r in api.requests if r.method == "GET" and r.path in (STS, PODS)]
    # the finished check, a poll, a poll whose pod list was dropped, a poll that sees Succeeded
    assert polls == [STS, STS, PODS, STS, PODS, STS, PODS]


def test_preflight_lists_every_missing_permission_and_writes_nothing(
        env: dict[str, str], api: FakeApi) -> None:
    def review(req: Any) -> Reply:  # the `edit` ClusterRole: everything but RBAC objects
        attrs = req.json()["spec"]["resourceAttributes"]
        allowed = attrs["group"] != "rbac.authorization.k8s.io"
        return Reply(201, {**req.json(), "status": {"allowed": allowed}})

    api.on("POST", SSAR, review)
    result = run(env, "apply", "-f", str(CPU))
    assert result.exit_code == 2
    assert result.stderr == (
        "kdist: user 'kdist-user' may not apply job cifar-cpu in namespace default, context "
        "kind-kdist; missing: create roles.rbac.authorization.k8s.io, patch "
        "roles.rbac.authorization.k8s.io, create rolebindings.rbac.authorization.k8s.io, patch "
        "rolebindings.rbac.authorization.k8s.io. Nothing was applied. Ask for a Role with these "
        "verbs (the `edit` ClusterRole lacks roles and rolebindings: an `admin` RoleBinding in the "
        "namespace has them); check one with `kubectl auth can-i create "
        "roles.rbac.authorization.k8s.io -n default --context kind-kdist`\n")
    assert not [r for r in api.requests if r.method == "PATCH"]


def _classes(*specs: tuple[str, str, bool]) -> dict[str, Any]:
    items = [{"kind": "StorageClass", "apiVersion": "storage.k8s.io/v1", "provisioner": prov,
              "metadata": {"name": name, "annotations": {
                  "storageclass.kubernetes.io/is-default-class": "true" if default else "false"}}}
             for name, prov, default in specs]
    return {"kind": "StorageClassList", "apiVersion": "storage.k8s.io/v1", "items": items}


def test_apply_refuses_a_claim_no_storage_class_can_serve(env: dict[str, str], api: FakeApi) -> None:
    api.on("GET", "/apis/storage.k8s.io/v1/storageclasses",
           Reply(200, _classes(("standard", "rancher.io/local-path", True))))
    result = run(env, "apply", "-f", str(CPU))
    assert result.exit_code == 2
    assert result.stderr == (
        "kdist: the checkpoint claim cifar-cpu-checkpoints (ReadWriteMany, 1Gi) cannot be "
        "provisioned: StorageClass 'standard' (rancher.io/local-path) serves only ReadWriteOnce "
        "volumes; set checkpoint.storage_class to a class with ReadWriteMany (NFS, EFS, Filestore, "
        "Azure Files; this cluster has none) or checkpoint.access_mode: ReadWriteOnce when every "
        "node runs on one host. Nothing was applied.\n")
    assert not [r for r in api.requests if r.method == "PATCH"]
    api.on("GET", CLAIM, Reply(200, {"kind": "PersistentVolumeClaim", "status": {"phase": "Bound"}}))
    assert run(env, "apply", "-f", str(CPU)).exit_code == 0  # a bound claim needs no class
    api.on("GET", CLAIM, Reply(404, status_body(404, "NotFound", "not found")))
    api.on("GET", "/apis/storage.k8s.io/v1/storageclasses", Reply(403, status_body(
        403, "Forbidden", 'storageclasses.storage.k8s.io is forbidden: User "kdist-user" cannot '
        'list resource "storageclasses" in API group "storage.k8s.io" at the cluster scope')))
    assert run(env, "apply", "-f", str(CPU)).exit_code == 0  # may not list classes: not checked


def test_storage_problems() -> None:
    problem = backend.storage_problem
    rwo, nfs = ("standard", "rancher.io/local-path", False), ("nfs", "nfs.csi.k8s.io", False)
    assert problem(_classes(rwo, nfs)["items"], "", "ReadWriteMany") == (
        "the cluster has no default StorageClass (classes: nfs, standard); set checkpoint.storage_class")
    assert problem(_classes(rwo, nfs)["items"], "nsf", "ReadWriteMany") == (
        "checkpoint.storage_class 'nsf' is not a StorageClass of this cluster (classes: nfs, "
        "standard); did you mean 'nfs'?")
    assert "maybe nfs)" in problem(_classes(rwo, nfs)["items"], "standard", "ReadWriteMany")
    assert problem(_classes(rwo, nfs)["items"], "nfs", "ReadWriteMany") == ""
    assert problem(_classes(rwo, nfs)["items"], "standard", "ReadWriteOnce") == ""
    static = ("static", "kubernetes.io/no-provisioner", True)  # binds RWX PVs made by hand
    assert problem(_classes(static)["items"], "", "ReadWriteMany") == ""


def test_wait_says_why_pods_are_pending_and_times_out(env: dict[str, str], api: FakeApi,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "WAIT_INTERVAL", 0.01)
    api.on("GET", STS, sequence(Reply(404, status_body(404, "NotFound", "not found")),
                                Reply(200, fixture("statefulset-pending"))))
    api.on("GET", PODS, Reply(200, fixture("pods-pending")))
    api.on("GET", "/api/v1/namespaces/default/events", Reply(200, fixture("events-pending")))
    result = run(env, "apply", "-f", str(CPU), "--wait", "--timeout", "0.3")
    assert result.exit_code == 1, result.output
    why = [
        "persistentvolumeclaim/cifar-cpu-checkpoints: ProvisioningFailed: failed to provision "
        "volume with StorageClass \"standard\": NodePath only supports ReadWriteOnce and "
        "ReadWriteOncePod (1.22+) access modes",
        "pod/cifar-cpu-1: FailedScheduling: 0/3 nodes are available: pod has unbound immediate "
        "PersistentVolumeClaims. preemption: 0/3 nodes are available: 3 Preemption is not helpful "
        "for scheduling.",
        "statefulset/cifar-cpu: FailedCreate: create Pod cifar-cpu-2 in StatefulSet cifar-cpu "
        "failed error: admission webhook \"validate.kyverno.svc\" denied the request: image "
        "registry not allowed",
        "pod/cifar-cpu-2: Failed: Failed to pull image \"kdist-trainer:0.1.0\": not found"]
    shown = [line.split("] why pending: ", 1)[1] for line in result.stderr.splitlines()
             if "] why pending: " in line]
    assert shown == why  # each once, oldest first; the other job's event is not shown
    last = result.stderr.split("kdist: timed out after 0.3s waiting for job cifar-cpu to finish: ")[1]
    assert last == ("pending: 1 of 3 nodes running (needs 2); cifar-cpu-1 Unschedulable, cifar-cpu-2 "
                    "ImagePullBackOff; it keeps running (kdist status; --timeout changes the limit, "
                    "0 for none)" + "".join(f"\n  {w}" for w in why) + "\n")
    events = [r for r in api.requests if r.path.endswith("/events")]
    assert events and all(r.query == {"fieldSelector": ["type=Warning"]} for r in events)
    as_json = run(env, "apply", "-f", str(CPU), "--wait", "--timeout", "0.3", "-o", "json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["why"] for r in records if r.get("event") == "pending"] == why
    assert records[-1]["error"].startswith("timed out after 0.3s waiting for job cifar-cpu")


def test_queue_note_and_missing_kubernetes_package(tmp_path: Path, env: dict[str, str],
                                                   api: FakeApi) -> None:
    spec = tmp_path / "kdist.yaml"
    spec.write_text(CPU.read_text() + "k8s: {queue: team-a}\n")
    result = run(env, "apply", "-f", str(spec))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        "kdist: k8s.queue is set: Kueue admits the job as applied; `kdist scale` changes the "
        "StatefulSet's replicas directly and bypasses Kueue's quota")
    api.on("GET", STS, Reply(200, fixture("statefulset-running")))
    api.on("PATCH", STS + "/scale", Reply(200, {"kind": "Scale", "spec": {"replicas": 3}}))
    scaled = run(env, "scale", "--target", "k8s", "-f", str(spec), "3")
    assert scaled.exit_code == 0, scaled.output
    assert scaled.stderr.splitlines()[0] == ("kdist: k8s.queue 'team-a' is set: this scale bypasses "
                                             "Kueue's admission and quota")
    code = ("import sys; sys.modules['kubernetes'] = None; from kdist.cli import main; "
            "sys.argv[0] = 'kdist'; main()")
    done = subprocess.run([sys.executable, "-c", code, "apply", "-f", str(CPU)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, "kdist: the Kubernetes commands need the "
                                                 "`kubernetes` Python package: pip install "
                                                 "'kdist[k8s]'\n")


def test_entry_point_prints_no_traceback(env: dict[str, str]) -> None:
    code = "import sys; from kdist.cli import main; sys.argv[0] = 'kdist'; main()"
    done = subprocess.run([sys.executable, "-c", code, "apply", "-f", str(CPU), "--context", "nope"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("kdist: context 'nope' (from --context) is not in")


def test_help_and_render_do_not_import_the_k8s_modules() -> None:
    code = f"""
import sys
from click.testing import CliRunner
from kdist.cli import cli
for args in (["--help"], ["apply", "--help"], ["render", "-t", "k8s", "-f", {str(CPU)!r}]):
    assert CliRunner().invoke(cli, args).exit_code == 0, args
heavy = ("kdist.targets.k8s.kube", "kdist.targets.k8s.job", "kdist.targets.k8s.status",
         "kubernetes", "urllib3")
print([m for m in sys.modules if m.startswith(heavy)])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

