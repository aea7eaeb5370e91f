"""JSON Schema of kdist.yaml, generated from the loader's own rules (kdist.spec.load.RULES), so the
two cannot drift: every key, type, pattern and bound comes from the rule that checks it."""

from __future__ import annotations

import dataclasses
from typing import Any

from kdist.spec import load
from kdist.spec import model as spec

SCHEMA_ID = "https://kdist.dev/schemas/kdist.schema.json"


def _resolve(node: Any) -> Any:
    """Rule callables -> their schemas; {"section": cls} -> the section's object schema."""
    if callable(node) and hasattr(node, "json_schema"):
        return _resolve(node.json_schema)
    if isinstance(node, dict):
        if set(node) == {"section"}:
            return section_schema(node["section"])
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    value = field.default
    if value is dataclasses.MISSING or dataclasses.is_dataclass(value) or value in ((), ""):
        return dataclasses.MISSING
    return value


def section_schema(cls: type) -> dict[str, Any]:
    properties = {}
    for name, rule in load.RULES[cls].items():
        prop = {"description": load.DESCRIPTIONS[cls][name], **_resolve(rule)}
        default = _default(cls, name)
        if default is not dataclasses.MISSING and "section" not in getattr(rule, "json_schema", {}):
            prop = {**prop, "default": default}
        properties[name] = prop
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": False}
    if cls in load.REQUIRED:
        out["required"] = list(load.REQUIRED[cls])
    return out


def job_schema() -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "kdist.yaml", "description": "One elastic PyTorch job for kdist "
            "(kdist run | up | apply). Cross-field rules are checked by kdist itself.",
            **section_schema(spec.JobSpec)}
