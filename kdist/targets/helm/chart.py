"""The Helm chart's `values.schema.json` and `values.yaml` (charts/kdist), generated from the
loader's rules (kdist.spec.load.RULES, through kdist.spec.schema) and from the values kdist writes
(kdist.targets.helm.render.chart_values), so the chart checks what the loader checks. `make golden`
writes both files; tests/test_chart.py fails when they differ from a fresh generation.

Keys, their order and their camelCase names come from `chart_values`; each chart key takes the
rule of the spec field of the same snake_case name (the `k8s` section's fields sit at the top
level of the values). Each key's text, the schema's "description" and the comment above the key
in values.yaml, is the spec field's (kdist.spec.load.DESCRIPTIONS) unless CHART_DOCS says more.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

from kdist.spec import load
from kdist.spec.model import Checkpoint, JobSpec, K8sOptions, Nodes, Rendezvous, Resources
from kdist.spec.schema import job_schema
from kdist.targets.helm.render import FLATTENED, NOT_IN_CHART, camel, chart_values
from kdist.yamlio import dump

# Spec sections the chart does not read (helm.chart_values leaves them out) and the one whose
# fields the values hold at the top level.

# The values.yaml defaults: kdist's defaults, with the required keys as `kdist init` writes them.
EXAMPLE = JobSpec(name="my-job", image="kdist-trainer:0.1.0", entrypoint="trainers/train.py",
                  nodes=Nodes(min=2, max=3, count=3))

HEADER = (
    "Values for charts/kdist: one elastic PyTorch job. These mirror kdist.yaml (camelCase keys) "
    "and carry kdist's defaults. `kdist render --target helm-values -f kdist.yaml` writes the "
    "values for a spec; `helm template` then renders exactly what `kdist render --target k8s` "
    "does. Object names come from `name`, never from the Helm release name.",
    "Generated from kdist/targets/helm/chart.py by `make golden`; do not edit by hand.",
)

# Texts for the chart that differ from the spec's own (kdist.spec.load.DESCRIPTIONS): where
# Helm adds something (the `helm test` pod, the release namespace).
CHART_DOCS: dict[str, str] = {
    "image": "Container image for the nodes, the standalone store and the `helm test` pod "
             "(needs python3 and torch).",
    "rendezvous.waitTimeout": "Seconds a node (and the `helm test` pod) waits for the store's "
                              "DNS name and port.",
    "namespace": "Namespace written into every object; \"\" leaves it out, so objects go to the "
                 "release namespace (`helm install --namespace`).",
    "secretEnv": "Names of environment variables every node reads from the Secret <name>-env "
                 "(secretKeyRef); the chart does not make it: create it first, e.g. `kubectl "
                 "create secret generic <name>-env --from-literal=HF_TOKEN=...`.",
}
SECTIONS = {"nodes": Nodes, "resources": Resources, "rendezvous": Rendezvous,
            "checkpoint": Checkpoint}

# Helm checks values with Go's regexp, which has no lookahead: the label key's "prefix of at most
# 253 characters" (kdist/spec/load.py LABEL_KEY_RE) becomes a second pattern beside the rest (a key
# holds one '/' at most, so the two together accept what the lookahead does).
LOOKAHEAD = "(?=[^/]{1,253}/)"
PREFIX_LENGTH = "^([^/]{1,253}/)?[^/]*$"
_JSON_TYPE = {str: "string", int: "integer", dict: "object", list: "array", bool: "boolean"}


def _snake(key: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), key)


FIELD_NAMES = {name for rules in load.RULES.values() for name in rules}


def description(path: str) -> str:
    """The text of chart key `path` (`procsPerNode`, `nodes.min`): CHART_DOCS, else the spec
    field's (kdist.spec.load.DESCRIPTIONS) with the keys it names in the chart's spelling."""
    if path in CHART_DOCS:
        return CHART_DOCS[path]
    head, _, sub = path.partition(".")
    if sub:
        cls, name = SECTIONS[head], _snake(sub)
    else:
        name = _snake(head)
        cls = K8sOptions if name in load.RULES[K8sOptions] else JobSpec
    text = load.DESCRIPTIONS.get(cls, {}).get(name)
    if text is None:
        raise ValueError(f"chart key {path} has no description: add {cls.__name__}.{name} to "
                         "kdist/spec/load.py DESCRIPTIONS")
    return re.sub(r"\b[a-z]+(?:_[a-z]+)+\b",
                  lambda m: camel(m[0]) if m[0] in FIELD_NAMES else m[0], text)


def _plain(node: Any) -> Any:
    """A loader schema as the values hold it: no defaults (values.yaml has them), and scalars
    the loader reads as text (args, env values, label values) are strings, as kdist writes them."""
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _plain(sub) for name, sub in value.items()}
        elif key == "type" and isinstance(value, list):
            out[key] = "string"
        elif key == "pattern":
            out |= _go_pattern(value)
        elif key != "default":
            out[key] = _plain(value)
    return out


def _go_pattern(pattern: str) -> dict[str, Any]:
    """A loader pattern as Go's regexp reads it (ValueError for one it cannot read)."""
    if LOOKAHEAD in pattern:
        return {"pattern": pattern.replace(LOOKAHEAD, ""), "allOf": [{"pattern": PREFIX_LENGTH}]}
    if re.search(r"\(\?<?[=!]", pattern):
        raise ValueError(f"Go's regexp has no lookaround: {pattern}")
    return {"pattern": pattern}


def _one_form(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    """Of the spellings kdist.yaml accepts (`oneOf`), the one kdist writes into the values:
    quantities as strings, nodes as the full {min, max, count}."""
    if "oneOf" not in schema:
        return schema
    forms = [s for s in schema["oneOf"] if s.get("type") == _JSON_TYPE[type(value)]]
    if len(forms) != 1:
        raise ValueError(f"no single form of {schema['oneOf']} holds {value!r}")
    form: dict[str, Any] = forms[0]
    if form["type"] == "object":
        form = {**form, "required": list(form["properties"])}
    return form


def _rule_schemas(props: dict[str, Any], values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The loader's schema of each chart key in `values` (a ValueError names a key without a
    rule, or a rule the chart does not carry)."""
    if not prefix:  # the top level: the k8s section's fields are top-level values
        props = {**{k: v for k, v in props.items() if k not in (FLATTENED, *NOT_IN_CHART)},
                 **props[FLATTENED]["properties"]}
    unknown = [key for key in values if _snake(key) not in props]
    if unknown:
        raise ValueError(f"chart key {prefix}{unknown[0]} has no rule in kdist/spec/load.py RULES")
    missing = [name for name in props if name not in {_snake(key) for key in values}]
    if missing:
        raise ValueError(f"{prefix.rstrip('.') or 'the top level'}: the loader's "
                         f"{', '.join(missing)} not in the chart's values "
                         "(kdist/targets/helm/render.py chart_values)")
    return {key: props[_snake(key)] for key in values}


def _property(rule: dict[str, Any], value: Any, path: str) -> dict[str, Any]:
    """The schema of one chart key, from its loader rule and its default value."""
    schema = _one_form(_plain(rule), value)
    if isinstance(value, dict) and "properties" in schema:
        schema = {**schema, **_object(schema["properties"], value, f"{path}.")}
    if value == "":  # "" means "not set" in the values (kdist leaves the field out)
        schema = {"anyOf": [{"const": ""}, schema]}
    return {"description": description(path),
            **{k: v for k, v in schema.items() if k != "description"}}


def _object(props: dict[str, Any], values: dict[str, Any], path: str = "") -> dict[str, Any]:
    rules = _rule_schemas(props, values, path)
    properties = {key: _property(rules[key], values[key], path + key) for key in values}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def values_schema() -> dict[str, Any]:
    """values.schema.json: the loader's checks of every key the chart reads, in Helm's terms."""
    spec = job_schema()
    body = _object(spec["properties"], chart_values(EXAMPLE))
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": "kdist chart values",
            "description": "Values for charts/kdist, generated from kdist's spec rules by "
            "kdist/targets/helm/chart.py. Cross-field rules are checked by templates/validate.yaml.",
            **body, "required": [camel(k) for k in load.REQUIRED[JobSpec]]}


def values_schema_text() -> str:
    return json.dumps(values_schema(), indent=2, ensure_ascii=False) + "\n"


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, 98 - len(indent), break_on_hyphens=False)]


def _entry(key: str, value: Any, indent: str = "") -> list[str]:
    """`key: value` in YAML as kdist dumps it, each line indented."""
    return [indent + line for line in dump({key: value}).splitlines()]


def values_yaml() -> str:
    """values.yaml: kdist's defaults in the chart's keys, each with its DOCS text above it."""
    lines = [line for text in HEADER for line in (*_comment(text), "#")][:-1]
    section = True
    for key, value in chart_values(EXAMPLE).items():
        nested = isinstance(value, dict) and bool(value)
        if nested or section:
            lines.append("")
        section = nested
        lines += _comment(description(key))
        if not nested:
            lines += _entry(key, value)
            continue
        lines.append(f"{key}:")
        for sub, sub_value in value.items():
            lines += _comment(description(f"{key}.{sub}"), "  ") + _entry(sub, sub_value, "  ")
    return "\n".join(lines) + "\n"
