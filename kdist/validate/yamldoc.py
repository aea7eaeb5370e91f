"""YAML documents with positions: libyaml (C) builds the node tree, we convert it to plain data.

Kubernetes reads YAML through sigs.k8s.io/yaml (YAML -> JSON), so values are what JSON would hold:
timestamps stay strings, mapping keys become strings. Node trees are kept so a finding can point
at the exact line of a field without paying for positions on clean files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

Path = tuple[str | int, ...]
# budgets per file; each ends in an input-budget finding instead of a hang or a MemoryError
MAX_NODES = 1_000_000  # collection items after alias expansion, all documents together
MAX_DOCUMENTS = 10_000
MAX_DEPTH = 100  # nested collections (Kubernetes objects nest about 20 deep)
MAX_SECONDS = 10.0  # reading and checking one file

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class YamlProblem(Exception):
    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.line, self.column = line, column


class OverBudget(YamlProblem):
    """A file is larger, deeper, longer or slower than a budget allows (rule input-budget)."""


def check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise OverBudget(f"checking the file took more than {MAX_SECONDS:g} s (budget)")


@dataclass
class Doc:
    """One YAML document of a file; `pos(path)` is the 1-based (line, column) of a field."""

    file: str
    index: int
    data: Any
    node: Node | None
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1 if self.node is not None else 0

    def pos(self, path: Path, script_line: int | None = None) -> tuple[int, int]:
        """Position of the key at `path` (or of the deepest part of it that exists).

        `script_line` is a 0-based line inside a literal block scalar (`|`), e.g. the
        `exec torchrun ...` line of an `sh -c` script.
        """
        node = self.node
        if node is None:
            return (0, 0)
        mark = node.start_mark
        for part in path:
            child, key_mark = _child(node, part)
            if child is None:
                break
            node, mark = child, key_mark or child.start_mark
        if script_line is not None and isinstance(node, ScalarNode) and node.style == "|":
            return (node.start_mark.line + 2 + script_line, node.start_mark.column + 1)
        return (mark.line + 1, mark.column + 1)


def _child(node: Node, part: str | int) -> tuple[Node | None, Any]:
    if isinstance(node, MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == part:
                return value, key.start_mark
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part], None
    return None, None


class _Converter:
    """Node tree -> plain data, JSON-like; records duplicate keys; keeps the file's budgets."""

    def __init__(self, deadline: float) -> None:
        self.count = 0  # items of collections converted so far, all documents (aliases count
        self.depth = 0  # every time they are used)
        self.deadline = deadline
        self.duplicates: list[tuple[str, int, int]] = []

    def convert(self, node: Any) -> Any:  # a yaml Node; Any keeps this hot path cast-free
        cls = node.__class__
        if cls is ScalarNode:
            return node.value if node.tag == _STR else _scalar(node)
        self.count += len(node.value)
        if self.count > MAX_NODES:
            raise OverBudget(f"the file expands to more than {MAX_NODES} nodes (budget; "
                              "aliases referring to aliases?)", node.start_mark.line + 1)
        if self.count & 0x3FFF < len(node.value):
            check_deadline(self.deadline)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            m = node.start_mark
            raise OverBudget(f"nested more than {MAX_DEPTH} levels deep (budget)",
                              m.line + 1, m.column + 1)
        try:
            if cls is SequenceNode:
                return [self.convert(x) for x in node.value]
            if cls is MappingNode:
                return self.mapping(node)
            raise YamlProblem(f"unsupported YAML node {cls.__name__}")  # pragma: no cover
        finally:
            self.depth -= 1

    def mapping(self, node: Any, merged: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.value:
            if key.__class__ is not ScalarNode:
                m = key.start_mark
                raise YamlProblem("complex (non-scalar) mapping keys are not supported",
                                  m.line + 1, m.column + 1)
            tag = key.tag
            if tag == _MERGE:
                return self._merge(node)
            text = key.value if tag == _STR else _key_text(_scalar(key))
            if text in out and not merged:
                m = key.start_mark
                self.duplicates.append((text, m.line + 1, m.column + 1))
            out[text] = self.convert(value)
        return out

    def _merge(self, node: Any) -> dict[str, Any]:
        """`<<: *base`: own keys may override merged ones, so duplicates are own keys only."""
        seen: set[str] = set()
        for key, _ in node.value:
            if key.tag != _MERGE and isinstance(key.value, str):
                if key.value in seen:
                    m = key.start_mark
                    self.duplicates.append((key.value, m.line + 1, m.column + 1))
                seen.add(key.value)
        try:
            _CONSTRUCTOR.flatten_mapping(node)
        except yaml.YAMLError as e:
            raise _problem(e) from None
        return self.mapping(node, merged=True)


_SCALARS: dict[str, Any] = {
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}


def _scalar(node: ScalarNode) -> Any:
    """Resolved YAML 1.1 scalars; strings, timestamps and custom tags stay the text written."""
    construct = _SCALARS.get(node.tag)
    return node.value if construct is None else construct(node)


def _key_text(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _problem(e: yaml.YAMLError) -> YamlProblem:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    if mark is None:
        return YamlProblem(f"invalid YAML: {problem}")
    return YamlProblem(f"invalid YAML: {problem}", mark.line + 1, mark.column + 1)


def parse(text: str, file: str, deadline: float | None = None) -> list[Doc]:
    """Every document of a YAML stream; empty documents are dropped. Raises YamlProblem.

    `deadline` (time.monotonic) defaults to MAX_SECONDS from now.
    """
    loader = _Loader(text)
    docs: list[Doc] = []
    conv = _Converter(time.monotonic() + MAX_SECONDS if deadline is None else deadline)
    seen = 0
    try:
        while loader.check_node():
            seen += 1
            if seen > MAX_DOCUMENTS:
                raise OverBudget(f"more than {MAX_DOCUMENTS} YAML documents (budget)")
            node = loader.get_node()
            if node is None:  # pragma: no cover
                continue
            conv.duplicates = []
            data = conv.convert(node)
            if data is not None:
                docs.append(Doc(file, len(docs), data, node, conv.duplicates))
    except yaml.YAMLError as e:
        raise _problem(e) from None
    except RecursionError:
        raise YamlProblem("the document is nested too deeply") from None
    finally:
        loader.dispose()
    return docs


def path_text(path: Path) -> str:
    """("spec", "containers", 0, "image") -> "spec.containers[0].image"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
