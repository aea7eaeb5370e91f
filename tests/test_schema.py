"""`kdist schema` stays in step with the loader: both accept and reject the same documents."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import FIXTURES, ROOT
from test_load import BAD_VALUES, FIELDS, dump, with_value

from kdist.errors import SpecError
from kdist.spec.load import load_text
from kdist.spec.schema import job_schema

VALIDATOR = jsonschema.Draft202012Validator(job_schema())
GOOD = sorted((FIXTURES / "features").glob("*/kdist.yaml")) + sorted(
    (ROOT / "trainers" / "examples").glob("*.yaml"))
# What only kdist checks: rules across fields, and quantities that match the pattern but are 0.
KDIST_ONLY = ("greater than zero", "at most one process per GPU", "keep_alive_interval x",
              "must be less than join_timeout", "is greater than max", "must be within min:max",
              "larger than the memory limit")


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(job_schema())


@pytest.mark.parametrize("spec", GOOD, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_good_spec_matches_the_schema(spec: Path) -> None:
    VALIDATOR.validate(yaml.safe_load(spec.read_text()))


@pytest.mark.parametrize("path", FIELDS)
def test_schema_and_loader_agree_on_malformed_values(path: str) -> None:
    for value in BAD_VALUES:
        doc = with_value(path, value)
        try:
            load_text(dump(doc))
            loader_ok = True
        except SpecError as e:
            if all(any(m in p.message for m in KDIST_ONLY) for p in e.problems):
                continue
            loader_ok = False
        schema_ok = VALIDATOR.is_valid(yaml.safe_load(dump(doc)))
        assert loader_ok == schema_ok, (path, value)


def test_schema_names_every_key_the_loader_knows() -> None:
    top = job_schema()["properties"]
    assert set(top["resources"]["properties"]) == {"cpu", "memory", "gpu", "shm"}
    store = top["rendezvous"]["properties"]["store"]
    assert {k: v for k, v in store.items() if k != "description"} == {
        "enum": ["standalone", "node0"], "default": "standalone"}
    assert job_schema()["required"] == ["name", "image", "entrypoint", "nodes"]


def test_every_key_has_a_description() -> None:
    """A new spec field needs its text in DESCRIPTIONS: editors show it, and the chart's
    values.yaml and values.schema.json take it (kdist/targets/helm/chart.py)."""
    from kdist.spec import load

    missing = [f"{cls.__name__}.{name}" for cls, rules in load.RULES.items() for name in rules
               if not load.DESCRIPTIONS.get(cls, {}).get(name)]
    assert missing == []
    props = job_schema()["properties"]
    assert props["k8s"]["properties"]["queue"]["description"].startswith("Kueue LocalQueue")
