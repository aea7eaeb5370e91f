"""Deterministic YAML output (keys in insertion order, block style, literal blocks for scripts),
and bounded YAML input for manifests a user hands to kdist (size, depth, aliases)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kdist.errors import InputError

MAX_BYTES = 8 * 2**20  # a manifest kdist reads: far more than any job's
MAX_DEPTH = 100  # nesting of mappings and sequences
MAX_EXPANDED = 1_000_000  # nodes once every alias is expanded (alias bombs stop here)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


# Words that YAML 1.1 / Go parsers (kubectl, helm) read as booleans or numbers: quote them.
_GO_NON_STRING = re.compile(
    r"[yYnN]|[-+]?(0o[0-7_]+|0b[01_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?"
    r"|\.[0-9][0-9_]*([eE][-+]?[0-9]+)?)")


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else ("'" if _GO_NON_STRING.fullmatch(value) else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


def dump_all(docs: list[Any]) -> str:
    return "".join(f"---\n{dump(d)}" for d in docs)


# ---- bounded input -------------------------------------------------------------------------


class _TooBig(yaml.MarkedYAMLError):
    """A budget ran out while composing a document (carries where)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than MAX_DEPTH before Python's stack runs out."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _TooBig(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes in `node` with every alias expanded; shared nodes are counted once per use."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise _TooBig(problem="an alias refers to a node that contains it (a cycle)",
                          problem_mark=node.start_mark)
        return sizes[key]
    sizes[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if total > MAX_EXPANDED:
        raise _TooBig(problem=f"more than {MAX_EXPANDED} values once its aliases are expanded",
                      problem_mark=node.start_mark)
    sizes[key] = total
    return total


def too_deep(text: str) -> tuple[int, int] | None:
    """Where (0-based line, column) collections first nest deeper than MAX_DEPTH, else None.
    From libyaml's event stream (C, fast; no recursion) when PyYAML has it: pure-Python
    scanners take about 2 s over 1000 levels of `[`. Syntax errors are left to the loader."""
    loader = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader
    depth = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                return (mark.line, mark.column) if mark is not None else (0, 0)
    except yaml.MarkedYAMLError as e:
        if "nesting depth" in str(e) and e.problem_mark is not None:  # libyaml's own limit
            return e.problem_mark.line, e.problem_mark.column
    except yaml.YAMLError:
        pass
    return None


def _documents(text: str) -> list[Any]:
    loader = _BoundedLoader(text)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            _expanded_size(node, {})  # per document: anchors do not cross documents
            docs.append(loader.construct_document(node))
    finally:
        loader.dispose()
    return docs


def read_documents(path: Path, many: bool) -> Any:
    """The YAML document in `path` (every non-empty one when `many`), read within budgets
    (MAX_BYTES, MAX_DEPTH, MAX_EXPANDED); anything else is an InputError that says where."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: not a text file (not UTF-8)") from None
    if len(data) > MAX_BYTES:
        raise InputError(f"{path}: larger than {MAX_BYTES // 2**20} MiB: not a manifest kdist reads")
    deep = too_deep(text)
    if deep is not None:
        raise InputError(f"{path}:{deep[0] + 1}:{deep[1] + 1}: not valid YAML: nested more than "
                         f"{MAX_DEPTH} levels deep")
    try:
        docs = _documents(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: not valid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {(str(e).splitlines() or ['?'])[0]}") from None
    if many:
        return [d for d in docs if d is not None]
    if len(docs) > 1:
        raise InputError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0] if docs else None
