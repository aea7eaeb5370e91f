"""`kdist validate`: the broken-input corpus, clean examples, schema parity, no tracebacks."""

from __future__ import annotations

import copy
import functools
import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import ROOT, Golden

from kdist.cli.validate import validate as validate_command
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s
from kdist.validate import RULES, Options, supported_versions, validate
from kdist.validate import docker as docker_mod
from kdist.validate.report import rules_markdown
from kdist.validate.schema import schema_set
from kdist.validate.torchrun import find_call, parse_endpoint
from kdist.yamlio import dump, dump_all

CORPUS = ROOT / "tests" / "validate_corpus"
CASES = sorted(CORPUS.glob("*.y*ml"))
EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: ([a-z0-9-]+)")
NO_DOCKER = Options()
# kdist's own k8s render binds get/patch on its StatefulSet to the node pods' service account
# (rbac-controller-patch, a warning) until the trainer container loses its token; drop the
# allowance then. CLEAN is how kdist's own output must validate meanwhile.
RENDER_KNOWN: frozenset[str] = frozenset()
CLEAN = Options(disabled=RENDER_KNOWN)
DOCKER_CLEAN = Options(disabled=RENDER_KNOWN, compose_runner=docker_mod.runner)


def expected_rule(path: Path) -> str:
    m = EXPECT.match(path.read_bytes())
    assert m, f"{path.name} must start with '# expect: RULE-ID'"
    return m[1].decode()


def rules_of(paths: list[Path | str], options: Options = NO_DOCKER) -> set[str]:
    return {f.rule for f in validate([str(p) for p in paths], options).findings}


def invoke(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(validate_command, ["--no-docker", *args], input=stdin,
                              catch_exceptions=False)


# ---- the corpus: one broken input per case, exactly its rule fires -------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case_fires_exactly_its_rule(case: Path) -> None:
    rule = expected_rule(case)
    assert rules_of([case], NO_DOCKER if rule in RENDER_KNOWN else CLEAN) == {rule}


def test_corpus_covers_every_rule() -> None:
    assert set(RULES) - {expected_rule(c) for c in CASES} == set()


COMPOSE_CASES = [c for c in CASES if re.search(rb"^(services|entrypoint):", c.read_bytes(), re.M)]


@pytest.mark.docker
@pytest.mark.skipif(not docker_mod.available(), reason="needs docker compose v2")
@pytest.mark.parametrize("case", COMPOSE_CASES, ids=[c.name for c in COMPOSE_CASES])
def test_compose_and_spec_cases_with_docker_compose_config(case: Path) -> None:
    report = validate([str(case)], DOCKER_CLEAN)
    assert {f.rule for f in report.findings} == {expected_rule(case)}
    if case.name == "compose-schema.yaml":
        (finding,) = report.findings
        assert "docker compose config" in finding.message and "stop_grace_periodd" in finding.message
        assert finding.line > 2


# ---- every example, rendered by kdist, validates clean --------------------------------------


def rendered(example: Path, tmp: Path) -> list[Path]:
    plan = LaunchPlan(load_file(example))
    out = []
    for name, text in (("k8s.yaml", dump_all(k8s.render(plan))),
                       ("docker-compose.yaml", dump(compose.render(plan)))):
        path = tmp / example.stem / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_renders_validate_clean(example: Path, tmp_path: Path) -> None:
    report = validate([str(p) for p in rendered(example, tmp_path)], NO_DOCKER)
    assert {f.rule for f in report.findings} == RENDER_KNOWN and report.objects > 0
    assert all(f.severity == "warning" for f in report.findings)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_spec_validates_clean(example: Path) -> None:
    assert validate([str(example)], CLEAN).findings == []


@pytest.mark.parametrize("version", [v for v in supported_versions() if v >= "1.29"])
def test_examples_pass_strict_schemas_of_every_supported_version(
        version: str, tmp_path: Path) -> None:
    paths = [str(p) for e in EXAMPLES for p in rendered(e, tmp_path)]
    report = validate(paths, Options(kubernetes_version=version, disabled=RENDER_KNOWN))
    assert report.findings == []


def test_committed_manifests_validate_clean() -> None:
    folder = ROOT / "manifests"
    if not folder.is_dir():
        pytest.skip("manifests/ is not committed yet")
    assert validate([str(folder)], CLEAN).findings == []


@pytest.mark.docker
@pytest.mark.skipif(not docker_mod.available(), reason="needs docker compose v2")
def test_examples_pass_docker_compose_config(tmp_path: Path) -> None:
    paths = [str(p) for e in EXAMPLES for p in rendered(e, tmp_path)]
    assert validate(paths, DOCKER_CLEAN).findings == []


# ---- the fast schema compiler agrees with jsonschema -----------------------------------------


@functools.cache
def _jsonschema_validator(version: str, api_version: str, kind: str) -> Any:
    """What kubernetes-validate builds per object (here cached): Draft 2020-12 + registry."""
    import jsonschema  # type: ignore[import-untyped]
    from referencing import Registry, Resource

    schemas = schema_set(version)
    flat = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = json.loads((schemas.dir / f"{kind.lower()}-{flat}.json").read_text())
    registry = Resource.from_contents(schemas.defs_json) @ Registry()
    return jsonschema.Draft202012Validator(
        schema, registry=Resource.from_contents(schema) @ registry)


def _jsonschema_errors(version: str, doc: dict[str, Any]) -> list[Any]:
    validator = _jsonschema_validator(version, doc["apiVersion"], doc["kind"])
    return list(validator.iter_errors(doc))


def _known_docs(version: str) -> list[dict[str, Any]]:
    docs = [d for e in EXAMPLES for d in k8s.render(LaunchPlan(load_file(e)))]
    for case in CASES:
        try:
            docs += [d for d in yaml.safe_load_all(case.read_bytes()) if isinstance(d, dict)]
        except (yaml.YAMLError, ValueError):
            continue
    return [d for d in docs if isinstance(d.get("apiVersion"), str)
            and isinstance(d.get("kind"), str)
            and schema_set(version).for_kind(d["apiVersion"], d["kind"]) is not None]


WEIRD: list[Any] = [None, 0, 1.5, 2.0, True, "", "x", "29400", [], {}, [1], {"a": 1}]


def _mutate(doc: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for _ in range(rnd.randint(1, 6)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = rnd.choice(keys)
        if not isinstance(node[key], (dict, list)) or rnd.random() < 0.3:
            if isinstance(node, dict) and rnd.random() < 0.3:
                node[f"{key}x"] = 1
            else:
                node[key] = copy.deepcopy(rnd.choice(WEIRD))
            break
        node = node[key]
    return doc


def test_compiled_schemas_agree_with_jsonschema() -> None:
    version = "1.31"
    rnd = random.Random(20240601)
    docs = _known_docs(version)
    for doc in docs + [_mutate(rnd.choice(docs), rnd) for _ in range(300)]:
        check = schema_set(version).for_kind(str(doc.get("apiVersion")), str(doc.get("kind")))
        if check is None:
            continue
        mine: list[Any] = []
        check(doc, (), mine)
        assert bool(mine) == bool(_jsonschema_errors(version, doc)), (doc, mine)


def test_schemas_and_validators_are_loaded_once() -> None:
    schemas = schema_set("1.31")
    assert schema_set("1.31") is schemas
    assert schemas.for_kind("apps/v1", "StatefulSet") is schemas.for_kind("apps/v1", "StatefulSet")
    assert schemas.for_kind("apps.example.com/v1", "StatefulSet") is None  # not the apps group


# ---- no traceback, whatever the input -------------------------------------------------------

NASTY: dict[str, bytes] = {
    "binary.yaml": b"\x00\x01\x02\xff",
    "latin1.yaml": b"name: caf\xe9\n",
    "empty.yaml": b"",
    "only-comments.yaml": b"# nothing here\n",
    "not-a-mapping.yaml": b"just a string\n",
    "ints.yaml": b"- 1\n- 2\n",
    "invalid.yaml": b"kind: [Service\n",
    "no-kind.yaml": b"apiVersion: v1\nmetadata: {name: x}\n",
    "tabs.yaml": b"apiVersion: v1\n\tkind: Service\n",
    "deep.yaml": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "aliases.yaml": b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n".encode()
        for i in range(8)),
    "complex-key.yaml": b"? [a, b]\n: c\n",
    "python-tag.yaml": b"!!python/object/apply:os.system ['true']\n",
    "services-not-map.yaml": b"services: 5\n",
    "spec-list.yaml": b"entrypoint: [1]\nnodes: {}\n",
    "list-kind.yaml": b"apiVersion: v1\nkind: List\nitems: [1, {kind: Service}]\n",
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_no_traceback_for_nasty_input(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(NASTY[name])
    result = invoke(str(path))
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    expected = 2 if name in ("binary.yaml", "latin1.yaml") else None
    assert expected is None or result.exit_code == expected


def test_nasty_inputs_exit_codes(tmp_path: Path) -> None:
    for name, data in NASTY.items():
        (tmp_path / name).write_bytes(data)
    assert invoke(str(tmp_path / "binary.yaml")).exit_code == 2
    assert invoke(str(tmp_path / "missing.yaml")).exit_code == 2
    assert invoke(str(tmp_path / "invalid.yaml")).exit_code == 1
    assert invoke(str(tmp_path / "ints.yaml")).exit_code == 1
    assert invoke(str(tmp_path / "no-kind.yaml")).exit_code == 1
    assert invoke(str(tmp_path / "empty.yaml")).exit_code == 0  # a warning only


def test_real_entry_point_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"\x00binary")
    done = subprocess.run([sys.executable, "-m", "kdist.cli.validate", "--no-docker",
                           str(tmp_path / "x.yaml"), str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert "binary file" in done.stdout and "no such file" in done.stdout


def test_random_mutations_never_raise() -> None:
    rnd = random.Random(7)
    bases = [d for e in EXAMPLES for d in k8s.render(LaunchPlan(load_file(e)))]
    composes = [compose.render(LaunchPlan(load_file(e))) for e in EXAMPLES]
    texts = []
    for _ in range(150):
        texts.append(dump_all([_mutate(rnd.choice(bases), rnd) for _ in range(3)]))
        texts.append(dump(_mutate(rnd.choice(composes), rnd)))
    for i, text in enumerate(texts):
        chars = list(text)
        if i % 3 == 0:  # and some text-level damage
            pos = rnd.randrange(len(chars))
            chars[pos:pos + rnd.randint(1, 9)] = rnd.choice([":", "[", "- ", "\t", "&a *a"])
        result = invoke("-", stdin="".join(chars).encode())
        assert result.exit_code in (0, 1), result.output


# ---- CLI behaviour -----------------------------------------------------------------------------


def test_exit_codes_and_fail_on(tmp_path: Path) -> None:
    warning_only = CORPUS / "image-pull-policy.yaml"
    assert invoke(str(warning_only)).exit_code == 0
    assert invoke("--fail-on", "warning", str(warning_only)).exit_code == 1
    assert invoke(str(CORPUS / "pss-privileged.yaml")).exit_code == 1
    assert invoke("--disable", "pss-privileged", str(CORPUS / "pss-privileged.yaml")).exit_code == 0
    bad = invoke("--disable", "pss-privilegd", "x.yaml")
    assert bad.exit_code == 2 and "did you mean 'pss-privileged'" in bad.output
    assert invoke("-k", "1.99", str(warning_only)).exit_code == 2


def test_disable_accepts_comma_lists() -> None:
    case = CORPUS / "compose-gpu-count.yaml"
    assert invoke("--disable", "image-tag,compose-gpu-devices", str(case)).exit_code == 0


def test_json_output() -> None:
    result = invoke("-o", "json", str(CORPUS / "pss-run-as-user.yaml"))
    doc = json.loads(result.output)
    (finding,) = doc["findings"]
    assert finding["rule"] == "pss-run-as-user" and finding["severity"] == "error"
    assert finding["object"] == "StatefulSet/smoke"
    assert finding["path"] == "spec.template.spec.containers[0].securityContext.runAsUser"
    lines = (CORPUS / "pss-run-as-user.yaml").read_text().splitlines()
    assert lines[finding["line"] - 1].strip() == "runAsUser: 0"
    assert doc["summary"] == {"errors": 1, "warnings": 0} and result.exit_code == 1


def test_github_output_is_workflow_commands() -> None:
    result = invoke("-o", "github", str(CORPUS / "torchrun-rdzv-conf.yaml"))
    first = result.output.splitlines()[0]
    assert re.match(r"^::error file=[^,]+,line=\d+,col=\d+,title=kdist validate%3A "
                    r"torchrun-rdzv-conf::", first)
    assert "did you mean 'join_timeout'" in first


def test_text_output_has_no_colour_off_a_tty() -> None:
    result = invoke(str(CORPUS / "pss-privileged.yaml"))
    assert "\x1b[" not in result.output
    assert "error [pss-privileged] StatefulSet/smoke" in result.output


def test_torchrun_finding_points_at_the_torchrun_line() -> None:
    case = CORPUS / "torchrun-max-restarts.yaml"
    (finding,) = validate([str(case)], NO_DOCKER).findings
    line = case.read_text().splitlines()[finding.line - 1]
    assert line.strip().startswith("exec torchrun") and "--max-restarts 0" in line


def test_spec_findings_point_at_the_spec_field() -> None:
    case = CORPUS / "spec-shm.yaml"
    findings = validate([str(case)], CLEAN).findings
    assert {f.object.split(" (")[1] for f in findings} == {"rendered k8s)", "rendered compose)"}
    lines = case.read_text().splitlines()
    assert {lines[f.line - 1].strip() for f in findings} == {"shm: 512Mi"}


def test_spec_validate_disable(tmp_path: Path) -> None:
    spec = (CORPUS / "spec-image-latest.yaml").read_text()
    path = tmp_path / "kdist.yaml"
    path.write_text(spec + "validate:\n  disable: [image-tag]\n", encoding="utf-8")
    assert validate([str(path)], CLEAN).findings == []


def test_docs_rule_table_is_current(golden: Golden) -> None:
    path = ROOT / "docs" / "validate.md"
    text = path.read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- rules:begin")) + 1
    end = text.index("<!-- rules:end -->")
    golden.check(path, text[:start] + rules_markdown() + text[end:])


def test_list_rules() -> None:
    result = invoke("--list-rules")
    assert result.exit_code == 0
    assert all(rule in result.output for rule in RULES)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule) for rule in RULES)


def test_inputs_directories_globs_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "bad.yml").write_bytes((CORPUS / "pss-privileged.yaml").read_bytes())
    (tmp_path / "a" / "notes.yaml").write_text("title: not a manifest\n")  # skipped in folders
    chart = tmp_path / "a" / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    (chart / "templates" / "x.yaml").write_text("{{ .Values.broken }\n")  # not YAML: skipped
    report = validate([str(tmp_path / "a")], NO_DOCKER)
    assert {f.rule for f in report.findings} == {"pss-privileged"}
    assert report.skipped == [str(tmp_path / "a" / "notes.yaml")]
    assert rules_of([str(tmp_path / "**" / "*.yml")]) == {"pss-privileged"}
    (tmp_path / "a" / "helm-values.yaml").write_text("name: x\nentrypoint: t.py\nnodes: 2\n")
    assert validate([str(tmp_path / "a" / "helm-values.yaml")], NO_DOCKER).skipped != []
    kind_config = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes: [{role: worker}]\n"
    (tmp_path / "a" / "cluster.yaml").write_text(kind_config)
    assert validate([str(tmp_path / "a" / "cluster.yaml")], NO_DOCKER).skipped != []
    assert rules_of([str(tmp_path / "nothing-*.yaml")]) == {"input-unreadable"}
    assert rules_of([str(tmp_path / "a" / "notes.yaml")]) == {"k8s-object"}  # named: checked
    piped = invoke("-", stdin=(CORPUS / "pss-host-ports.yaml").read_bytes())
    assert piped.exit_code == 1 and "<stdin>:" in piped.output


def test_default_path_is_kdist_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke().exit_code == 2
    (tmp_path / "kdist.yaml").write_bytes(EXAMPLES[0].read_bytes())
    result = invoke("--disable", ",".join(RENDER_KNOWN))
    assert result.exit_code == 1 and "spec-entrypoint" in result.output  # not in tmp_path
    entrypoint = tmp_path / yaml.safe_load(EXAMPLES[0].read_text())["entrypoint"]
    entrypoint.parent.mkdir(parents=True)
    entrypoint.write_text("print('train')\n")
    result = invoke("--disable", ",".join(RENDER_KNOWN))
    assert result.exit_code == 0 and "OK" in result.output


def test_importing_the_command_stays_light() -> None:
    code = ("import sys, kdist.cli.validate; "
            "print(any(m.startswith(('jsonschema', 'kdist.validate')) for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


INDEXED_JOB = """\
apiVersion: v1
kind: Service
metadata: {name: train}
spec: {clusterIP: None, publishNotReadyAddresses: true, selector: {job-name: train}}
---
apiVersion: v1
kind: Service
metadata: {name: train-master}
spec:
  selector: {job-name: train, batch.kubernetes.io/job-completion-index: "0"}
  ports: [{port: 29400}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: train}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  template:
    spec:
      subdomain: train
      restartPolicy: Never
      containers:
      - name: t
        image: x:1
        ports: [{containerPort: 29400}]
        readinessProbe: {tcpSocket: {port: 29400}}
        command: [torchrun, --nnodes, "2", --rdzv-endpoint, "train-0.train:29400", t.py]
"""


def test_indexed_job_pods_and_controller_labels_resolve(tmp_path: Path) -> None:
    """Pod DNS of Indexed Jobs and labels controllers add (job-name, ...) are not dangling."""
    path = tmp_path / "job.yaml"
    path.write_text(INDEXED_JOB, encoding="utf-8")
    quiet = {r.id for r in RULES.values() if r.group in ("pss", "practice")} | {"torchrun-shm"}
    assert validate([str(path)], Options(disabled=frozenset(quiet))).findings == []
    path.write_text(INDEXED_JOB.replace("train-0.train", "train-2.train"), encoding="utf-8")
    assert rules_of([path], Options(disabled=frozenset(quiet))) == {"rdzv-endpoint"}


# ---- torchrun command lines ------------------------------------------------------------------


def test_find_call_in_shell_script_uses_the_last_torchrun_line() -> None:
    script = ("set -e\nexport TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1\n"
              "if [ \"$HOSTNAME\" = x-0 ]; then exec torchrun --nnodes=1:2 a.py; fi\n"
              "exec torchrun --nnodes 2:4 --nproc_per_node=2 \\\n  --rdzv-endpoint x-0.x "
              "--standalone train.py --lr 1\n")
    call = find_call(["/bin/sh", "-ec", script])
    assert call is not None and call.script_line == 3 and call.element == 2
    assert call.options == {"nnodes": "2:4", "nproc-per-node": "2", "rdzv-endpoint": "x-0.x"}
    assert call.flags == {"standalone"}
    assert call.env == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    direct = find_call(["python3", "-m", "torch.distributed.run", "--max_restarts", "2", "t.py"])
    assert direct is not None and direct.option("max-restarts", {}) == "2"
    assert direct.option("nnodes", {"PET_NNODES": "1:3"}) == "1:3"  # torchrun's env fallback
    assert find_call(["python", "train.py"]) is None


def test_parse_endpoint() -> None:
    assert parse_endpoint("job-0.job:29500") == ("job-0.job", 29500)
    assert parse_endpoint("store") == ("store", 29400)
    assert parse_endpoint("[::1]:1234") == ("::1", 1234)


def test_torchrun_option_table_matches_torch() -> None:
    run = pytest.importorskip("torch.distributed.run")
    from kdist.validate.torchrun import FLAG_OPTIONS, SHORT, VALUE_OPTIONS

    names = {}
    for action in run.get_args_parser()._actions:
        long = [o for o in action.option_strings if o.startswith("--") and "_" not in o]
        if long:
            names[long[0][2:]] = action.nargs == 0
    assert {k for k, flag in names.items() if not flag} == set(VALUE_OPTIONS)
    assert {k for k, flag in names.items() if flag} == set(FLAG_OPTIONS)
    assert set(SHORT.values()) <= set(names)


def test_rdzv_conf_keys_are_read_by_torch() -> None:
    torch_dir = pytest.importorskip("torch.distributed.elastic.rendezvous").__path__[0]
    from kdist.validate.torchrun import RDZV_KEYS

    source = "".join(p.read_text() for p in Path(torch_dir).glob("*.py"))
    read = set(re.findall(r"""get(?:_as_int|_as_bool)?\(\s*["']([a-z_]+)["']""", source))
    read |= {f"{k}_timeout" for k in re.findall(r'_get_timeout\(params, "([a-z_]+)"\)', source)}
    extra = {"timeout", "use_libuv", "rank"}  # launcher default, torch < 2.4, static backend
    assert {"join_timeout", "read_timeout", "is_host", "store_type"} <= read
    assert set(RDZV_KEYS) - extra <= read
