"""What `kdist validate` produces: findings, options and the report. Plain frozen dataclasses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]

# (compose text, project directory) -> None when valid, else docker's message
ComposeConfig = Callable[[str, Path], "str | None"]
# called once, when the first Compose file shows up: the runner, or None (not installed)
ComposeRunner = Callable[[], "ComposeConfig | None"]


@dataclass(frozen=True)
class Finding:
    """One problem, located as precisely as the input allows (line/column 1-based, 0 = unknown)."""

    rule: str
    severity: Severity
    file: str
    line: int
    column: int
    object: str  # "StatefulSet/train", "service node-0", "" for the whole file
    path: str  # field path inside the object, e.g. spec.template.spec.containers[0].image
    message: str
    hint: str

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.rule, self.message)


@dataclass(frozen=True)
class Options:
    kubernetes_version: str = ""  # "1.31"; "" = the newest supported
    disabled: frozenset[str] = frozenset()
    compose_runner: ComposeRunner | None = None  # None: kdist's own Compose structure checks


@dataclass
class Report:
    kubernetes_version: str
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not a spec, Compose file or manifest
    objects: int = 0
    findings: list[Finding] = field(default_factory=list)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def unreadable(self) -> bool:
        return any(f.rule == "input-unreadable" for f in self.findings)
