"""The shared model the checks work on: safe accessors, Kubernetes objects, pod templates, a sink.

Inputs are untrusted: any field may have any type. Every accessor here returns a safe default
instead of raising, so a schema error never turns into a traceback in a later check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdist.validate.model import Finding
from kdist.validate.rules import RULES
from kdist.validate.yamldoc import Doc, Path, path_text

Implied = dict[str, Callable[[str], bool]]  # label key -> does some pod carry this value?


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def integer(value: Any, default: int | None = None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def labels_of(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in mapping(value).items()}


class Sink:
    """Collects findings; drops disabled rules; knows each rule's severity and default hint."""

    def __init__(self, disabled: frozenset[str]) -> None:
        self.disabled = disabled
        self.findings: list[Finding] = []

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled

    def add(self, rule: str, doc: Doc, path: Path, message: str, *, obj: str = "",
            hint: str = "", script_line: int | None = None) -> None:
        """A finding at `path` of a document (its exact line when the document has one)."""
        if rule not in self.disabled:
            line, column = doc.pos(path, script_line)
            self.at(rule, doc.file, line, column, message, obj=obj, path=path_text(path),
                    hint=hint)

    def at(self, rule: str, file: str, line: int, column: int, message: str, *, obj: str = "",
           path: str = "", hint: str = "") -> None:
        if rule not in self.disabled:
            meta = RULES[rule]
            self.findings.append(Finding(rule, meta.severity, file, line, column, obj, path,
                                         message, hint or meta.hint))


@dataclass
class Obj:
    """A Kubernetes object: a document, or an item of a `kind: List` document."""

    doc: Doc
    root: Path
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return string(self.data.get("kind"))

    @property
    def api_version(self) -> str:
        return string(self.data.get("apiVersion"))

    @property
    def name(self) -> str:
        return string(dig(self.data, "metadata", "name"))

    @property
    def namespace(self) -> str:
        return string(dig(self.data, "metadata", "namespace"))

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name or '?'}"

    def same_namespace(self, other: Obj) -> bool:
        """Objects without a namespace are applied wherever `-n` says: they match any."""
        return not self.namespace or not other.namespace or self.namespace == other.namespace

    def report(self, sink: Sink, rule: str, path: Path, message: str, hint: str = "",
               script_line: int | None = None) -> None:
        sink.add(rule, self.doc, (*self.root, *path), message, obj=self.ref, hint=hint,
                 script_line=script_line)


POD_SPEC_PATHS: dict[str, Path] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


@dataclass
class PodT:
    """A pod template (or a Pod): where its spec is, its labels, how many replicas run it."""

    obj: Obj
    path: Path  # to the PodSpec, relative to the object
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]
    replicas: int | None  # None: not a fixed number (DaemonSet, Job, CronJob)
    implied: Implied = field(default_factory=dict)  # labels the controller adds to each pod

    def containers(self) -> list[tuple[Path, dict[str, Any]]]:
        """(path, container) for init, regular and ephemeral containers."""
        out = []
        for key in CONTAINER_LISTS:
            for i, c in enumerate(items(self.spec.get(key))):
                if isinstance(c, dict):
                    out.append(((*self.path, key, i), c))
        return out

    def report(self, sink: Sink, rule: str, path: Path, message: str, hint: str = "",
               script_line: int | None = None) -> None:
        self.obj.report(sink, rule, (*self.path, *path), message, hint, script_line)


def _implied_labels(obj: Obj, replicas: int | None) -> Implied:
    """Per-pod labels controllers add: StatefulSet pod name/index, Job name/completion index."""
    name = obj.name
    if obj.kind == "StatefulSet" and replicas is not None:
        prefix = f"{name}-"
        return {"statefulset.kubernetes.io/pod-name": lambda v: v.startswith(prefix)
                and v[len(prefix):].isdigit() and int(v[len(prefix):]) < replicas,
                "apps.kubernetes.io/pod-index": lambda v: v.isdigit() and int(v) < replicas}
    if obj.kind == "Job":
        implied: Implied = {"job-name": lambda v: v == name,
                            "batch.kubernetes.io/job-name": lambda v: v == name}
        if dig(obj.data, "spec", "completionMode") == "Indexed":
            count = integer(dig(obj.data, "spec", "completions"), 1) or 1
            implied["batch.kubernetes.io/job-completion-index"] = (
                lambda v: v.isdigit() and int(v) < count)
        return implied
    return {}


def pod_template(obj: Obj) -> PodT | None:
    spec_path = POD_SPEC_PATHS.get(obj.kind)
    if spec_path is None:
        return None
    spec = dig(obj.data, *[str(p) for p in spec_path])
    if not isinstance(spec, dict):
        return None
    meta = obj.data.get("metadata") if obj.kind == "Pod" else dig(
        obj.data, *[str(p) for p in spec_path[:-1]], "metadata")
    replicas: int | None = None
    if obj.kind in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"):
        replicas = integer(dig(obj.data, "spec", "replicas"), 1)
    elif obj.kind == "Pod":
        replicas = 1
    return PodT(obj, spec_path, labels_of(dig(meta, "labels")), labels_of(dig(meta, "annotations")),
                spec, replicas, _implied_labels(obj, replicas))


def _has(labels: dict[str, str], implied: Implied, key: str, value: str) -> bool:
    if key in labels:
        return labels[key] == value
    check = implied.get(key)
    return check is not None and check(value)


def selector_matches(selector: Any, labels: dict[str, str], implied: Implied | None = None
                     ) -> bool:
    """A LabelSelector ({matchLabels, matchExpressions}) against a label set. Empty matches all."""
    sel, extra = mapping(selector), implied or {}
    for key, value in labels_of(sel.get("matchLabels")).items():
        if not _has(labels, extra, key, value):
            return False
    for expr in items(sel.get("matchExpressions")):
        key, op = string(dig(expr, "key")), string(dig(expr, "operator"))
        values = [str(v) for v in items(dig(expr, "values"))]
        present = key in labels or key in extra
        matched = any(_has(labels, extra, key, v) for v in values)
        if (op == "In" and not matched) or (op == "NotIn" and matched) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def map_selector_matches(selector: dict[str, str], labels: dict[str, str],
                         implied: Implied | None = None) -> bool:
    """A Service-style selector (plain map). An empty one selects nothing here."""
    return bool(selector) and all(_has(labels, implied or {}, k, v) for k, v in selector.items())


@dataclass
class Bundle:
    """The Kubernetes objects of one file: what cross-object checks may refer to."""

    objects: list[Obj] = field(default_factory=list)
    pods: list[PodT] = field(default_factory=list)
    _kinds: dict[str, list[Obj]] = field(default_factory=dict)  # built on first use

    def of_kind(self, kind: str) -> list[Obj]:
        """Objects of a kind (index built once: large files stay linear, not quadratic)."""
        if not self._kinds:
            for o in self.objects:
                self._kinds.setdefault(o.kind, []).append(o)
        return self._kinds.get(kind, [])

    def find(self, kind: str, name: str, near: Obj) -> Obj | None:
        for o in self.of_kind(kind):
            if o.name == name and o.same_namespace(near):
                return o
        return None

    def pods_for(self, obj: Obj, selector: Any, plain: bool = False) -> list[PodT]:
        """Pod templates in obj's namespace that `selector` selects."""
        out = []
        for pod in self.pods:
            if not pod.obj.same_namespace(obj):
                continue
            ok = (map_selector_matches(labels_of(selector), pod.labels, pod.implied) if plain
                  else selector_matches(selector, pod.labels, pod.implied))
            if ok:
                out.append(pod)
        return out
