"""`kdist validate` end to end: inputs -> kind of file -> checks -> one sorted report."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdist.validate import k8s, k8s_refs, k8s_torchrun, netpol, rbac, schema, security, sources
from kdist.validate.model import Finding, Options, Report
from kdist.validate.objects import Sink
from kdist.validate.paths import check_paths
from kdist.validate.yamldoc import MAX_SECONDS, Doc, OverBudget, YamlProblem, check_deadline, parse

SPEC_NAME = re.compile(r"^kdist\.ya?ml$")
VALUES_NAME = re.compile(r"^(.*[-_.])?values\.ya?ml$")  # Helm values (helm-values.yaml, ...)
# tools' config files in Kubernetes style, never sent to an API server (kind, kustomize, ...)
CONFIG_API = re.compile(r"^([a-z0-9.-]*\.config\.k8s\.io|kind\.x-k8s\.io|kubeadm\.k8s\.io|"
                        r"k3d\.io|ctlptl\.dev|skaffold)/")


@dataclass
class Context:
    options: Options
    schemas: schema.SchemaSet
    version: tuple[int, int]


@dataclass
class Outcome:
    findings: list[Finding]
    objects: int = 0
    skipped: bool = False


def validate(paths: list[str], options: Options,
             stdin: Callable[[int], bytes] | None = None) -> Report:
    """Validate every input; never raises for bad input (UsageError for bad options only)."""
    version = schema.resolve_version(options.kubernetes_version)
    major, minor = (int(x) for x in version.split("."))
    ctx = Context(options, schema.schema_set(version), (major, minor))
    report = Report(version)
    found, problems = sources.collect(paths, stdin)
    report.findings += problems
    if options.compose_runner is not None and sum(map(_may_run_docker, found)) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:  # overlaps docker compose runs
            outcomes = list(pool.map(lambda s: check_source(s, ctx), found))
    else:
        outcomes = [check_source(s, ctx) for s in found]
    for src, outcome in zip(found, outcomes, strict=True):
        (report.skipped if outcome.skipped else report.files).append(src.name)
        report.objects += outcome.objects
        report.findings += outcome.findings
    report.findings.sort(key=Finding.sort_key)
    return report


def _may_run_docker(src: sources.Source) -> bool:
    """A cheap guess (Compose file or spec?) that only decides whether to use threads."""
    return b"services:" in src.data or b"entrypoint:" in src.data


def classify(name: str, docs: list[Doc]) -> str:
    """spec, compose, k8s, values, config or unknown: by name, then by the documents' keys."""
    if SPEC_NAME.match(Path(name).name):
        return "spec"
    if VALUES_NAME.match(Path(name).name):
        return "values"  # Helm values look like a spec but are the chart's input
    first = next((d.data for d in docs if isinstance(d.data, dict)), None)
    if isinstance(first, dict) and "kind" not in first and "apiVersion" not in first:
        if "entrypoint" in first:
            return "spec"
        if "services" in first:
            return "compose"
    objects = [d.data for d in docs if isinstance(d.data, dict)
               and ("kind" in d.data or "apiVersion" in d.data)]
    if objects and all(CONFIG_API.match(str(o.get("apiVersion", ""))) for o in objects):
        return "config"
    return "k8s" if objects else "unknown"


def check_source(src: sources.Source, ctx: Context) -> Outcome:
    sink = Sink(ctx.options.disabled)
    text, why = sources.decode(src)
    if why:
        return Outcome([sources.unreadable(src.name, why)])
    deadline = time.monotonic() + MAX_SECONDS
    try:
        docs = parse(text, src.name, deadline)
    except YamlProblem as e:
        rule = "input-budget" if isinstance(e, OverBudget) else "yaml-syntax"
        sink.at(rule, src.name, e.line, e.column, str(e))
        return Outcome(sink.findings)
    try:
        return _check_docs(src, text, docs, ctx, sink, deadline)
    except OverBudget as e:
        sink.at("input-budget", src.name, e.line, e.column, str(e))
        return Outcome(sink.findings)


def _check_docs(src: sources.Source, text: str, docs: list[Doc], ctx: Context, sink: Sink,
                deadline: float) -> Outcome:
    for doc in docs:
        for key, line, column in doc.duplicates:
            sink.at("yaml-duplicate-key", src.name, line, column, f"duplicate key {key!r}")
    if not docs:
        sink.at("yaml-empty", src.name, 0, 0, "no YAML documents")
        return Outcome(sink.findings)
    kind = classify(src.name, docs)
    if kind in ("values", "config") or (kind == "unknown" and src.recursed):
        return Outcome([], skipped=True)
    if kind == "spec":
        return check_spec(src, text, ctx, sink, deadline)
    if kind == "compose":
        check_compose(docs, text, _project(src), ctx, sink)
        return Outcome(sink.findings)
    return Outcome(sink.findings, check_k8s(docs, ctx, sink, deadline))


def _project(src: sources.Source) -> Path:
    return src.path.parent.resolve() if src.path is not None else Path.cwd()


def check_k8s(docs: list[Doc], ctx: Context, sink: Sink, deadline: float = math.inf) -> int:
    """Every Kubernetes check on the objects of one file; OverBudget past the deadline."""
    bundle = k8s.bundle_of(docs, sink)
    stages: list[Callable[[], None]] = [
        lambda: k8s.check_schemas(bundle, ctx.schemas, sink),
        lambda: k8s.check_duplicates(bundle, sink),
        lambda: k8s.check_metadata(bundle, sink),
        lambda: k8s_refs.check_selectors(bundle, sink),
        lambda: k8s_refs.check_statefulsets(bundle, sink),
        lambda: k8s_refs.check_services(bundle, sink),
        lambda: k8s_refs.check_pdbs(bundle, sink),
        lambda: k8s_torchrun.check_launches(bundle, k8s_torchrun.launches(bundle, sink), sink),
        lambda: security.check_pods(bundle.pods, sink, ctx.version),
        lambda: netpol.check_coverage(bundle, sink),
        lambda: netpol.check_targets(bundle, sink),
        lambda: rbac.check_roles(bundle, sink),
        lambda: rbac.check_controller_patch(bundle, sink),
    ]
    for stage in stages:
        check_deadline(deadline)
        stage()
    return len(bundle.objects)


def check_compose(docs: list[Doc], text: str, project: Path, ctx: Context, sink: Sink) -> None:
    from kdist.validate import compose, compose_torchrun

    doc = docs[0]
    if len(docs) > 1:
        sink.add("compose-schema", docs[1], (), "a Compose file has one YAML document")
    runner = ctx.options.compose_runner
    run = runner() if runner is not None else None
    if run is not None:
        compose.docker_problem(doc, text, project, run, sink)
    else:
        compose.check_structure(doc, sink)
    services = compose.services_of(doc)
    compose.check_security(services, sink)
    compose_torchrun.check_gpu_devices(services, sink)
    compose_torchrun.check_launches(services, compose_torchrun.launches(services, sink), sink)


def check_spec(src: sources.Source, text: str, ctx: Context, sink: Sink, deadline: float
               ) -> Outcome:
    from kdist.validate import specs

    unit = specs.load(text, src.name, sink)
    if unit is None:
        return Outcome(sink.findings)
    check_paths(text, src.name, Path.cwd(), sink)
    rendered = Sink(ctx.options.disabled | unit.disabled)
    objects = check_k8s(unit.k8s_docs, ctx, rendered, deadline)
    k8s_findings = specs.relocate(rendered.findings, text, src.name, "k8s")
    rendered.findings = []
    check_compose([unit.compose_doc], unit.compose_text, _project(src), ctx, rendered)
    compose_findings = specs.relocate(rendered.findings, text, src.name, "compose")
    return Outcome(sink.findings + k8s_findings + compose_findings, objects)
