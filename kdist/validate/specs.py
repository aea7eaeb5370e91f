"""kdist.yaml inputs: load with kdist's own loader, render every target, validate the renders.

Findings on rendered objects point back at the spec field that decides them (resources.shm for
torchrun-shm, image for image-tag, ...). A top-level `validate: {disable: [rule-id, ...]}` turns
rules off for this spec.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kdist.validate.model import Finding
from kdist.validate.objects import Sink, items, mapping
from kdist.validate.rules import NOT_DISABLEABLE, RULES, unknown_rule_message
from kdist.validate.yamldoc import Doc, YamlProblem, parse

# which spec field decides what a rule checks on the rendered objects
RULE_FIELDS = {
    "torchrun-shm": "resources.shm", "torchrun-gpus": "procs_per_node", "image-tag": "image",
    "torchrun-nnodes": "nodes", "pdb-min-available": "nodes", "container-resources": "resources",
    "torchrun-max-restarts": "max_restarts", "torchrun-rdzv-conf": "rendezvous",
    "rdzv-endpoint": "rendezvous", "pss-run-as-user": "run_as_user", "compose-user": "run_as_user",
    "pss-run-as-non-root": "run_as_user", "k8s-metadata": "name", "env-var-secret": "env",
    "compose-gpu-devices": "resources.gpu", "torchrun-elastic-env": "env",
}


@dataclasses.dataclass
class SpecUnit:
    """A loaded spec: its rendered documents and the disable list it carries."""

    k8s_docs: list[Doc]
    compose_doc: Doc
    compose_text: str
    disabled: frozenset[str]


def _spec_doc(text: str, file: str) -> Doc | None:
    try:
        docs = parse(text, file)
    except YamlProblem:
        return None  # load_text reports the syntax error itself
    return docs[0] if docs and isinstance(docs[0].data, dict) else None


def _not_a_mapping(text: str, file: str, sink: Sink) -> bool:
    """A spec that is a string, list or number: say so without showing it (it may be a secret
    file linked as kdist.yaml)."""
    from kdist.validate.k8s import what

    try:
        docs = parse(text, file)
    except YamlProblem:
        return False
    if not docs or isinstance(docs[0].data, dict):
        return False
    sink.add("spec", docs[0], (), "expected a mapping with name, image, entrypoint and nodes, "
             f"got {what(docs[0].data)} (not shown)")
    return True


def disabled_rules(doc: Doc | None, sink: Sink) -> frozenset[str]:
    """`validate.disable` of the spec; unknown ids are `spec` findings."""
    if doc is None or "validate" not in doc.data:
        return frozenset()
    section = doc.data["validate"]
    listed = mapping(section).get("disable", [])
    if not isinstance(section, dict) or not isinstance(listed, list) \
            or set(section) - {"disable"}:
        sink.add("spec", doc, ("validate",), "expected validate: {disable: [rule-id, ...]}")
        return frozenset()
    out = set()
    for i, rule in enumerate(items(listed)):
        if not isinstance(rule, str) or rule not in RULES:
            sink.add("spec", doc, ("validate", "disable", i), unknown_rule_message(str(rule)))
        elif rule in NOT_DISABLEABLE:
            sink.add("spec", doc, ("validate", "disable", i), f"rule {rule!r} cannot be disabled")
        else:
            out.add(rule)
    return frozenset(out)


def load(text: str, file: str, sink: Sink) -> SpecUnit | None:
    """Load and render; SpecError problems become `spec` findings."""
    from kdist.errors import KdistError, SpecError
    from kdist.plan import LaunchPlan
    from kdist.spec.load import load_text
    from kdist.targets.compose import render as compose
    from kdist.targets.k8s import render as k8s
    from kdist.yamlio import dump

    doc = _spec_doc(text, file)
    if doc is None and _not_a_mapping(text, file, sink):
        return None
    disabled = disabled_rules(doc, sink)
    try:
        job = load_text(text, file)
    except SpecError as e:
        for p in e.problems:
            where = f"{p.path}: " if p.path else ""
            sink.at("spec", file, p.line, p.column, where + p.message, path=p.path)
        return None
    try:
        plan = LaunchPlan(job)
        rendered = k8s.render(plan)
        compose_data = compose.render(plan)
    except KdistError as e:  # a spec the loader accepts but a renderer refuses
        sink.at("spec", file, 1, 1, f"cannot render: {e}")
        return None
    k8s_docs = [Doc(file, i, d, None) for i, d in enumerate(rendered)]
    return SpecUnit(k8s_docs, Doc(file, 0, compose_data, None), dump(compose_data), disabled)


def relocate(findings: list[Finding], text: str, file: str, target: str) -> list[Finding]:
    """Point findings on rendered objects at the spec field that decides them."""
    doc = _spec_doc(text, file)
    out = []
    for f in findings:
        if f.file != file or f.line:
            out.append(f)
            continue
        field = RULE_FIELDS.get(f.rule, "")
        line, column = _field_pos(doc, field)
        obj = f"{f.object} (rendered {target})" if f.object else f"(rendered {target})"
        out.append(dataclasses.replace(f, line=line, column=column, object=obj))
    return out


def _field_pos(doc: Doc | None, field: str) -> tuple[int, int]:
    if doc is None:
        return (1, 1)
    path: list[Any] = []
    node: Any = doc.data
    for part in field.split(".") if field else []:
        if not isinstance(node, dict) or part not in node:
            break
        path.append(part)
        node = node[part]
    return doc.pos(tuple(path)) if path else doc.pos(())
