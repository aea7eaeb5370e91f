"""Helm target: a spec as values for `charts/kdist` (`kdist render --target helm-values`).

`helm template RELEASE charts/kdist -f <values>` renders the same objects as
`kdist render --target k8s` (docs/architecture.md invariant 3; tests/test_helm.py compares them object by
object). Object names come from `name` in the values, never from the release name, so any
release name gives the same objects.

The values hold the four keys every spec states (`name`, `image`, `entrypoint`, `nodes`) and
every other setting whose value differs from kdist's default; the chart's values.yaml carries
kdist's defaults for the rest (a test pins values.yaml to `JobSpec`'s defaults). Keys are
camelCase, as Helm charts spell them, in the order of kdist.yaml (the loader's rule table), the
`k8s` section's at the top level; the simulation-only sections are left out. A new spec field
needs no code here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kdist.plan import LaunchPlan
from kdist.spec.load import RULES
from kdist.spec.model import JobSpec, Nodes

ALWAYS = ("name", "image", "entrypoint", "nodes")
NOT_IN_CHART = ("network", "compose", "validate")  # simulation, Compose and validate only
FLATTENED = "k8s"  # its fields are top-level values


def camel(name: str) -> str:
    """A spec key as the chart spells it: `procs_per_node` -> `procsPerNode`."""
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


PAIRS = "tuple[tuple[str, str], ...]"  # the model's type of a mapping (env, node_selector)


def _value(value: Any, kind: str) -> Any:
    """A spec value as the chart holds it: sections as mappings (in the loader's key order),
    key-value pairs as mappings, other tuples as lists; in a list of sections (tolerations) only
    the fields that are set, as the k8s target renders them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _section(value)
    if kind == PAIRS:
        return dict(value)
    if isinstance(value, tuple):
        return [{k: v for k, v in _section(item).items() if v != ""}
                if dataclasses.is_dataclass(item) else item for item in value]
    return value


def _section(section: Any) -> dict[str, Any]:
    kinds = {f.name: str(f.type) for f in dataclasses.fields(section)}
    names = RULES.get(type(section)) or list(kinds)
    return {camel(name): _value(getattr(section, name), kinds[name]) for name in names}


_KINDS = {f.name: str(f.type) for f in dataclasses.fields(JobSpec)}


def chart_values(spec: JobSpec) -> dict[str, Any]:
    """Every value the chart reads, for this spec (the full form of `render`): the spec's keys
    in kdist.yaml's order, camelCase, with the `k8s` section's at the top level."""
    values: dict[str, Any] = {}
    for name in RULES[JobSpec]:
        if name == FLATTENED:
            values |= _section(spec.k8s)
        elif name not in NOT_IN_CHART:
            values[camel(name)] = _value(getattr(spec, name), _KINDS[name])
    return values


def _defaults(spec: JobSpec) -> dict[str, Any]:
    """`chart_values` of a spec that states only the required keys (kdist's defaults)."""
    return chart_values(JobSpec(name=spec.name, image=spec.image, entrypoint=spec.entrypoint,
                                nodes=Nodes(min=1, max=1, count=1)))


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and isinstance(defaults[key], dict) and defaults[key]:
            sub = _changed(value, defaults[key])
            if sub:
                out[key] = sub
        elif value != defaults[key]:
            out[key] = value
    return out


def render(plan: LaunchPlan) -> dict[str, Any]:
    """Helm values for `charts/kdist`: the required keys plus what differs from the defaults."""
    values = chart_values(plan.spec)
    changed = _changed(values, _defaults(plan.spec))
    return {key: values[key] if key in ALWAYS else changed[key]
            for key in values if key in ALWAYS or key in changed}
