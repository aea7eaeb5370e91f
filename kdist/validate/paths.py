"""A spec rule that looks outside the spec: the entrypoint in the project folder
(kdist/tools/workdir.py, shared with `kdist run`)."""

from __future__ import annotations

from pathlib import Path

from kdist.validate.objects import Sink


def check_paths(text: str, file: str, project: Path, sink: Sink) -> None:
    """Findings for a spec that loads (specs.load found no problem in it)."""
    from kdist.spec.load import load_text
    from kdist.tools.workdir import built_here, check

    job = load_text(text, file)
    rule = "spec-entrypoint" if built_here(job) else "spec-entrypoint-image"
    for p in check(job, text, file, project):
        sink.at(rule, file, p.line, p.column, f"{p.path}: {p.message}", path=p.path)
