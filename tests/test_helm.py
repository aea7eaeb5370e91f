"""docs/architecture.md invariant 3: `helm template charts/kdist -f <helm values>` equals the k8s renderer.

The tests that run helm are marked `helm` and skip when helm is not on PATH; the ones that only
read the chart's files (defaults, documentation, schema) always run.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # comes with kubernetes-validate
import kubernetes_validate
import pytest
import yaml
from conftest import FIXTURES, ROOT

from kdist.plan import WAIT_CODE, LaunchPlan
from kdist.spec.load import load_file, load_text
from kdist.spec.model import JobSpec, Nodes
from kdist.targets.helm import render as helm
from kdist.targets.k8s import render as k8s
from kdist.yamlio import dump

CHART = ROOT / "charts" / "kdist"
HELM = shutil.which("helm")
SPECS = sorted((FIXTURES / "features").glob("*/kdist.yaml")) + sorted(
    (ROOT / "trainers" / "examples").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))
HOOK = "helm.sh/hook"
KEEP = "helm.sh/resource-policy"  # the chart's PVC only: helm must not delete checkpoints

needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not on PATH: install Helm (tested "
                                "with v4.1) to check the chart against the k8s renderer")

# Words that shells, YAML 1.1/1.2 parsers and Go templates each treat specially.
HOSTILE = """\
name: "yes"
image: trainer:1.0
entrypoint: "$HOME/train.py"
args: ["", "a b", "it's", "$HOME", '--x="q"', "ünï", "tab\\there", "two\\nlines", "*", "~u",
       "#c", "y", "N", "0o17", "1e3", "null", "trail ", " lead", "\\\\back", "a'b'c", "'",
       "@%+=:,./-_", "{{ .Values.name }}", "end\\n"]
nodes: {min: 1, max: 4, count: 2}
env: {HOME: /home/x, KDIST_CHECKPOINT_DIR: /override, Y: "on", A: "0o17", B: "", C: "x: y",
      D: "{{ x }}", E: "ünï", F: "1.0"}
network_interface: eth0
rendezvous: {store: node0, port: 1234}
k8s:
  node_selector: {"y": "n", a: "0o17"}
  tolerations: [{operator: Exists}, {key: k, value: "true"}]
  image_pull_secrets: ["on"]
"""


def spec_id(path: Path) -> str:
    return path.parent.name if path.name == "kdist.yaml" else path.stem


def plan_of(spec: Path) -> LaunchPlan:
    return LaunchPlan(load_file(spec))


def helm_run(*args: str, values: str = "") -> subprocess.CompletedProcess[str]:
    """`helm ARGS...`, with `values` (YAML or JSON) on stdin for `-f -`."""
    assert HELM is not None
    return subprocess.run([HELM, *args], input=values, capture_output=True, text=True,
                          timeout=60, check=False)


def template(values: str, release: str = "job", *extra: str) -> list[dict[str, Any]]:
    result = helm_run("template", release, str(CHART), "-f", "-", *extra, values=values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@functools.cache
def chart_docs(spec: Path) -> tuple[dict[str, Any], ...]:
    """What the chart renders for a spec, hook pod included (helm runs once per spec)."""
    return tuple(template(dump(helm.render(plan_of(spec))), f"rel-{spec_id(spec)}"))


def by_kind_and_name(docs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    keyed = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(keyed) == len(list(docs)), "two objects share a kind and a name"
    return keyed


def without_hooks(docs: Any) -> list[dict[str, Any]]:
    return [d for d in docs if HOOK not in d["metadata"].get("annotations", {})]


def without_keep(doc: dict[str, Any]) -> dict[str, Any]:
    """The chart's PVC, less the annotation that only Helm reads (asserted here)."""
    if doc["kind"] != "PersistentVolumeClaim":
        return doc
    meta = dict(doc["metadata"])
    notes = dict(meta.pop("annotations"))
    assert notes.pop(KEEP) == "keep"
    if notes:
        meta["annotations"] = notes
    return {**doc, "metadata": meta}


def assert_same_objects(chart: Any, kdist: Any) -> None:
    got = by_kind_and_name([without_keep(d) for d in without_hooks(chart)])
    want = by_kind_and_name(kdist)
    assert sorted(got) == sorted(want)
    for key, doc in want.items():
        assert got[key] == doc, f"{key} differs:\n{dump(got[key])}\n!=\n{dump(doc)}"


# ---- the chart's files (no helm needed) -------------------------------------------------------


def chart_defaults() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


def schema() -> dict[str, Any]:
    loaded = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_values_yaml_carries_kdist_defaults() -> None:
    starter = JobSpec(name="my-job", image="kdist-trainer:0.1.0", entrypoint="trainers/train.py",
                      nodes=Nodes(min=2, max=3, count=3))  # the required keys as `kdist init`
    assert chart_defaults() == helm.chart_values(starter)
    assert list(chart_defaults()) == list(helm.chart_values(starter))


def test_every_values_key_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z]\w*:", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") or " # " in line, f"values.yaml:{i + 1}: {line.strip()}"


def test_schema_closes_every_object() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object":
                assert "additionalProperties" in node, path
                assert node["additionalProperties"] is False or "properties" not in node, path
            for key, sub in node.items():
                walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}/{i}")

    walk(schema(), "")
    assert set(schema()["properties"]) == set(chart_defaults())


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_helm_values_of_every_spec_meet_the_schema(spec: Path) -> None:
    jsonschema.validate(helm.render(plan_of(spec)), schema())
    jsonschema.validate(helm.chart_values(plan_of(spec).spec), schema())


def test_schema_accepts_the_defaults_and_rejects_bad_values() -> None:
    jsonschema.validate(chart_defaults(), schema())
    for bad in ({"nmae": "x"}, {"procsPerNode": "2"}, {"rendezvous": {"store": "node1"}},
                {"env": {"PET_RANK": "0"}}, {"name": "Bad_Name"}, {"tolerations": [{"k": "v"}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**chart_defaults(), **bad}, schema())


def test_helm_values_hold_the_required_keys_and_what_differs_from_the_defaults() -> None:
    minimal = helm.render(plan_of(FIXTURES / "features" / "minimal" / "kdist.yaml"))
    assert minimal == {"name": "minimal", "image": "trainer:1.0", "entrypoint": "train.py",
                       "nodes": {"min": 2, "max": 2, "count": 2}}
    node0 = helm.render(plan_of(FIXTURES / "features" / "node0-store" / "kdist.yaml"))
    assert node0["rendezvous"] == {"store": "node0"}
    gpu_plan = plan_of(ROOT / "trainers" / "examples" / "gpu-nccl.yaml")
    gpu = helm.render(gpu_plan)
    assert list(gpu) == [k for k in helm.chart_values(gpu_plan.spec) if k in gpu]  # kdist.yaml order
    assert helm.render(gpu_plan) == gpu  # deterministic


# ---- helm --------------------------------------------------------------------------------------


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize("example", [None, *EXAMPLES], ids=lambda p: spec_id(p) if p else "defaults")
def test_helm_lint_strict(example: Path | None) -> None:
    values = dump(helm.render(plan_of(example))) if example else ""
    result = helm_run("lint", "--strict", str(CHART), *(["-f", "-"] if example else []),
                      values=values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.helm
@needs_helm
def test_helm_install_dry_run_client() -> None:
    values = dump(helm.render(plan_of(ROOT / "trainers" / "examples" / "cpu-gloo.yaml")))
    result = helm_run("install", "job", str(CHART), "--dry-run=client", "--namespace", "ml-dev",
                      "-f", "-", values=values)
    assert result.returncode == 0, result.stderr
    assert "STATUS: pending-install" in result.stdout
    assert "kubectl -n ml-dev logs -f cifar-cpu-0" in result.stdout  # NOTES.txt
    assert "kind: StatefulSet" in result.stdout and "name: \"cifar-cpu-test-rdzv\"" in result.stdout


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_chart_equals_k8s_renderer(spec: Path) -> None:
    assert_same_objects(chart_docs(spec), k8s.render(plan_of(spec)))


@pytest.mark.helm
@needs_helm
def test_chart_quotes_hostile_words_like_kdist() -> None:
    """Shell quoting (shlex.quote), YAML-ambiguous words and `{{ }}` in values, through the
    chart. The values go in as JSON: see the next test for the YAML text."""
    plan = LaunchPlan(load_text(HOSTILE))
    assert_same_objects(template(json.dumps(helm.render(plan))), k8s.render(plan))


@pytest.mark.helm
@needs_helm
def test_hostile_words_survive_the_yaml_helm_values() -> None:
    plan = LaunchPlan(load_text(HOSTILE))
    assert_same_objects(template(dump(helm.render(plan))), k8s.render(plan))


@pytest.mark.helm
@needs_helm
def test_release_name_does_not_change_the_objects() -> None:
    values = dump(helm.render(plan_of(FIXTURES / "features" / "node0-store" / "kdist.yaml")))
    assert template(values, "a") == template(values, "a-much-longer-release-name")


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize("version", ["1.31.0", "1.35.0"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_chart_output_passes_strict_openapi(spec: Path, version: str) -> None:
    docs = chart_docs(spec)
    assert any(HOOK in d["metadata"].get("annotations", {}) for d in docs)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize("spec", [ROOT / "trainers" / "examples" / "cpu-gloo.yaml",
                                  ROOT / "trainers" / "examples" / "smoke-node0.yaml"], ids=spec_id)
def test_helm_test_pod_connects_to_the_store(spec: Path) -> None:
    plan = plan_of(spec)
    hooks = [d for d in chart_docs(spec) if HOOK in d["metadata"].get("annotations", {})]
    assert [(d["kind"], d["metadata"]["annotations"][HOOK]) for d in hooks] == [("Pod", "test")]
    pod = hooks[0]["spec"]
    (container,) = pod["containers"]
    host = plan.store_name if plan.standalone_store else f"{plan.name}-0.{plan.name}"
    r = plan.spec.rendezvous
    assert container["command"] == ["python3", "-c", WAIT_CODE, host, str(r.port),
                                    str(r.wait_timeout), "1"]  # "1": TCP connect, not just DNS
    assert container["image"] == plan.spec.image
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == k8s._container_security(plan)  # PSS restricted
    assert hooks[0]["metadata"]["labels"].items() >= plan.selector_job().items()  # NetworkPolicy


def rejected(values: str) -> str:
    """helm template's error message for values the chart must refuse (lowercased)."""
    result = helm_run("template", "job", str(CHART), "-f", "-", values=values)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    return result.stderr.lower()


# Helm 4 says `at '/resources': additional properties 'cpus' not allowed` and `at
# '/procsPerNode': got string, want integer`; Helm 3 words them differently, with the same words.
@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize(("values", "words"), [
    ("nmae: x\n", ["nmae", "not allowed"]),
    ("resources: {cpus: '2'}\n", ["resources", "cpus", "not allowed"]),
], ids=["top-level", "nested"])
def test_schema_rejects_an_unknown_key(values: str, words: list[str]) -> None:
    message = rejected(values)
    assert all(w.lower() in message for w in words), message


@pytest.mark.helm
@needs_helm
@pytest.mark.parametrize(("values", "words"), [
    ("procsPerNode: '2'\n", ["procsPerNode", "integer", "string"]),
    ("nodes: {min: 2, max: 3, count: two}\n", ["count", "integer", "string"]),
    ("resources: {cpu: 2}\n", ["cpu", "string", "number"]),
    ("rendezvous: {store: node1}\n", ["store", "standalone", "node0"]),
], ids=["integer", "nested-integer", "quantity", "enum"])
def test_schema_rejects_a_wrong_type(values: str, words: list[str]) -> None:
    message = rejected(values)
    assert all(w.lower() in message for w in words), message


@pytest.mark.helm
@needs_helm
def test_chart_fails_on_cross_field_mistakes() -> None:
    result = helm_run("template", "job", str(CHART), "-f", "-", values="nodes: {min: 2, max: 3, count: 5}\n")
    assert result.returncode != 0
    assert "nodes.count (5) must be within nodes.min:nodes.max (2:3)" in result.stderr


@pytest.mark.helm
@needs_helm
def test_chart_refuses_clusters_without_native_sidecars() -> None:
    result = helm_run("template", "job", str(CHART), "--kube-version", "1.28.5")
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in result.stderr, result.stderr
