"""charts/kdist/values.schema.json and values.yaml are generated from the loader's rules
(kdist/targets/helm/chart.py) and files/ holds kdist/node's programs (`make golden` writes them
all), and helm refuses what the loader refuses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # comes with kubernetes-validate
import pytest
import yaml
from conftest import ROOT, Golden

from kdist.errors import SpecError
from kdist.plan import program
from kdist.spec.load import LABEL_KEY_RE, load_text
from kdist.targets.helm import chart

CHART = ROOT / "charts" / "kdist"
PROGRAMS = ("finish.py", "store.py", "wait.py")  # kdist/node/*.py, copied into charts/kdist/files
HELM = shutil.which("helm")
SPEC = {"name": "job", "image": "trainer:1.0", "entrypoint": "train.py", "nodes": 2}

needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not on PATH: install Helm (tested "
                                "with v4.1) to check the chart's schema")


def test_chart_files_are_golden(golden: Golden) -> None:
    """Also the in-pod programs the chart ships (files/): kdist/node's, which `make golden`
    copies."""
    golden.check(CHART / "values.schema.json", chart.values_schema_text())
    golden.check(CHART / "values.yaml", chart.values_yaml())
    for name in PROGRAMS:
        golden.check(CHART / "files" / name, program(name))
    assert sorted(p.name for p in (CHART / "files").iterdir()) == sorted(PROGRAMS)


def test_schema_is_a_draft7_schema_and_takes_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(chart.values_schema())
    defaults = yaml.safe_load(chart.values_yaml())
    jsonschema.Draft7Validator(chart.values_schema()).validate(defaults)
    assert list(chart.values_schema()["properties"]) == list(defaults)


def test_every_key_has_its_comment_and_description() -> None:
    described = {}

    def walk(props: dict[str, Any], path: str) -> None:
        for key, sub in props.items():
            described[path + key] = sub["description"]
            walk(sub.get("properties", {}), f"{path}{key}.")

    walk(chart.values_schema()["properties"], "")
    assert described == {path: chart.description(path) for path in described}
    assert described["procsPerNode"].startswith("torchrun --nproc-per-node")
    assert "helm test" in described["image"]  # CHART_DOCS: the chart's own words
    assert "keepAliveInterval x keepAliveMaxAttempt" in described["rendezvous.keepAliveInterval"]
    commented, above, parent = {}, [], ""
    for line in (CHART / "values.yaml").read_text(encoding="utf-8").splitlines():
        key = re.match(r"^( *)(\w+):", line)
        if line.lstrip().startswith("#"):
            above.append(line.lstrip()[2:])
        elif key:
            parent = parent if key[1] else key[2]
            commented[f"{parent}.{key[2]}" if key[1] else key[2]] = " ".join(above)
            above = []
        else:
            above = []
    assert commented == described  # the same words above each key in values.yaml


@pytest.mark.parametrize("key", [
    "kubernetes.io/arch", "a", "A.b_c-D", "x.y/z", "a" * 253 + "/b", "a" * 254 + "/b", "-a/b",
    "a/b/c", "a/", "/a", "a.-b/c", "Ab/c", "a" * 63, "a" * 64, "", "ü/a", "a_b.c/d",
])
def test_go_form_of_the_label_key_pattern_agrees_with_the_loader(key: str) -> None:
    form = chart._go_pattern(LABEL_KEY_RE.pattern)
    go = all(re.search(p, key) for p in (form["pattern"], *(s["pattern"] for s in form["allOf"])))
    assert go == bool(LABEL_KEY_RE.fullmatch(key))
    assert "(?=" not in form["pattern"]


def test_a_key_without_a_description_is_named() -> None:
    with pytest.raises(ValueError, match=r"chart key resources.gpus has no description: add "
                                         r"Resources.gpus to kdist/spec/load.py DESCRIPTIONS"):
        chart.description("resources.gpus")


def test_generator_names_a_key_without_a_rule_or_a_rule_without_a_key() -> None:
    with pytest.raises(ValueError, match=r"chart key resources\.gpus has no rule"):
        chart._rule_schemas({"gpu": {}}, {"gpus": 1}, "resources.")
    with pytest.raises(ValueError, match="resources: the loader's gpu not in the chart's values"):
        chart._rule_schemas({"gpu": {}}, {}, "resources.")
    with pytest.raises(ValueError, match="no lookaround"):
        chart._go_pattern("^(?!PET_)")


def helm(*args: str, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args, str(CHART), "-f", "-"], input=json.dumps(values),
                          capture_output=True, text=True, timeout=60, check=False)


# (what kdist.yaml says, the same in chart values, words helm's message holds)
REFUSED = [
    ({"name": "Bad_Name"}, {"name": "Bad_Name"}, ["/name", "pattern"]),
    ({"nodes": {"min": 0, "max": 2}}, {"nodes": {"min": 0, "max": 2, "count": 2}},
     ["/nodes/min", "minimum"]),
    ({"resources": {"gpus": 1}}, {"resources": {"gpus": 1}}, ["gpus", "not allowed"]),
    ({"checkpoint": {"access_mode": "ReadWriteAll"}}, {"checkpoint": {"accessMode": "ReadWriteAll"}},
     ["/checkpoint/accessMode", "ReadWriteMany"]),
    ({"k8s": {"tolerations": [{"key": "k", "effect": "NoRun"}]}},
     {"tolerations": [{"key": "k", "effect": "NoRun"}]}, ["/tolerations/0/effect", "NoSchedule"]),
    ({"k8s": {"node_selector": {"-a/b": "x"}}}, {"nodeSelector": {"-a/b": "x"}}, ["-a/b", "pattern"]),
    ({"k8s": {"node_selector": {"a" * 254 + "/b": "x"}}}, {"nodeSelector": {"a" * 254 + "/b": "x"}},
     ["[^/]{1,253}"]),
    ({"k8s": {"namespace": "Team"}}, {"namespace": "Team"}, ["/namespace", "pattern"]),
    ({"k8s": {"image_pull_secrets": ["a_b"]}}, {"imagePullSecrets": ["a_b"]},
     ["/imagePullSecrets/0", "pattern"]),
    ({"env": {"PET_RANK": "0"}}, {"env": {"PET_RANK": "0"}}, ["PET_RANK"]),
    ({"rendezvous": {"port": 70000}}, {"rendezvous": {"port": 70000}}, ["/rendezvous/port", "maximum"]),
    ({"checkpoint": {"path": "/data/"}}, {"checkpoint": {"path": "/data/"}}, ["/checkpoint/path"]),
    ({"resources": {"cpu": "2 cores"}}, {"resources": {"cpu": "2 cores"}}, ["/resources/cpu"]),
    ({"resources": {"memory": "1" * 33}}, {"resources": {"memory": "1" * 33}},
     ["/resources/memory", "maxLength"]),
    ({"checkpoint": {"path": "/etc"}}, {"checkpoint": {"path": "/etc"}}, ["/checkpoint/path"]),
    ({"checkpoint": {"path": "/app"}}, {"checkpoint": {"path": "/app"}}, ["/checkpoint/path"]),
    ({"checkpoint": {"path": "/proc/x"}}, {"checkpoint": {"path": "/proc/x"}}, ["/checkpoint/path"]),
    ({"checkpoint": {"path": "/a/../b"}}, {"checkpoint": {"path": "/a/../b"}}, ["/checkpoint/path"]),
    ({"entrypoint": "train\x01.py"}, {"entrypoint": "train\x01.py"}, ["/entrypoint"]),
    ({"args": ["a\x1bb"]}, {"args": ["a\x1bb"]}, ["/args/0"]),
    ({"k8s": {"tolerations": [{"value": "v"}]}}, {"tolerations": [{"value": "v"}]},
     ["/tolerations/0", "operator"]),
    ({"k8s": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
     {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, ["/tolerations/0"]),
    ({"env": {"A": "x" * 4097}}, {"env": {"A": "x" * 4097}}, ["/env/A", "maxLength"]),
]


@pytest.mark.parametrize(("spec", "values", "words"), REFUSED,
                         ids=lambda x: json.dumps(x)[:40] if isinstance(x, dict) else None)
def test_loader_refuses_it(spec: dict[str, Any], values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError):
        load_text(json.dumps({**SPEC, **spec}))


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize(("spec", "values", "words"), REFUSED,
                         ids=lambda x: json.dumps(x)[:40] if isinstance(x, dict) else None)
def test_helm_refuses_what_the_loader_refuses(spec: dict[str, Any], values: dict[str, Any],
                                               words: list[str]) -> None:
    for command in (("template", "job"), ("lint", "--strict")):
        result = helm(*command, values=values)
        out = result.stdout + result.stderr
        assert result.returncode != 0, (command, out)
        assert "values don't meet the specifications of the schema" in out, (command, out)
        assert all(w in out for w in words), (command, words, out)


@pytest.mark.helm
@needs_helm
def test_helm_takes_empty_optional_names_and_the_chart_defaults() -> None:
    empty = {k: "" for k in ("namespace", "serviceAccount", "priorityClass", "queue",
                             "networkInterface")}
    for command in (("template", "job"), ("lint", "--strict")):
        result = helm(*command, values={**empty, "checkpoint": {"storageClass": ""}})
        assert result.returncode == 0, result.stdout + result.stderr
