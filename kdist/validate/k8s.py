"""Kubernetes manifests: objects of a file, strict schema checks, names and labels."""

from __future__ import annotations

import re
from typing import Any

from kdist.validate.objects import Bundle, Obj, Sink, dig, mapping, pod_template, string
from kdist.validate.schema import SchemaSet
from kdist.validate.yamldoc import Doc, Path

# API groups served by Kubernetes itself: a missing schema there is an error, not a CRD
CORE_GROUP = re.compile(r"^([a-z0-9]+|[a-z0-9.-]*\.k8s\.io)$")


def bundle_of(docs: list[Doc], sink: Sink) -> Bundle:
    """The objects of one file (`kind: List` items expanded); non-objects become findings."""
    bundle = Bundle()
    for doc in docs:
        data = doc.data
        if isinstance(data, dict) and str(data.get("kind", "")).endswith("List") \
                and isinstance(data.get("items"), list):
            candidates: list[tuple[Path, Any]] = [(("items", i), x)
                                                  for i, x in enumerate(data["items"])]
        else:
            candidates = [((), data)]
        for root, value in candidates:
            obj = _as_object(doc, root, value, sink)
            if obj is not None:
                bundle.objects.append(obj)
                pod = pod_template(obj)
                if pod is not None:
                    bundle.pods.append(pod)
    return bundle


def _as_object(doc: Doc, root: Path, value: Any, sink: Sink) -> Obj | None:
    if not isinstance(value, dict):
        sink.add("k8s-object", doc, root, "expected a Kubernetes object (a mapping with "
                 f"apiVersion and kind), got {what(value)}")
        return None
    missing = [k for k in ("apiVersion", "kind") if not isinstance(value.get(k), str)
               or not value.get(k)]
    if missing:
        neither = " (nor a kdist spec with entrypoint, nor a Compose file with services)" \
            if len(missing) == 2 else ""
        sink.add("k8s-object", doc, root, f"missing {' and '.join(missing)}: not a Kubernetes "
                 f"object{neither}", obj=string(value.get("kind")))
        return None
    obj = Obj(doc, root, value)
    if not obj.name and not string(dig(value, "metadata", "generateName")):
        obj.report(sink, "k8s-object", ("metadata",), "missing metadata.name")
    return obj


def what(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, (int, float)) else type(value).__name__


def check_schemas(bundle: Bundle, schemas: SchemaSet, sink: Sink) -> None:
    for obj in bundle.objects:
        check = schemas.for_kind(obj.api_version, obj.kind)
        if check is None:
            group = obj.api_version.rpartition("/")[0]
            if CORE_GROUP.match(group) or not group:
                obj.report(sink, "k8s-schema", ("apiVersion",), f"Kubernetes {schemas.version} "
                           f"has no {obj.kind} in {obj.api_version}",
                           hint="Check kind and apiVersion (`kubectl api-resources`); removed "
                           "APIs need migrating.")
            else:
                obj.report(sink, "k8s-unknown-kind", ("kind",),
                           f"{obj.api_version} {obj.kind} is not a Kubernetes {schemas.version} "
                           "built-in kind; not schema-checked")
            continue
        errors: list[tuple[Path, str]] = []
        check(obj.data, (), errors)
        for path, message in errors:
            obj.report(sink, "k8s-schema", path, message)


def check_duplicates(bundle: Bundle, sink: Sink) -> None:
    seen: dict[tuple[str, str, str, str], Obj] = {}
    for obj in bundle.objects:
        if not obj.name:
            continue
        key = (obj.api_version.rpartition("/")[0], obj.kind, obj.namespace, obj.name)
        first = seen.setdefault(key, obj)
        if first is not obj:
            obj.report(sink, "k8s-duplicate-object", ("metadata", "name"),
                       f"{obj.ref} is defined twice (first at line {first.doc.pos(first.root)[0]})")


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# pods of a StatefulSet get the label controller-revision-hash=<name>-<10 chars>: <= 63
STATEFULSET_MAX = 52


def check_metadata(bundle: Bundle, sink: Sink) -> None:
    for obj in bundle.objects:
        _check_name(obj, sink)
        _check_labels(obj, ("metadata", "labels"), dig(obj.data, "metadata", "labels"), sink)
    for pod in bundle.pods:
        if pod.obj.kind != "Pod":
            path = (*pod.path[:-1], "metadata", "labels")
            _check_labels(pod.obj, path, dig(pod.obj.data, *[str(p) for p in path]), sink)


def _check_name(obj: Obj, sink: Sink) -> None:
    name = obj.name
    if not name:
        return
    where = ("metadata", "name")
    if obj.kind == "Service" and (len(name) > 63 or not DNS_1035.match(name)):
        obj.report(sink, "k8s-metadata", where, f"Service name {name!r} must be a DNS-1035 "
                   "label: at most 63 lowercase letters, digits and '-', starting with a letter")
    elif len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        obj.report(sink, "k8s-metadata", where, f"name {name!r} must be a DNS-1123 subdomain "
                   "(lowercase letters, digits, '-' and '.')")
    elif obj.kind == "StatefulSet" and len(name) > STATEFULSET_MAX:
        obj.report(sink, "k8s-metadata", where, f"StatefulSet name {name!r} has {len(name)} "
                   f"characters; pods fail to start above {STATEFULSET_MAX} (their "
                   "controller-revision-hash label must fit in 63)")


def _check_labels(obj: Obj, path: Path, labels: Any, sink: Sink) -> None:
    for key, value in mapping(labels).items():
        prefix, _, name = key.rpartition("/")
        bad_key = (len(name) > 63 or not LABEL_NAME.match(name)
                   or (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))))
        text = value if isinstance(value, str) else ""
        bad_value = isinstance(value, str) and text and (len(text) > 63 or
                                                         not LABEL_NAME.match(text))
        if bad_key:
            obj.report(sink, "k8s-metadata", (*path, key), f"label key {key!r} is not a valid "
                       "[prefix/]name (name: at most 63 alphanumerics, '-', '_' or '.')")
        elif bad_value:
            obj.report(sink, "k8s-metadata", (*path, key), f"label value {text!r} must be at most "
                       "63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric")
