"""Standalone JSON schemas for kubeconform from the ones kubernetes-validate ships.

kubernetes-validate's `vX-local-strict` schemas point into one shared `/api/_definitions.json`,
which kubeconform cannot follow (it skips a schema it cannot compile and reports "could not find
schema"). This writes each kind's schema with the definitions it reaches bundled under `$defs`,
named as kubeconform's default template expects (`statefulset-apps-v1.json`), so kubeconform
validates offline against the same schemas as kdist and kubernetes-validate.

    python benchmarks/standalone_schemas.py 1.31 DIR
    kubeconform -strict -schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json' FILES
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

REF = "/api/_definitions.json#/$defs/"  # from a kind's file
LOCAL = "#/$defs/"  # within _definitions.json, and what the bundled files use


def source_dir(version: str) -> Path:
    import kubernetes_validate

    return (Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
            / f"v{version}.0-local-strict")


def _relink(node: Any, reached: set[str]) -> Any:
    """`node` with shared-file refs turned into local ones; the names it reaches added."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith((REF, LOCAL)):
            name = ref.partition(LOCAL)[2]
            reached.add(name)
            node = {**node, "$ref": LOCAL + name}
        return {k: _relink(v, reached) for k, v in node.items()}
    if isinstance(node, list):
        return [_relink(v, reached) for v in node]
    return node


def standalone(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    reached: set[str] = set()
    out = _relink(schema, reached)
    bundled: dict[str, Any] = {}
    todo = sorted(reached)
    while todo:
        name = todo.pop()
        if name in bundled:
            continue
        more: set[str] = set()
        bundled[name] = _relink(defs[name], more)
        todo += sorted(more - set(bundled))
    out.pop("$id", None)
    return {**out, "$defs": bundled}


def write(version: str, folder: Path) -> int:
    src = source_dir(version)
    defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(src.glob("*.json")):
        if path.name.startswith("_") or path.name == "all.json" or re.search(r"list-", path.name):
            continue
        schema = json.loads(path.read_text())
        (folder / path.name).write_text(json.dumps(standalone(schema, defs)))
        count += 1
    return count


if __name__ == "__main__":
    print(f"{write(sys.argv[1], Path(sys.argv[2]))} schemas in {sys.argv[2]}")
