"""`helm-values`: the spec as values for the chart charts/kdist (installed with helm)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdist.targets import Target
from kdist.targets.k8s import store_host

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan


def render_text(plan: LaunchPlan) -> str:
    from kdist.targets.helm import render
    from kdist.yamlio import dump

    return dump(render.render(plan))


TARGET = Target(name="helm-values", store_host=store_host, filename="helm-values.yaml",
                render=render_text, runs=False)
