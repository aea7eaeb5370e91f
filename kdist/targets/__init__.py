"""Pure renderers: LaunchPlan -> plain dicts -> YAML text. No I/O, no clock, no randomness."""

from __future__ import annotations

from kdist.errors import UsageError
from kdist.plan import LaunchPlan
from kdist.yamlio import dump, dump_all

TARGETS = ("compose", "k8s", "helm-values")
FILENAMES = {"compose": "docker-compose.yaml", "k8s": "k8s.yaml", "helm-values": "helm-values.yaml"}


def render(plan: LaunchPlan, target: str) -> str:
    """The text `kdist render --target TARGET` prints."""
    if target == "compose":
        from kdist.targets.compose import render as compose

        return dump(compose.render(plan))
    if target == "k8s":
        from kdist.targets.k8s import render as k8s

        return dump_all(k8s.render(plan))
    if target == "helm-values":
        from kdist.targets.helm import render as helm

        return dump(helm.render(plan))
    raise UsageError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
