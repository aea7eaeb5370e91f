"""The targets a job runs on, one package each (kdist/targets/<package>/), and their registry.

A target is a `Target`: its name (the `--target` value), the file `kdist render` writes, the
text it renders (pure: LaunchPlan -> YAML), the rendezvous host its nodes dial, and how to open
a job that runs there (`Job`: status, logs, scale). Its package's `__init__.py` defines it as
`TARGET` and imports nothing heavy: renderers, backends and API clients load when called.

Every list of targets is read from here: the `--target` choices of each command, doctor's
targets, the tests' parametrisation. Adding a target is one package and one line in PACKAGES
(docs/architecture.md).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kdist.errors import UsageError

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan
    from kdist.status import JobFailed, JobState, ScaleChange

PACKAGES = ("local", "compose", "k8s", "helm")  # kdist/targets/<package>/, in the order shown
NODE_LINE = re.compile(r"^node-(\d+)\s*\| ?(.*)$")  # a line of Job.read_logs: `node-N | text`


@dataclass(frozen=True)
class Where:
    """Where to find a running job: the project folder (Compose keeps its state there), and the
    Kubernetes context and namespace (None: the spec's, else the kubeconfig's)."""

    cwd: Path
    context: str | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class LogQuery:
    nodes: tuple[str, ...] = ()  # node-1, 1 or rdzv; () = every node and the store
    follow: bool = False
    tail: int | None = None
    timestamps: bool = False


class Job(Protocol):
    """A job as it runs on a target: what `kdist status | logs | scale` act on."""

    def state(self) -> JobState: ...

    def read_logs(self, query: LogQuery) -> Iterator[str]: ...

    def scale(self, nodes: int) -> ScaleChange: ...

    def failure(self) -> JobFailed | None:
        """Why the job ended without success (the failing node's root cause), or None."""

    def snapshot(self) -> AbstractContextManager[None]:
        """Within it, state, read_logs (not followed) and failure answer from one reading of
        the target, as `kdist status` needs."""


@dataclass(frozen=True)
class Target:
    name: str  # the --target value
    store_host: Callable[[LaunchPlan], str]  # the rendezvous host the nodes dial
    filename: str = ""  # what `kdist render --dir DIR` writes; "" when not rendered
    render: Callable[[LaunchPlan], str] | None = None  # the rendered text (YAML)
    open_job: Callable[[LaunchPlan, Where], Job] | None = None  # a running job
    runs: bool = True  # kdist starts the job itself (run, up, apply): doctor checks for it
    uses_cluster: bool = False  # takes --context and --namespace
    simulates_network: bool = False  # applies the spec's `network:` conditions
    status_reads_logs: bool = False  # `kdist status` also summarises torchrun's logs
    # `kdist doctor`'s checks of this machine for the target, by name (kdist/tools/doctor.py
    # HOST_CHECKS), and what makes the rendezvous host resolvable when it does not resolve
    preflight: tuple[str, ...] = ()
    dns_hint: Callable[[LaunchPlan], str] | None = None
    verbs: frozenset[str] = field(default_factory=frozenset)  # status, logs, scale, apply


@cache
def all_targets() -> tuple[Target, ...]:
    found = []
    for package in PACKAGES:
        module = importlib.import_module(f"kdist.targets.{package}")
        found.append(module.TARGET)
    return tuple(found)


def names(verb: str = "") -> list[str]:
    """Target names, in order; with `verb` only those that support it: a verb of `Target.verbs`,
    or "render" (has a renderer) or "run" (kdist starts it)."""
    out = []
    for t in all_targets():
        if (not verb or (verb == "render" and t.render is not None) or (verb == "run" and t.runs)
                or verb in t.verbs):
            out.append(t.name)
    return out


def get(name: str, verb: str = "") -> Target:
    """The target called `name` (supporting `verb`), or a UsageError with a did-you-mean."""
    choices = names(verb)
    for target in all_targets():
        if target.name == name and target.name in choices:
            return target
    import difflib

    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = f" for {verb}" if verb else ""
    raise UsageError(f"unknown target {name!r}{what}; expected one of {', '.join(choices)}{hint}")


def render(plan: LaunchPlan, target: str) -> str:
    """The text `kdist render --target TARGET` prints."""
    renderer = get(target, "render").render
    assert renderer is not None  # names("render") has only targets with one
    return renderer(plan)


def open_job(plan: LaunchPlan, target: str, where: Where) -> Job:
    """The running job of `plan` on `target` (one that has `status`)."""
    t = get(target, "status")
    if not t.uses_cluster and (where.context or where.namespace):
        raise UsageError(f"--context and --namespace are for a cluster; target {t.name} has none")
    assert t.open_job is not None
    return t.open_job(plan, where)
