"""kdist against a real etcd + kube-apiserver (tests/kube_server.py, conftest's `kube_server`):
what tests/test_k8s_backend.py's HTTP stand-in only assumed. The server validates every
rendered object, runs server-side apply with its field managers, RBAC with a non-admin user,
PodSecurity admission and the /scale subresource. No controller runs here: no pods are created
from the workloads, so a test that needs a pod creates it from the workload's template itself.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import ROOT
from kube_server import KubeServer

from kdist.cli import cli
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets.k8s.job import K8sJob, collection_path, manifests, object_path
from kdist.targets.k8s.kube import ApiError
from kdist.targets.k8s.kube.client import APPLY_PATCH, KubeClient

pytestmark = pytest.mark.apiserver

EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))
CPU = ROOT / "trainers" / "examples" / "cpu-gloo.yaml"  # job cifar-cpu, nodes 2:3
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted"
              for mode in ("enforce", "warn", "audit")}
WORKLOADS = ("StatefulSet", "Deployment")
_names = itertools.count(1)


def ensure(server: KubeServer, path: str, body: dict[str, Any]) -> None:
    """Create unless it exists (the server is shared by the session)."""
    status, answer = server.request("POST", path, body)
    assert status in (201, 409), answer


def storage_class(name: str, default: bool = False) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name, "annotations": {
                "storageclass.kubernetes.io/is-default-class": str(default).lower()}},
            "provisioner": "kdist.test/rwx"}


@pytest.fixture
def server(kube_server: KubeServer) -> KubeServer:
    """The session's server with a default StorageClass and each class an example names, as
    the clusters kdist targets have (a ReadWriteMany provisioner: none runs here)."""
    named = {plan(e).spec.checkpoint.storage_class for e in EXAMPLES} - {""}
    for name in ["shared", *sorted(named)]:
        ensure(kube_server, "/apis/storage.k8s.io/v1/storageclasses",
               storage_class(name, default=name == "shared"))
    for name in sorted({plan(e).spec.k8s.priority_class for e in EXAMPLES} - {""}):
        ensure(kube_server, "/apis/scheduling.k8s.io/v1/priorityclasses", {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": 1000})
    return kube_server


@pytest.fixture
def namespace(server: KubeServer) -> str:
    """A fresh namespace that enforces Pod Security "restricted", with the `default`
    ServiceAccount the controller-manager would create."""
    name = f"kdist-t{next(_names)}"
    server.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name, "labels": RESTRICTED}})
    server.create(f"/api/v1/namespaces/{name}/serviceaccounts",
                  {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})
    return name


@pytest.fixture
def env(server: KubeServer, tmp_path: Path) -> dict[str, str]:
    return {"KUBECONFIG": str(server.kubeconfig), "HOME": str(tmp_path)}


def run(env: dict[str, str], *args: str) -> Result:
    """The real CLI; the commands shared with Compose get `--target k8s`."""
    argv = [args[0], "--target", "k8s", *args[1:]] if args[0] in {"status", "logs", "scale"} \
        else list(args)
    result = CliRunner().invoke(cli, argv, env=env)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def plan(path: Path = CPU) -> LaunchPlan:
    return LaunchPlan(load_file(path))


def differences(sent: Any, live: Any, where: str = "") -> Iterator[str]:
    """Where the stored object lacks or changed what kdist sent (the server may add defaults)."""
    if isinstance(sent, dict):
        if not isinstance(live, dict):
            yield f"{where}: sent a map, stored {live!r}"
            return
        for key, value in sent.items():
            if key not in live:
                yield f"{where}.{key}: dropped by the server"
            else:
                yield from differences(value, live[key], f"{where}.{key}")
    elif isinstance(sent, list):
        if not isinstance(live, list) or len(live) != len(sent):
            yield f"{where}: sent {len(sent)} items, stored {live!r}"
            return
        for i, (s, v) in enumerate(zip(sent, live, strict=True)):
            yield from differences(s, v, f"{where}[{i}]")
    elif sent != live and not (isinstance(sent, int) and live == str(sent)):  # quantities
        yield f"{where}: sent {sent!r}, stored {live!r}"


def pod_from(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """The Pod the workload's controller would create from its template."""
    template = copy.deepcopy(workload["spec"]["template"])
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


# ---- every rendered object, validated and stored by the real server ----------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_apply_stores_every_rendered_object_unchanged(example: Path, server: KubeServer,
                                                      namespace: str, env: dict[str, str]) -> None:
    result = run(env, "apply", "-f", str(example), "-n", namespace)
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr  # no unknown field, no PodSecurity warning on a template
    docs = manifests(plan(example), namespace)
    assert len(result.stdout.splitlines()) == len(docs)
    for doc in docs:
        live = server.get(object_path(doc, namespace))
        assert list(differences(doc, live, doc["kind"])) == []
        assert {m["manager"] for m in live["metadata"]["managedFields"]} == {"kdist"}
    sts = server.get(object_path(docs[-1], namespace))
    assert sts["spec"]["template"]["spec"]["initContainers"][0]["restartPolicy"] == "Always"


def test_server_dry_run_stores_nothing(server: KubeServer, namespace: str,
                                       env: dict[str, str]) -> None:
    result = run(env, "apply", "-f", str(CPU), "-n", namespace, "--dry-run=server")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "statefulset.apps/cifar-cpu serverside-applied (server dry run)"
    for doc in manifests(plan(), namespace):
        assert server.request("GET", object_path(doc, namespace))[0] == 404


def test_applying_again_changes_nothing(server: KubeServer, namespace: str,
                                        env: dict[str, str]) -> None:
    docs = manifests(plan(), namespace)
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    # the claim's resourceVersion moves on every apply with nothing changed (1.35.4; not understood)
    docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
    before = [server.get(object_path(d, namespace))["metadata"]["resourceVersion"] for d in docs]
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    after = [server.get(object_path(d, namespace))["metadata"]["resourceVersion"] for d in docs]
    assert after == before


def test_apply_renders_once(server: KubeServer, namespace: str, env: dict[str, str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from kdist.targets.k8s import render as k8s

    calls: list[str] = []
    real = k8s.render
    monkeypatch.setattr(k8s, "render", lambda p: calls.append(p.name) or real(p))
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    assert calls == ["cifar-cpu"]  # preflight and the apply itself share one rendering


# ---- field managers ------------------------------------------------------------------------------


def test_another_managers_apply_conflicts_with_kdist_and_kdist_takes_its_fields_back(
        server: KubeServer, namespace: str, env: dict[str, str]) -> None:
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    job = K8sJob.connect(plan(), None, namespace, env)
    path = collection_path("StatefulSet", namespace) + "/cifar-cpu"
    theirs = {"apiVersion": "apps/v1", "kind": "StatefulSet",
              "metadata": {"name": "cifar-cpu", "namespace": namespace},
              "spec": {"template": {"spec": {"terminationGracePeriodSeconds": 5}}}}
    with pytest.raises(ApiError) as e:
        job.client.patch(path, theirs, APPLY_PATCH, {"fieldManager": "ops"})
    assert e.value.code == 409
    assert str(e.value).startswith(
        f"patch statefulsets.apps cifar-cpu in namespace {namespace!r} failed (context "
        "'kdist-admin'): HTTP 409: Apply failed with 1 conflict: conflict with \"kdist\": "
        ".spec.template.spec.terminationGracePeriodSeconds")
    job.client.patch(path, theirs, APPLY_PATCH, {"fieldManager": "ops", "force": "true"})
    assert server.get(path)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    assert server.get(path)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


# ---- RBAC: the preflight and the server's denials --------------------------------------------------


def grant_all_but_rbac(server: KubeServer, namespace: str) -> None:
    """What the `edit` ClusterRole allows: every workload kind, no Roles or RoleBindings."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    server.create(f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "edit-ish"},
        "rules": [{"apiGroups": ["", "apps", "policy", "networking.k8s.io"], "resources": ["*"],
                   "verbs": ["*"]}]})
    server.create(f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dev-edit-ish"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit-ish"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dev"}]})


def test_preflight_refuses_a_user_without_rbac_verbs_before_writing_anything(
        server: KubeServer, namespace: str, env: dict[str, str]) -> None:
    grant_all_but_rbac(server, namespace)
    result = run(env, "apply", "-f", str(CPU), "-n", namespace, "--context", "kdist-dev")
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"kdist: user 'dev' may not apply job cifar-cpu in namespace {namespace}, context "
        "kdist-dev; missing: create roles.rbac.authorization.k8s.io, patch "
        "roles.rbac.authorization.k8s.io, create rolebindings.rbac.authorization.k8s.io, patch "
        "rolebindings.rbac.authorization.k8s.io. Nothing was applied.")
    for doc in manifests(plan(), namespace):
        if doc["kind"] not in ("Role", "RoleBinding"):
            assert server.request("GET", object_path(doc, namespace))[0] == 404


def test_the_servers_denial_names_user_verb_resource_and_namespace(
        server: KubeServer, namespace: str, env: dict[str, str]) -> None:
    result = run(env, "status", "-f", str(CPU), "-n", namespace, "--context", "kdist-dev")
    assert result.exit_code == 2
    assert result.stderr == (
        f"kdist: permission denied: user 'dev' cannot get statefulsets.apps in namespace "
        f"{namespace!r} (context 'kdist-dev'). Ask a cluster admin for a Role that allows it; "
        f"check with `kubectl auth can-i get statefulsets.apps -n {namespace} --context "
        "kdist-dev`\n")


def test_preflight_refuses_a_priority_class_the_cluster_lacks(
        server: KubeServer, namespace: str, env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "kdist.yaml"
    spec.write_text(CPU.read_text(encoding="utf-8") + "k8s:\n  priority_class: trainig\n",
                    encoding="utf-8")
    result = run(env, "apply", "-f", str(spec), "-n", namespace)
    assert result.exit_code == 2
    assert "k8s.priority_class 'trainig' is not a PriorityClass of this cluster" in result.stderr
    assert "did you mean 'training'?" in result.stderr and "Nothing was applied." in result.stderr
    assert server.request("GET", collection_path("StatefulSet", namespace) + "/cifar-cpu")[0] == 404


def test_a_missing_namespace_is_named(server: KubeServer, env: dict[str, str]) -> None:
    result = run(env, "apply", "-f", str(CPU), "-n", "kdist-absent")
    assert result.exit_code == 2
    assert "namespace 'kdist-absent' does not exist" in result.stderr, result.stderr


# ---- PodSecurity "restricted" ----------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_restricted_namespace_admits_the_pods_of_every_workload(
        example: Path, server: KubeServer, namespace: str, env: dict[str, str]) -> None:
    assert run(env, "apply", "-f", str(example), "-n", namespace).exit_code == 0
    pods = f"/api/v1/namespaces/{namespace}/pods"
    workloads = [d for d in manifests(plan(example), namespace) if d["kind"] in WORKLOADS]
    assert workloads
    for doc in workloads:
        pod = pod_from(server.get(object_path(doc, namespace)), f"{doc['metadata']['name']}-probe")
        status, answer = server.request("POST", pods, pod)
        assert status == 201, answer
        # the control: enforcement is on, the same pod with one container privileged is refused
        bad = copy.deepcopy(pod)
        bad["metadata"]["name"] += "-bad"
        bad["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
        status, answer = server.request("POST", pods, bad)
        assert status == 403 and 'violates PodSecurity "restricted:latest"' in answer["message"]


# ---- the /scale subresource ------------------------------------------------------------------------


def test_scale_within_min_max_through_the_scale_subresource(
        server: KubeServer, namespace: str, env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kdist.cli import jobs

    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    path = collection_path("StatefulSet", namespace) + "/cifar-cpu"
    assert server.get(path)["spec"]["replicas"] == 3
    loads: list[Path] = []
    real = jobs.load_plan
    monkeypatch.setattr(jobs, "load_plan", lambda f: loads.append(f) or real(f))
    result = run(env, "scale", "-f", str(CPU), "-n", namespace, "2")
    assert loads == [CPU]  # the spec is read once
    assert result.exit_code == 0, result.output
    assert server.get(path)["spec"]["replicas"] == 2
    assert server.get(path + "/scale")["spec"]["replicas"] == 2
    result = run(env, "scale", "-f", str(CPU), "-n", namespace, "4")
    assert result.exit_code == 2
    assert server.get(path)["spec"]["replicas"] == 2


# ---- status and delete without controllers ---------------------------------------------------------


def test_delete_removes_everything_but_the_claim(server: KubeServer, namespace: str,
                                                 env: dict[str, str]) -> None:
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    result = run(env, "delete", "-f", str(CPU), "-n", namespace)
    assert result.exit_code == 0, result.output
    for doc in manifests(plan(), namespace):
        status = server.request("GET", object_path(doc, namespace))[0]
        assert status == (200 if doc["kind"] == "PersistentVolumeClaim" else 404), doc["kind"]



def test_secret_env_goes_to_a_secret_the_nodes_read_and_goes_with_the_job(
        server: KubeServer, namespace: str, env: dict[str, str], tmp_path: Path) -> None:
    """`secret_env: [HF_TOKEN]`: apply refuses without the variable, writing nothing; with it,
    the Secret <name>-env holds the value, the node container reads it by secretKeyRef, the
    printed objects do not show it; delete removes the Secret."""
    spec = tmp_path / "kdist.yaml"
    spec.write_text(CPU.read_text() + "secret_env: [HF_TOKEN]\n")
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/cifar-cpu-env"
    sts_path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/cifar-cpu"
    refused = run(env, "apply", "-f", str(spec), "-n", namespace)
    assert refused.exit_code == 2, refused.output
    assert "secret_env: HF_TOKEN is not set in this environment" in refused.output
    assert server.request("GET", sts_path)[0] == 404 and server.request("GET", secret_path)[0] == 404

    token = f"hf_{next(_names)}_not_in_any_file"
    applied = run({**env, "HF_TOKEN": token}, "apply", "-f", str(spec), "-n", namespace, "-o", "yaml")
    assert applied.exit_code == 0, applied.output
    assert token not in applied.output and base64.b64encode(token.encode()).decode() not in \
        applied.output
    status, secret = server.request("GET", secret_path)
    assert status == 200 and base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == token
    _, sts = server.request("GET", sts_path)
    pod = sts["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"] + pod.get("initContainers", [])}
    refs = {c: [e["valueFrom"]["secretKeyRef"] for e in spec_.get("env", []) if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]] for c, spec_ in containers.items()}
    assert refs == {"node": [{"name": "cifar-cpu-env", "key": "HF_TOKEN"}], "finish": []}, refs

    assert run(env, "delete", "-f", str(spec), "-n", namespace).exit_code == 0
    assert server.request("GET", secret_path)[0] == 404


def test_status_of_a_500_node_job_asks_the_server_the_same_few_questions(
        server: KubeServer, namespace: str, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """500 node pods (made from the StatefulSet's template, as its controller would; no
    kubelet runs them, so they stay Pending): `kdist status` lists them in one request, with no
    request for any single pod. The requests are counted at kdist's HTTP client."""
    spec = tmp_path / "kdist.yaml"
    spec.write_text("name: big\nimage: trainer:1.0\nentrypoint: train.py\nnodes: \"2:500\"\n"
                    "resources: {cpu: 100m, memory: 256Mi, shm: 64Mi}\n")
    assert run(env, "apply", "-f", str(spec), "-n", namespace).exit_code == 0
    sts = server.get(collection_path("StatefulSet", namespace) + "/big")
    pods = f"/api/v1/namespaces/{namespace}/pods"
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: server.request("POST", pods, pod_from(sts, f"big-{i}"))[0],
                             range(500)))
    assert made == [201] * 500
    sent: list[tuple[str, str]] = []
    send = KubeClient.request

    def counted(self: KubeClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, path))
        return send(self, method, path, *args, **kwargs)

    monkeypatch.setattr(KubeClient, "request", counted)
    began = time.monotonic()
    result = run(env, "status", "-f", str(spec), "-n", namespace, "-o", "json")
    print(f"kdist status of 500 pods: {time.monotonic() - began:.2f} s, {len(sent)} requests")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert len(status["nodes"]) == 500 and status["phase"] == "pending", status["phase"]
    assert [p for _, p in sent if p.startswith(pods + "/")] == [], sent  # no per-pod request
    assert [m for m, p in sent if p == pods] == ["GET"], sent  # one list of them
    assert len(sent) <= 5, sent


# ---- least privilege of the finish sidecar's token ------------------------------------------------


def allowed(server: KubeServer, user: str, namespace: str, verb: str, resource: str,
            name: str = "", group: str = "", subresource: str = "") -> bool:
    """The server's RBAC answer (a SubjectAccessReview) for `user`."""
    attrs = {"namespace": namespace, "verb": verb, "group": group, "resource": resource,
             "subresource": subresource, "name": name}
    review = server.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {k: v for k, v in attrs.items() if v}}})
    return bool(review["status"].get("allowed"))


def test_the_finish_token_can_record_and_scale_but_rewrite_no_pod_template(
        server: KubeServer, namespace: str, env: dict[str, str]) -> None:
    assert run(env, "apply", "-f", str(CPU), "-n", namespace).exit_code == 0
    user = f"system:serviceaccount:{namespace}:cifar-cpu"

    def may(verb: str, resource: str, name: str = "", group: str = "", sub: str = "") -> bool:
        return allowed(server, user, namespace, verb, resource, name, group, sub)

    assert may("get", "configmaps", "cifar-cpu-outcome") and may("patch", "configmaps",
                                                                 "cifar-cpu-outcome")
    assert may("get", "statefulsets", "cifar-cpu", "apps", "scale")
    assert may("patch", "statefulsets", "cifar-cpu", "apps", "scale")
    for verb in ("patch", "update", "delete"):  # what would rewrite or replace pods
        assert not may(verb, "statefulsets", "cifar-cpu", "apps")
    assert not may("create", "pods") and not may("patch", "configmaps", "other")
    assert not may("patch", "deployments", "cifar-cpu-rdzv", "apps")
    assert not may("create", "pods", "cifar-cpu-0", "", "exec")
    assert not may("get", "secrets", "cifar-cpu-env") and not may("list", "secrets")
