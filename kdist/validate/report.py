"""Report -> text (optionally coloured), JSON, or GitHub workflow commands. Pure functions."""

from __future__ import annotations

import json
from collections.abc import Callable

from kdist.validate.model import Finding, Report
from kdist.validate.rules import RULES

Style = Callable[[str, str], str]  # (text, role) -> text; role: error, warning, dim, bold


def plain(text: str, role: str) -> str:
    return text


def _where(f: Finding) -> str:
    where = f.file
    if f.line:
        where += f":{f.line}" + (f":{f.column}" if f.column else "")
    return where


def summary(report: Report) -> str:
    errors, warnings = report.count("error"), report.count("warning")
    files = len(report.files)
    scope = (f"{files} file{'s' if files != 1 else ''}, {report.objects} Kubernetes object"
             f"{'s' if report.objects != 1 else ''}, Kubernetes {report.kubernetes_version}")
    skipped = f"; skipped {len(report.skipped)} other YAML file(s)" if report.skipped else ""
    if not errors and not warnings:
        return f"kdist validate: OK ({scope}){skipped}"
    return (f"kdist validate: {errors} error{'s' if errors != 1 else ''}, {warnings} "
            f"warning{'s' if warnings != 1 else ''} ({scope}){skipped}")


def text(report: Report, style: Style = plain) -> str:
    lines = []
    for f in report.findings:
        head = style(f.severity, f.severity)
        obj = f" {f.object}:" if f.object else ""
        lines.append(f"{style(_where(f), 'bold')}: {head} [{f.rule}]{obj} {f.message}")
        if f.hint:
            lines.append(style(f"    fix: {f.hint}", "dim"))
    lines.append(summary(report))
    return "\n".join(lines) + "\n"


def as_json(report: Report) -> str:
    doc = {
        "kubernetes_version": report.kubernetes_version,
        "files": report.files,
        "skipped": report.skipped,
        "objects": report.objects,
        "summary": {"errors": report.count("error"), "warnings": report.count("warning")},
        "findings": [{
            "rule": f.rule, "severity": f.severity, "file": f.file, "line": f.line,
            "column": f.column, "object": f.object, "path": f.path, "message": f.message,
            "hint": f.hint,
        } for f in report.findings],
    }
    return json.dumps(doc, indent=2) + "\n"


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github(report: Report) -> str:
    """Workflow commands: `::error file=F,line=L,col=C,title=RULE::message`."""
    lines = []
    for f in report.findings:
        props = [f"file={_escape_property(f.file)}"]
        if f.line:
            props.append(f"line={f.line}")
            if f.column:
                props.append(f"col={f.column}")
        props.append(f"title={_escape_property(f'kdist validate: {f.rule}')}")
        obj = f"{f.object}: " if f.object else ""
        message = f"{obj}{f.message} (fix: {f.hint})" if f.hint else f"{obj}{f.message}"
        lines.append(f"::{f.severity} {','.join(props)}::{_escape_data(message)}")
    lines.append(summary(report))
    return "\n".join(lines) + "\n"


def rules_table() -> str:
    width = max(len(r) for r in RULES)
    rows = [f"{'RULE'.ljust(width)}  SEVERITY  CHECKS"]
    rows += [f"{r.id.ljust(width)}  {r.severity.ljust(8)}  {r.summary}" for r in RULES.values()]
    return "\n".join(rows) + "\n"


def rules_markdown() -> str:
    """The rule table of docs/validate.md (a test keeps the doc equal to this)."""
    rows = ["| rule | severity | checks | from |", "|---|---|---|---|"]
    rows += [f"| `{r.id}` | {r.severity} | {r.summary} | {r.source} |" for r in RULES.values()]
    return "\n".join(rows) + "\n"



def exit_code(report: Report, fail_on: str) -> int:
    """2 unreadable input, 1 errors (or warnings with fail_on=warning), else 0."""
    if report.unreadable:
        return 2
    if report.count("error") or (fail_on == "warning" and report.count("warning")):
        return 1
    return 0
