"""Strict Kubernetes OpenAPI validation with the JSON schemas shipped in kubernetes-validate.

kubernetes-validate re-reads `_definitions.json` (1.3 MB) and builds a new jsonschema validator
for every object. Here each version's definitions are read once, each schema is compiled once
into small closures (the schemas use only type, properties, additionalProperties, items, required,
enum, oneOf and $ref), and every compiled validator is cached. A schema that uses any other
keyword falls back to jsonschema's Draft 2020-12 validator with one registry per version, so the
verdict is always jsonschema's (tests/test_validate.py compares both on every example and case).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

from kdist.errors import UsageError
from kdist.validate.yamldoc import Path

Error = tuple[Path, str]  # (path of the offending value or key, message)
Check = Callable[[Any, Path, list[Error]], None]

_ANNOTATIONS = {"description", "format", "default", "$schema", "$id", "example", "examples",
                "title", "deprecated"}
_HANDLED = {"type", "properties", "additionalProperties", "items", "required", "enum", "oneOf",
            "$ref"}
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "a boolean", "object": "a mapping", "array": "a list", "null": "null"}


class Unsupported(Exception):
    """The schema uses a keyword the fast compiler does not implement."""


def _is_type(value: Any, name: str) -> bool:
    """JSON Schema type semantics as jsonschema implements them (bool is not a number)."""
    if name == "string":
        return isinstance(value, str)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float))
    return True


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    return "a mapping" if isinstance(value, dict) else "a list"


def _enum_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


class Compiler:
    """Compiles schema nodes into checks; `$ref`s into `#/$defs/NAME` are compiled lazily, once."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.compiled: dict[str, Check] = {}

    def ref(self, ref: str) -> Check:
        prefix, _, name = ref.partition("#/$defs/")
        if prefix not in ("", "/api/_definitions.json") or name not in self.defs:
            raise Unsupported(f"$ref {ref}")
        if name not in self.compiled:
            def late(value: Any, path: Path, errors: list[Error]) -> None:
                self.compiled[name](value, path, errors)

            self.compiled[name] = late  # recursion (JSONSchemaProps) binds late
            try:
                self.compiled[name] = self.compile(self.defs[name])
            except Unsupported:
                del self.compiled[name]
                raise
        return self.compiled[name]

    def compile(self, schema: Any) -> Check:
        if not isinstance(schema, dict):
            raise Unsupported("boolean schema")
        unknown = set(schema) - _HANDLED - _ANNOTATIONS
        if any(not k.startswith("x-kubernetes-") for k in unknown):
            raise Unsupported(", ".join(sorted(unknown)))
        checks: list[Check] = []
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))
        if "type" in schema:
            checks.append(_type_check(schema["type"]))
        if "enum" in schema:
            checks.append(_enum_check(schema["enum"]))
        if "oneOf" in schema:
            checks.append(self._one_of(schema["oneOf"]))
        if "items" in schema:
            checks.append(_items_check(self.compile(schema["items"])))
        if {"properties", "additionalProperties", "required"} & set(schema):
            checks.append(self._object(schema))
        if len(checks) == 1:
            return checks[0]

        def all_of(value: Any, path: Path, errors: list[Error]) -> None:
            for check in checks:
                check(value, path, errors)

        return all_of

    def _object(self, schema: dict[str, Any]) -> Check:
        props = {k: self.compile(v) for k, v in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties", True)
        extra_check = None if isinstance(extra, bool) else self.compile(extra)
        closed = extra is False
        required = list(schema.get("required", []))
        names = list(props)

        def check(value: Any, path: Path, errors: list[Error]) -> None:
            if not isinstance(value, dict):
                return
            for key in required:
                if key not in value:
                    errors.append((path, f"missing required field {key!r}"))
            for key, item in value.items():
                sub = props.get(key)
                if sub is not None:
                    sub(item, (*path, key), errors)
                elif closed:
                    errors.append(((*path, key), f"unknown field {key!r}{_did_you_mean(key, names)}"))
                elif extra_check is not None:
                    extra_check(item, (*path, key), errors)

        return check

    def _one_of(self, options: list[Any]) -> Check:
        subs = [self.compile(o) for o in options]
        kinds = " or ".join(_TYPE_WORDS.get(t, t) for o in options for t in _types(o) if t != "null")

        def check(value: Any, path: Path, errors: list[Error]) -> None:
            matches = 0
            for sub in subs:
                trial: list[Error] = []
                sub(value, path, trial)
                matches += not trial
            if matches != 1:
                why = "matches more than one alternative" if matches else f"expected {kinds}"
                errors.append((path, f"{why}, got {describe(value)}"))

        return check


def _types(schema: Any) -> list[str]:
    t = schema.get("type", []) if isinstance(schema, dict) else []
    return [t] if isinstance(t, str) else list(t)


_PY_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool,
                               "null": type(None)}


def _type_check(types: Any) -> Check:
    names = [types] if isinstance(types, str) else list(types)
    words = " or ".join(_TYPE_WORDS.get(t, t) for t in names if t != "null") or "null"
    if all(t in _PY_TYPES for t in names):  # the common case: one isinstance call
        exact = tuple(_PY_TYPES[t] for t in names)

        def fast(value: Any, path: Path, errors: list[Error]) -> None:
            if not isinstance(value, exact):
                errors.append((path, f"expected {words}, got {describe(value)}"))

        return fast

    def check(value: Any, path: Path, errors: list[Error]) -> None:
        if not any(_is_type(value, t) for t in names):
            errors.append((path, f"expected {words}, got {describe(value)}"))

    return check


def _enum_check(options: list[Any]) -> Check:
    shown = ", ".join(str(o) for o in options if o is not None)

    def check(value: Any, path: Path, errors: list[Error]) -> None:
        if not any(_enum_equal(value, o) for o in options):
            hint = _did_you_mean(value, [str(o) for o in options]) if isinstance(value, str) else ""
            errors.append((path, f"must be one of {shown}; got {describe(value)}{hint}"))

    return check


def _items_check(sub: Check) -> Check:
    def check(value: Any, path: Path, errors: list[Error]) -> None:
        if isinstance(value, list):
            for i, item in enumerate(value):
                sub(item, (*path, i), errors)

    return check


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- schema sets per Kubernetes version -------------------------------------------------------


def _schema_root() -> FsPath:
    import importlib.util

    # find_spec locates the package without importing it (its __init__ imports jsonschema)
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("kdist validate needs the kubernetes-validate package for its "
                         "schemas: pip install 'kdist[validate]'")
    return FsPath(next(iter(spec.submodule_search_locations))) / "kubernetes-json-schema"


@functools.cache
def supported_versions() -> tuple[str, ...]:
    """"1.25", "1.26", ... as shipped by the installed kubernetes-validate."""
    found = set()
    for entry in _schema_root().iterdir():
        m = re.fullmatch(r"v(\d+)\.(\d+)\.\d+-local-strict", entry.name)
        if m:
            found.add((int(m[1]), int(m[2])))
    return tuple(f"{a}.{b}" for a, b in sorted(found))


def resolve_version(requested: str) -> str:
    """"v1.31.2" / "1.31" -> "1.31"; "" -> the newest; unsupported -> UsageError."""
    versions = supported_versions()
    if not versions:
        raise UsageError("the installed kubernetes-validate ships no schemas")
    if not requested:
        return versions[-1]
    m = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?", requested.strip())
    if not m or f"{int(m[1])}.{int(m[2])}" not in versions:
        raise UsageError(f"unsupported Kubernetes version {requested!r}; supported: "
                         f"{versions[0]} to {versions[-1]}")
    return f"{int(m[1])}.{int(m[2])}"


class SchemaSet:
    """The strict schemas of one Kubernetes version; definitions are read on first use."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.dir = _schema_root() / f"v{version}.0-local-strict"
        self._compiler: Compiler | None = None
        self._defs_json: dict[str, Any] | None = None
        self._kinds: dict[tuple[str, str], Check | None] = {}
        self._registry: Any = None
        self._lock = threading.Lock()

    @property
    def defs_json(self) -> dict[str, Any]:
        if self._defs_json is None:
            with open(self.dir / "_definitions.json", encoding="utf-8") as f:
                self._defs_json = json.load(f)
        return self._defs_json

    @property
    def compiler(self) -> Compiler:
        if self._compiler is None:
            self._compiler = Compiler(self.defs_json.get("$defs", {}))
        return self._compiler

    def for_kind(self, api_version: str, kind: str) -> Check | None:
        """The compiled check for apiVersion/kind, or None when this version has no schema."""
        key = (api_version, kind)
        with self._lock:  # compiling binds $refs late: never let another thread see half of it
            if key not in self._kinds:
                self._kinds[key] = self._load(api_version, kind)
            return self._kinds[key]

    def _load(self, api_version: str, kind: str) -> Check | None:
        flat = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        file = self.dir / f"{kind.lower()}-{flat}.json"
        if not re.fullmatch(r"[a-z0-9.-]+", file.name[:-5]) or not file.is_file():
            return None
        with open(file, encoding="utf-8") as f:
            schema = json.load(f)
        group, _, version = api_version.rpartition("/")
        gvks = schema.get("x-kubernetes-group-version-kind", [])
        if not any(g.get("group") == group and g.get("version") == version
                   and g.get("kind") == kind for g in gvks):
            return None  # e.g. kind Deployment of a custom group "apps.example.com/v1"
        try:
            return self.compiler.compile(schema)
        except Unsupported:
            return self._jsonschema_check(schema)

    def _jsonschema_check(self, schema: dict[str, Any]) -> Check:
        from referencing import Registry, Resource

        jsonschema: Any = importlib.import_module("jsonschema")  # untyped; imported only here

        if self._registry is None:
            self._registry = Resource.from_contents(self.defs_json) @ Registry()
        validator = jsonschema.Draft202012Validator(
            schema, registry=Resource.from_contents(schema) @ self._registry)

        def check(value: Any, path: Path, errors: list[Error]) -> None:
            for e in validator.iter_errors(value):
                errors.append(((*path, *e.absolute_path), e.message))

        return check


@functools.cache
def schema_set(version: str) -> SchemaSet:
    return SchemaSet(version)
