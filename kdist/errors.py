"""Library errors. Only the command line (kdist/cli/) turns these into messages and exit codes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in an input file, located as precisely as we can."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    path: str  # dotted path in the spec, e.g. "resources.memory"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}:{self.column}"
        prefix = f"{self.path}: " if self.path else ""
        return f"{where}: {prefix}{self.message}"


class KdistError(Exception):
    """Base class: an error the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 1


class SpecError(KdistError):
    """kdist.yaml is malformed; carries every problem found, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(KdistError):
    """A command was called with arguments that cannot work (e.g. an unknown target)."""

    exit_code = 2


class InputError(KdistError):
    """An input file other than the spec (a manifest given to `kdist diff`) cannot be read."""

    exit_code = 2
