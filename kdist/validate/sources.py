"""Inputs: files, directories (recursively *.yaml / *.yml), globs and `-` (stdin)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdist.validate.model import Finding
from kdist.validate.rules import RULES

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {"node_modules", "__pycache__", "venv"}


@dataclass(frozen=True)
class Source:
    name: str  # as shown in findings
    path: Path | None  # None for stdin
    data: bytes
    recursed: bool  # found in a directory or by a glob: unrecognised files are skipped


def unreadable(name: str, message: str) -> Finding:
    rule = RULES["input-unreadable"]
    return Finding(rule.id, rule.severity, name, 0, 0, "", "", message, rule.hint)


def _walk(root: Path) -> list[Path]:
    """YAML files under root, sorted; hidden folders and Helm charts (templates are not YAML)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not (here / d / "Chart.yaml").exists())
        found += [here / f for f in sorted(files)
                  if f.endswith(YAML_SUFFIXES) and not f.startswith(".")]
    return found


def _targets(arg: str) -> tuple[list[tuple[Path, bool]], str]:
    """(paths with a `recursed` flag, error) for one command-line argument."""
    path = Path(arg)
    if path.is_dir():
        return [(p, True) for p in _walk(path)], ""
    if path.exists() or path.is_symlink():
        return [(path, False)], ""
    if any(ch in arg for ch in "*?["):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            return [], "no files match this pattern"
        out: list[tuple[Path, bool]] = []
        for m in matches:
            out += [(p, True) for p in _walk(Path(m))] if Path(m).is_dir() else [(Path(m), True)]
        return out, ""
    return [], "no such file or directory"


def collect(args: list[str], stdin: Callable[[], bytes] | None) -> tuple[list[Source], list[Finding]]:
    sources: list[Source] = []
    problems: list[Finding] = []
    seen: set[str] = set()
    for arg in args:
        if arg == "-":
            if "-" not in seen and stdin is not None:
                seen.add("-")
                sources.append(Source("<stdin>", None, stdin(), False))
            continue
        targets, error = _targets(arg)
        if error:
            problems.append(unreadable(arg, error))
        for path, recursed in targets:
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            try:
                sources.append(Source(str(path), path, path.read_bytes(), recursed))
            except OSError as e:
                problems.append(unreadable(str(path), f"cannot read: {e.strerror or e}"))
    return sources, problems


def decode(source: Source) -> tuple[str, str]:
    """(text, '') or ('', why it is not text)."""
    if b"\x00" in source.data:
        return "", "binary file (contains NUL bytes), not YAML"
    try:
        return source.data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as e:
        return "", f"not UTF-8 text (invalid byte at offset {e.start})"
