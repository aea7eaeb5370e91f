"""Kubernetes backend: the only module with side effects on a cluster (through kdist.targets.k8s.kube).

apply (server-side apply of what kdist.targets.k8s.render renders), status, logs, scale and delete.
Every function returns data or raises a KdistError subclass; nothing here prints or exits
(kdist/cli/k8s.py turns the data into output).

A finished job stops itself: the node whose torchrun exited writes its outcome in the job's
ConfigMap <name>-outcome and scales the StatefulSet to 0 (see kdist/node/finish.py);
kdist.targets.k8s.status reads it back.
"""

from __future__ import annotations

import copy
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kdist.errors import KdistError, UsageError
from kdist.plan import NODE_COMPONENT, STORE_COMPONENT, LaunchPlan
from kdist.status import FAILED, NOT_STARTED, PENDING, JobFailed, JobState, ScaleChange
from kdist.targets import LogQuery
from kdist.targets.k8s.kube import ApiError, ClusterUnreachable, Forbidden, NotFound
from kdist.targets.k8s.kube.client import APPLY_PATCH, MERGE_PATCH, KubeClient
from kdist.targets.k8s.kube.config import Connection, connect, did_you_mean
from kdist.targets.k8s.status import COMPONENT_LABEL, K8sJobStatus, job_status, to_state
from kdist.torchlog import error_line, is_peer_error, root_cause

FIELD_MANAGER = "kdist"
WAIT_INTERVAL = 2.0
WATCH_RETRIES = 5  # consecutive transient errors a wait survives
TRANSIENT = (429, 500, 502, 503, 504)
# the kubelet's echo of a container's waiting reason as an event message: says less than the
# event before it of the same reason ("Failed to pull image ...: <the cause>")
BARE_REASON = re.compile(r"Error: [A-Za-z]+")
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
# Provisioners that serve only ReadWriteOnce(Pod) volumes: kind/k3s local-path, EBS, PD, Azure Disk.
# Not kubernetes.io/no-provisioner: its claims bind static PVs, which may be ReadWriteMany
# (hostPath, NFS; tests/kube_cluster.py makes such a class).
RWO_ONLY = ("rancher.io/local-path", "ebs.csi.aws.com", "kubernetes.io/aws-ebs",
            "pd.csi.storage.gke.io", "kubernetes.io/gce-pd", "disk.csi.azure.com",
            "kubernetes.io/azure-disk")
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]


# kind -> REST resource, for every kind the renderer emits.
KINDS: dict[str, Kind] = {
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Service": Kind("v1", "services"),
    "Deployment": Kind("apps/v1", "deployments"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
}
# `kdist delete`: the pods' owners first; the checkpoint claim (only with --volumes) last.
DELETE_ORDER = ("StatefulSet", "Deployment", "PodDisruptionBudget", "Service", "NetworkPolicy",
                "RoleBinding", "Role", "ServiceAccount", "ConfigMap", "Secret",
                "PersistentVolumeClaim")


class JobNotFound(KdistError):
    """The job has no StatefulSet in the namespace (not applied, or deleted)."""


class JobFinished(KdistError):
    """The job already finished; it must be deleted before it can run again."""


class WaitTimeout(KdistError):
    """--wait gave up before the job finished (the job keeps running)."""


class PreflightFailed(KdistError):
    """`kdist apply` would fail part-way: permissions or storage are missing. Nothing was written."""

    exit_code = 2


def api_prefix(api_version: str) -> str:
    return f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"


def kind_of(kind: str) -> Kind:
    if kind not in KINDS:
        raise KdistError(f"kdist cannot apply kind {kind!r}: no REST path for it in "
                         "kdist.targets.k8s.job.KINDS")
    return KINDS[kind]


def collection_path(kind: str, namespace: str, api_version: str = "") -> str:
    k = kind_of(kind)
    scope = f"/namespaces/{namespace}" if k.namespaced else ""
    return f"{api_prefix(api_version or k.api_version)}{scope}/{k.plural}"


def object_path(obj: Mapping[str, Any], namespace: str) -> str:
    path = collection_path(str(obj["kind"]), namespace, str(obj.get("apiVersion", "")))
    return f"{path}/{obj['metadata']['name']}"


def display_name(kind: str, name: str) -> str:
    """kubectl's `statefulset.apps/cifar-cpu`."""
    group = kind_of(kind).group
    return f"{kind.lower()}{'.' + group if group else ''}/{name}"


def manifests(plan: LaunchPlan, namespace: str | None = None) -> list[dict[str, Any]]:
    """The rendered objects, in the renderer's (dependency) order, placed in `namespace`.

    Without a namespace they are exactly what `kdist render --target k8s` prints. With one,
    namespaced objects get metadata.namespace (right after the name), and RoleBinding subjects
    that named the spec's namespace name this one.
    """
    from kdist.targets.k8s import render as k8s

    docs = k8s.render(plan)
    if not namespace:
        return docs
    docs = copy.deepcopy(docs)
    for doc in docs:
        if not kind_of(doc["kind"]).namespaced:
            continue
        meta = doc["metadata"]
        doc["metadata"] = {"name": meta["name"], "namespace": namespace,
                           **{k: v for k, v in meta.items() if k not in ("name", "namespace")}}
        for subject in doc.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace"):
                subject["namespace"] = namespace
    return docs


@dataclass(frozen=True)
class Applied:
    kind: str
    name: str
    namespace: str
    object: dict[str, Any]  # what the API server returned
    dry_run: bool = False

    def __str__(self) -> str:
        return (f"{display_name(self.kind, self.name)} serverside-applied"
                f"{' (server dry run)' if self.dry_run else ''}")


@dataclass(frozen=True)
class Deleted:
    removed: list[str] = field(default_factory=list)  # kubectl-style names, in deletion order
    kept: list[str] = field(default_factory=list)  # the checkpoint claim without --volumes


class K8sJob:
    """One job (a LaunchPlan) in one namespace of one cluster."""

    def __init__(self, plan: LaunchPlan, client: KubeClient, namespace: str) -> None:
        self.plan = plan
        self.client = client
        self.namespace = namespace
        self.interruptions: list[str] = []  # transient errors a watch went through
        self._snap: list[K8sJobStatus] | None = None  # within snapshot(): the one status read

    @classmethod
    def connect(cls, plan: LaunchPlan, context: str | None = None, namespace: str | None = None,
                env: Mapping[str, str] | None = None) -> K8sJob:
        """Namespace: --namespace, else the spec's k8s.namespace, else the context's, else default."""
        conn: Connection = connect(context, env)
        ns = namespace or plan.spec.k8s.namespace or conn.namespace or "default"
        return cls(plan, KubeClient(conn), ns)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def where(self) -> str:
        return f"namespace {self.namespace}, context {self.client.conn.context}"

    @property
    def selector(self) -> str:
        return f"{INSTANCE_LABEL}={self.name},{MANAGED_BY_LABEL}={FIELD_MANAGER}"

    # ---- apply -------------------------------------------------------------------------------

    def apply(self, dry_run: bool = False,
              environ: Mapping[str, str] | None = None) -> Iterator[Applied]:
        """Server-side apply every rendered object in order; yields each as it is applied.
        With `secret_env`, the Secret of its values from `environ` comes first.

        Refuses a finished job (re-applying would restart its training): delete it first.
        """
        objects = self._objects(self.plan.secret_values(environ or {}))  # rendered once
        self._refuse_finished("apply")
        self.check_permissions(objects)
        self.check_storage()
        self.check_priority_class()
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        for obj in objects:
            result = self.client.patch(object_path(obj, self.namespace), obj, APPLY_PATCH, query)
            yield Applied(obj["kind"], obj["metadata"]["name"], self.namespace, result, dry_run)

    def _objects(self, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
        """What apply writes: the rendered objects, after the Secret of `secret_env` if any."""
        from kdist.targets.k8s.render import secret_env

        docs = manifests(self.plan, self.namespace)
        if not self.plan.spec.secret_env:
            return docs
        secret = secret_env(self.plan, secrets)
        secret["metadata"]["namespace"] = self.namespace
        return [secret, *docs]

    # ---- preflight ---------------------------------------------------------------------------

    def needed_permissions(self, objects: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        """(verb, group, resource) that apply and --wait use: server-side apply creates or
        patches `objects`."""
        needed = [("get", "apps", "statefulsets"), ("list", "", "pods")]
        for obj in objects:
            k = kind_of(obj["kind"])
            needed += [(verb, k.group, k.plural) for verb in ("create", "patch")]
        return list(dict.fromkeys(needed))

    def check_permissions(self, objects: list[dict[str, Any]]) -> None:
        """SelfSubjectAccessReview for every needed verb; one error listing all that are denied."""
        missing = []
        for verb, group, resource in self.needed_permissions(objects):
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {"namespace": self.namespace, "verb": verb,
                                                      "group": group, "resource": resource}}}
            try:
                answer = self.client.post(SSAR_PATH, review)
            except (Forbidden, NotFound):  # reviews not allowed/served: the apply itself will say
                return
            if not (answer.get("status") or {}).get("allowed"):
                missing.append(f"{verb} {resource}{'.' + group if group else ''}")
        if missing:
            ctx = self.client.conn.context
            raise PreflightFailed(
                f"user {self.client.conn.user!r} may not apply job {self.name} in {self.where}; "
                f"missing: {', '.join(missing)}. Nothing was applied. Ask for a Role with these "
                f"verbs (the `edit` ClusterRole lacks roles and rolebindings: an `admin` "
                f"RoleBinding in the namespace has them); check one with `kubectl auth can-i "
                f"{missing[0].split()[0]} {missing[0].split()[1]} -n {self.namespace} "
                f"--context {ctx}`")

    def check_storage(self) -> None:
        """Say before applying when no StorageClass can serve the checkpoint claim."""
        c = self.plan.spec.checkpoint
        claim = f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{self.plan.checkpoint_claim}"
        try:
            if (self.client.get(claim).get("status") or {}).get("phase") == "Bound":
                return
        except NotFound:
            pass
        except Forbidden:  # may not read claims: the apply itself will say more
            return
        try:
            classes = self.client.list("/apis/storage.k8s.io/v1/storageclasses")
        except (Forbidden, NotFound):  # may not list cluster-scoped classes: the claim will tell
            return
        problem = storage_problem(classes, c.storage_class, c.access_mode)
        if problem:
            raise PreflightFailed(f"the checkpoint claim {self.plan.checkpoint_claim} "
                                  f"({c.access_mode}, {c.size}) cannot be provisioned: {problem}. "
                                  "Nothing was applied.")

    def check_priority_class(self) -> None:
        """Admission refuses every pod naming a PriorityClass that does not exist, so the
        workloads would be stored and never get a pod: say so before applying."""
        wanted = self.plan.spec.k8s.priority_class
        if not wanted:
            return
        try:
            classes = self.client.list("/apis/scheduling.k8s.io/v1/priorityclasses")
        except (Forbidden, NotFound):  # may not list cluster-scoped classes: --wait will tell
            return
        names = sorted(str((c.get("metadata") or {}).get("name", "")) for c in classes)
        if wanted not in names:
            raise PreflightFailed(
                f"k8s.priority_class {wanted!r} is not a PriorityClass of this cluster (classes: "
                f"{', '.join(names) or 'none'}){did_you_mean(wanted, names)}; the API server "
                "would refuse every pod of the job. Nothing was applied.")

    def _refuse_finished(self, verb: str) -> dict[str, Any] | None:
        sts = self.statefulset()
        status = self._status(sts, [], self.record() if sts is not None else None)
        if status.finished:
            raise JobFinished(
                f"job {self.name} already finished ({self.summary(status)}) in {self.where}; "
                f"cannot {verb} it: `kdist delete` removes it (checkpoints are kept unless "
                "--volumes), then `kdist apply` runs it again")
        return sts

    # ---- status ------------------------------------------------------------------------------

    def statefulset(self) -> dict[str, Any] | None:
        try:
            return self.client.get(collection_path("StatefulSet", self.namespace) + f"/{self.name}")
        except NotFound:
            return None

    def record(self) -> dict[str, Any] | None:
        """The finish sidecar's outcome record (a ConfigMap; kdist/node/finish.py)."""
        try:
            return self.client.get(collection_path("ConfigMap", self.namespace)
                                   + f"/{self.plan.outcome_record}")
        except NotFound:
            return None

    def pods(self) -> list[dict[str, Any]]:
        return self.client.list(f"/api/v1/namespaces/{self.namespace}/pods", self.selector)

    def _status(self, sts: dict[str, Any] | None, pods: list[dict[str, Any]],
                record: dict[str, Any] | None) -> K8sJobStatus:
        n = self.plan.spec.nodes
        return job_status(self.name, self.namespace, n.min, n.max, sts, pods, record)

    def state(self) -> JobState:
        """The job in kdist's one status model (kdist/status.py)."""
        return to_state(self.status(), self.client.conn.context)

    def summary(self, status: K8sJobStatus) -> str:
        return to_state(status, self.client.conn.context).summary()

    def read_logs(self, query: LogQuery) -> Iterator[str]:
        if query.timestamps:
            raise UsageError("--timestamps is a Compose option; Kubernetes logs come without "
                             "(kubectl logs --timestamps has them)")
        return self.logs(query.nodes, follow=query.follow, tail=query.tail)

    def status(self) -> K8sJobStatus:
        if self._snap:
            return self._snap[0]
        sts = self.statefulset()
        status = self._status(sts, self.pods(), self.record() if sts is not None else None)
        if self._snap is not None:
            self._snap.append(status)
        return status

    def watch(self, timeout: float | None = None, interval: float | None = None,
              sleep: Callable[[float], None] | None = None,
              clock: Callable[[], float] | None = None) -> Iterator[K8sJobStatus]:
        """Status snapshots every `interval` (WAIT_INTERVAL) seconds until the job finishes (the
        last one yielded is Succeeded or Failed). Raises WaitTimeout after `timeout` seconds, and
        JobNotFound if the job vanishes."""
        interval = WAIT_INTERVAL if interval is None else interval
        sleep, clock = sleep or time.sleep, clock or time.monotonic
        deadline = None if timeout is None else clock() + timeout
        failures = 0
        while True:
            try:
                status = self.status()
            except (ClusterUnreachable, ApiError) as e:
                if (isinstance(e, ApiError) and e.code not in TRANSIENT) or failures >= WATCH_RETRIES:
                    raise
                failures += 1
                self.interruptions.append(str(e))
                if deadline is not None and clock() >= deadline:
                    raise WaitTimeout(f"timed out after {timeout:g}s waiting for job {self.name}; "
                                      f"the API server did not answer: {e}") from None
                sleep(interval)
                continue
            failures = 0
            yield status
            if status.finished:
                return
            if status.phase == NOT_STARTED:
                raise JobNotFound(f"job {self.name} is gone from {self.where} (deleted?)")
            if deadline is not None and clock() >= deadline:
                why = "".join(f"\n  {w}" for w in self.why_pending()) if status.phase == PENDING else ""
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for job {self.name} to "
                                  f"finish: {self.summary(status)}; it keeps running (kdist status; "
                                  f"--timeout changes the limit, 0 for none){why}")
            sleep(interval)

    def why_pending(self) -> list[str]:
        """Warning events about the job's StatefulSet, claim and pods: one line per object and
        reason, oldest first (unbound claim, unschedulable, image pull, admission denial).
        Events about an earlier pod of the same name (a job deleted and applied again) are not
        about this run: only the current pods' count."""
        try:
            events = self.client.list(f"/api/v1/namespaces/{self.namespace}/events",
                                      field_selector="type=Warning")
            current = {str(p["metadata"].get("uid")) for p in self.pods()}
        except ApiError:
            return []
        latest: dict[tuple[str, str, str], tuple[str, str]] = {}
        for ev in sorted(events, key=_event_time):
            obj = ev.get("involvedObject") or {}
            name = str(obj.get("name", ""))
            if name not in (self.name, self.plan.checkpoint_claim) and not name.startswith(f"{self.name}-"):
                continue
            if obj.get("kind") == "Pod" and obj.get("uid") and str(obj["uid"]) not in current:
                continue
            key = (str(obj.get("kind", "")), name, str(ev.get("reason", "")))
            message = " ".join(str(ev.get("message", "")).split())
            if key in latest and BARE_REASON.fullmatch(message):
                continue  # "Error: ErrImagePull" after "Failed to pull image ...: <the cause>"
            latest.pop(key, None)
            latest[key] = (_event_time(ev), message)
        return [f"{kind.lower()}/{name}: {reason}: {msg}" for (kind, name, reason), (_, msg)
                in latest.items()]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within it, state and failure share one reading (StatefulSet, pods, record)."""
        self._snap = []
        try:
            yield
        finally:
            self._snap = None

    def failure(self, status: K8sJobStatus | None = None) -> JobFailed | None:
        """The error to exit with for a finished status (None when it succeeded)."""
        status = self.status() if status is None else status
        if status.phase != FAILED:
            return None
        pod = status.finished_by
        head = (f"job {self.name} failed: torchrun exited with code {status.exit_code}"
                + (f" on {pod}" if pod else ""))
        culprit, block = self._root_cause(pod)
        if not block:
            return JobFailed(f"{head}; see `kdist logs --target k8s`", status.exit_code, pod)
        where = f" on {culprit}" if culprit != pod else ""
        lines = [f"{head}; root cause{where}: {error_line(block)}", *(f"  {b}" for b in block)]
        return JobFailed("\n".join(lines), status.exit_code, culprit, block)

    def _root_cause(self, reporter: str) -> tuple[str, list[str]]:
        """(pod, block) of the failure the job failed by. The node that recorded the outcome is
        often only the last to give up, after a peer's error (on the cluster: the node whose
        rank raised left first), so every node pod still there is read, and a real error is
        preferred to peers' follow-on connection errors, as on Compose."""
        try:
            names = [str(p["metadata"]["name"]) for p in self.pods()
                     if (p["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == NODE_COMPONENT]
        except ApiError:
            names = []
        order = [reporter, *sorted(n for n in names if n != reporter)] if reporter else sorted(names)
        found = [(name, block) for name in order if (block := self._cause(name))]
        own = [f for f in found if not is_peer_error(f[1])]
        return (own or found or [(reporter, [])])[0]

    def _cause(self, pod: str) -> list[str]:
        """The root cause in `pod`'s node log (kdist/torchlog.py, as on Compose), while the pod
        is there: after the outcome, the finisher scales the job to 0 and pods and logs go."""
        try:
            text = self.client.get_text(self._log_path(pod),
                                        self._log_query(NODE_COMPONENT, 2000, False))
        except (NotFound, ApiError):
            return []
        return root_cause(text.splitlines())

    # ---- scale and delete ----------------------------------------------------------------------

    def scale(self, nodes: int) -> ScaleChange:
        n = self.plan.spec.nodes
        if not n.min <= nodes <= n.max:
            raise UsageError(f"cannot scale job {self.name} to {nodes} nodes: the spec allows "
                             f"{n.min} to {n.max} (nodes: {n})")
        sts = self._refuse_finished("scale")
        if sts is None:
            raise JobNotFound(f"job {self.name} is not running in {self.where}; `kdist apply` "
                              "starts it")
        before = int((sts.get("spec") or {}).get("replicas", 1))
        path = collection_path("StatefulSet", self.namespace) + f"/{self.name}/scale"
        result = self.client.patch(path, {"spec": {"replicas": nodes}}, MERGE_PATCH,
                                   {"fieldManager": FIELD_MANAGER})
        queue = self.plan.spec.k8s.queue
        notes = (f"k8s.queue {queue!r} is set: this scale bypasses Kueue's admission and quota",
                 ) if queue else ()
        return ScaleChange(before, int((result.get("spec") or {}).get("replicas", nodes)),
                           notes=notes)

    def delete(self, volumes: bool = False) -> Deleted:
        """Delete every object labelled with this job, kind by kind (the claim with `volumes`)."""
        result = Deleted()
        for kind in DELETE_ORDER:
            try:
                items = self.client.list(collection_path(kind, self.namespace), self.selector)
            except NotFound:  # the API group is not served here: nothing of that kind exists
                continue
            for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
                name = str(item["metadata"]["name"])
                if kind == "PersistentVolumeClaim" and not volumes:
                    result.kept.append(display_name(kind, name))
                    continue
                try:
                    self.client.delete(collection_path(kind, self.namespace) + f"/{name}",
                                       {"propagationPolicy": "Background"})
                except NotFound:  # deleted meanwhile
                    continue
                result.removed.append(display_name(kind, name))
        return result

    # ---- logs --------------------------------------------------------------------------------

    def log_sources(self, nodes: Sequence[str] = ()) -> list[tuple[str, str, str]]:
        """(prefix, pod, container) to read: the named nodes (N, node-N, <name>-N, rdzv) or all."""
        if not nodes:
            rows = self.status()
            return ([(f"node-{r.index}", r.name, NODE_COMPONENT) for r in rows.nodes]
                    + [(STORE_COMPONENT, r.name, STORE_COMPONENT) for r in rows.store])
        sources: list[tuple[str, str, str]] = []
        for node in nodes:
            sources += [s for s in self._log_source(node) if s not in sources]
        return sources

    def _log_source(self, node: str) -> list[tuple[str, str, str]]:
        if node in (STORE_COMPONENT, "store"):
            store = self.status().store
            if not store:
                raise UsageError(f"job {self.name} has no rendezvous store pod in {self.where}")
            return [(STORE_COMPONENT, r.name, STORE_COMPONENT) for r in store]
        index = node.removeprefix(f"{self.name}-").removeprefix("node-")
        if not index.isdigit() or int(index) >= self.plan.spec.nodes.max:
            raise UsageError(f"unknown node {node!r}: expected 0 to {self.plan.spec.nodes.max - 1} "
                             f"(or node-N, {self.name}-N, rdzv)")
        return [(f"node-{int(index)}", f"{self.name}-{int(index)}", NODE_COMPONENT)]

    def logs(self, nodes: Sequence[str] = (), follow: bool = False, tail: int | None = None,
             previous: bool = False) -> Iterator[str]:
        """Log lines prefixed `node-N | `; with `follow`, streams until every pod's log ends."""
        sources = self.log_sources(nodes)
        if not sources:
            raise JobNotFound(f"job {self.name} has no pods in {self.where} (kdist status)")
        if not follow:
            for prefix, pod, container in sources:
                yield from self._read_log(prefix, pod, container, tail, previous, strict=bool(nodes))
            return
        yield from _merge([self._stream_log(*s, tail, previous) for s in sources])

    def _log_query(self, container: str, tail: int | None, previous: bool) -> dict[str, str]:
        query = {"container": container}
        if tail is not None:
            query["tailLines"] = str(tail)
        if previous:
            query["previous"] = "true"
        return query

    def _log_path(self, pod: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log"

    def _read_log(self, prefix: str, pod: str, container: str, tail: int | None, previous: bool,
                  strict: bool) -> Iterator[str]:
        try:
            text = self.client.get_text(self._log_path(pod), self._log_query(container, tail, previous))
        except NotFound:
            if strict:
                raise JobNotFound(f"pod {pod} does not exist in {self.where} (kdist status)") from None
            return
        except ApiError as e:
            if strict or e.code != 400:
                raise KdistError(f"no logs from {pod} yet: {e.status_message or e}") from None
            yield f"{prefix} | kdist: no logs yet: {e.status_message}"
            return
        for line in text.splitlines():
            yield f"{prefix} | {line}"

    def _stream_log(self, prefix: str, pod: str, container: str, tail: int | None,
                    previous: bool) -> Iterator[str]:
        """Follow one pod's log; after a dropped connection, resume from the last line's time."""
        query = {**self._log_query(container, tail, previous), "follow": "true", "timestamps": "true"}
        last, failures = "", 0
        while True:
            try:
                for line in self.client.stream(self._log_path(pod), query):
                    stamp, _, text = line.partition(" ")
                    if last and _stamp_key(stamp) <= _stamp_key(last):
                        continue  # sent again after a resume
                    last, failures = stamp, 0
                    yield f"{prefix} | {text}"
                return
            except ClusterUnreachable as e:
                failures += 1
                if failures > WATCH_RETRIES:
                    yield f"{prefix} | kdist: log stream lost: {e}"
                    return
                yield f"{prefix} | kdist: log stream dropped; resuming"
                time.sleep(WAIT_INTERVAL)
                if last:
                    query = {k: v for k, v in query.items() if k != "tailLines"}
                    query["sinceTime"] = last[:19] + "Z"
            except ApiError as e:
                yield f"{prefix} | kdist: no logs: {e.status_message or e}"
                return


def _stamp_key(stamp: str) -> tuple[str, str]:
    """RFC3339Nano as the kubelet writes it (trailing zeros trimmed) -> comparable."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")


def storage_problem(classes: list[dict[str, Any]], wanted: str, access_mode: str) -> str:
    """Why no StorageClass in `classes` can serve a claim for `wanted` ("": the default class)."""
    names = sorted(str((c.get("metadata") or {}).get("name", "")) for c in classes)
    listing = ", ".join(names) or "none"
    by_name = {str((c.get("metadata") or {}).get("name", "")): c for c in classes}
    if wanted and wanted not in by_name:
        return (f"checkpoint.storage_class {wanted!r} is not a StorageClass of this cluster "
                f"(classes: {listing}){did_you_mean(wanted, names)}")
    if not wanted:
        defaults = [n for n, c in by_name.items()
                    if ((c.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CLASS) == "true"]
        if not defaults:
            return (f"the cluster has no default StorageClass (classes: {listing}); set "
                    "checkpoint.storage_class")
        wanted = defaults[0]
    provisioner = str(by_name[wanted].get("provisioner", ""))
    if access_mode == "ReadWriteMany" and provisioner in RWO_ONLY:
        rwx = [n for n in names if str(by_name[n].get("provisioner", "")) not in RWO_ONLY]
        return (f"StorageClass {wanted!r} ({provisioner}) serves only ReadWriteOnce volumes; set "
                "checkpoint.storage_class to a class with ReadWriteMany (NFS, EFS, Filestore, "
                f"Azure Files{': maybe ' + ', '.join(rwx) if rwx else '; this cluster has none'}) "
                "or checkpoint.access_mode: ReadWriteOnce when every node runs on one host")
    return ""


def _event_time(ev: dict[str, Any]) -> str:
    return str(ev.get("lastTimestamp") or ev.get("eventTime") or
               (ev.get("metadata") or {}).get("creationTimestamp") or "")


_DONE = object()


def _merge(streams: list[Iterator[str]]) -> Iterator[str]:
    """Interleave line iterators as lines arrive (one daemon thread per stream)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    lines: queue.Queue[object] = queue.Queue()

    def pump(stream: Iterator[str]) -> None:
        try:
            for line in stream:
                lines.put(line)
        except KdistError as e:
            lines.put(f"kdist: {e}")
        finally:
            lines.put(_DONE)

    for stream in streams:
        threading.Thread(target=pump, args=(stream,), daemon=True).start()
    running = len(streams)
    while running:
        item = lines.get()
        if item is _DONE:
            running -= 1
        else:
            yield str(item)
