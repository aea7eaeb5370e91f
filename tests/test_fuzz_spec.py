"""Property-based hostile input (issue 14): generated specs and manifests through `render` (every
target), `diff` and `validate`, in process. Every run ends in a clear exit status (never 70, no
exception, no traceback) within a time bound; a spec that renders gives Kubernetes objects that
pass strict OpenAPI, and Compose files that `docker compose config` accepts.

`make test` runs a few hundred examples; `make fuzz` (KDIST_FUZZ=1) runs many more and prints
the exit statuses it saw per command.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdist.cli import cli
from kdist.spec.load import RULES
from kdist.spec.model import JobSpec
from kdist.targets import names

FUZZ = bool(os.environ.get("KDIST_FUZZ"))
settings.register_profile("test", max_examples=100, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", parent=settings.get_profile("test"), max_examples=1000)
settings.load_profile("fuzz" if FUZZ else "test")
SCALE = 20 if FUZZ else 1  # the OpenAPI and docker samples grow with the run

SECONDS = 10.0  # one command on one input, on a loaded 2-core machine
MINIMAL = FIXTURES / "features" / "minimal" / "kdist.yaml"
COMMANDS = (*(("render", "-t", t) for t in names("render")), ("diff",), ("validate", "--no-docker"))
SEEN: Counter[tuple[str, int]] = Counter()
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# ---- strategies ------------------------------------------------------------------------------

TRICKY = ["", " ", "$HOME", "${HOME}", "$$", "$", "a\n", "\n", "a\rb", "\x00", "\x1b]0;t\x07",
          "\u202e", "a\u2028b", "\t", "/", "/tmp", "/dev/shm", "/x:ro", "..", "/a/../b", "/c/",
          "-x", "--help", "trainer:1.0", "Trainer:1", "a b", "kubernetes.io/arch", "1", "1e400",
          "0", "-1", "2:4", "4:2", "0:0", "1:1000", "1Gi", "1Ei", "9" * 40, "500m", "0.0001", "<<",
          "~", "null", "true", "yes", "{}", "[]", "Exists", "Equal", "NoSchedule", "x" * 5000,
          "\u0663:\u0664", "ghcr.io/a/b@sha256:" + "a" * 64, "localhost:5000/a:b", "PET_X"]
TEXT = st.one_of(st.sampled_from(TRICKY), st.text(max_size=24))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def field_paths(cls: type = JobSpec, prefix: str = "") -> list[str]:
    """Every dotted path of the spec (from the loader's own rules)."""
    out = []
    for name, rule_ in RULES[cls].items():
        path = f"{prefix}{name}"
        out.append(path)
        section = getattr(rule_, "json_schema", {}).get("section")
        if section is not None:
            out += field_paths(section, path + ".")
    return out


FIELDS = field_paths()
BASE: dict[str, Any] = {"name": "job", "image": "trainer:1.0", "entrypoint": "train.py",
                        "nodes": 2}
# Values that load: the run reaches the renderers (and the OpenAPI and Compose checks).
PLAUSIBLE: dict[str, list[Any]] = {
    "name": ["j", "a" * 40, "job-2"],
    "image": ["trainer:1.0", "localhost:5000/team/trainer:v1", "ghcr.io/a/b@sha256:" + "a" * 64],
    "entrypoint": ["train.py", "/app/train.py", "python"],
    "args": [[], ["--lr", "0.1"], ["a\nb", "$HOME", "${X}", "it's", "\t", "é", "\u2028", "-"]],
    "nodes": [1, 1000, "1:1000", {"min": 1, "max": 3, "count": 2}],
    "procs_per_node": [1, 64],
    "resources": [{"cpu": "4096", "memory": "1Pi", "shm": "1Pi"}, {"cpu": "1m", "memory": 1,
                                                                   "shm": 1}],
    "rendezvous": [{"join_timeout": 2**31 - 1, "last_call_timeout": 1, "wait_timeout": 0,
                    "keep_alive_max_attempt": 10000}, {"store": "node0", "port": 65535}],
    "max_restarts": [0, 1000],
    "env": [{"A": "${B}", "C": "x\ny", "D": True, "E": 1.5}, {}],
    "checkpoint": [{"path": "/tmp/c"}, {"path": "/a/b.c/d_e-f", "size": "1Pi"}],
    "network_interface": ["eth0", "en.1:2"],
    "network": [{"latency": "1s", "jitter": "1s", "loss": "100%"}],
    "run_as_user": [1, 2**31 - 1],
    "compose": [{"build": {"context": "${HOME}", "dockerfile": "$x/D"}}],
    "k8s": [{"tolerations": [{"operator": "Exists"}, {"key": "a.b/c", "value": "v",
                                                      "effect": "NoExecute"}],
             "node_selector": {"kubernetes.io/arch": "amd64", "x": "", "y": True},
             "namespace": "ns", "queue": "q", "image_pull_secrets": ["r"]}],
    "validate": [{"disable": ["image-tag"]}],
}


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


@st.composite
def hostile_specs(draw: st.DrawFn) -> str:
    """A spec with a few fields (known, unknown, nested) set to anything at all."""
    doc = {k: v for k, v in BASE.items() if draw(st.integers(0, 9)) > 0}
    for path in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        set_path(doc, path, draw(VALUES))
    if draw(st.booleans()):
        doc[draw(TEXT)] = draw(VALUES)
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))


@st.composite
def plausible_specs(draw: st.DrawFn) -> str:
    doc = dict(BASE)
    for key in draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=5, unique=True)):
        doc[key] = draw(st.sampled_from(PLAUSIBLE[key]))
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))


SNIPPETS = ["&a ", "*a", "<<: *a\n", "<<: [*a, *a]\n", "[" * 400, "{" * 50, "\t", "%YAML 1.1\n",
            "---\n", "...\n", "!!python/object/apply:os.system ['true']", "!!binary AAAA",
            "? ", ": ", "- ", "'", '"', "\\", "\x00", "\x1b", "\ufeff", "#", "|\n", ">-\n",
            "x: &b [*b]\n", "a: 1\na: 2\n", "\r\n", "\u2028"]


@st.composite
def mangled_yaml(draw: st.DrawFn) -> str:
    """A valid spec's text with YAML structure spliced in (anchors, aliases, merge keys, tags,
    depth, control characters)."""
    text = yaml.safe_dump(dict(BASE) | {"resources": {"cpu": "1"}})
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=8))) + text[at:]
    return text


@st.composite
def anchored_specs(draw: st.DrawFn) -> str:
    """Merge keys, anchors and aliases between sections, deep nesting and alias bombs: what a
    YAML writer never emits but a person (or an attacker) writes."""
    lines = [f"{k}: {v}" for k, v in BASE.items()]
    kind = draw(st.sampled_from(["merge", "top-merge", "deep", "bomb", "alias"]))
    sections = [k for k in PLAUSIBLE if isinstance(PLAUSIBLE[k][0], dict)]
    source, target = draw(st.sampled_from(sections)), draw(st.sampled_from(sections))
    flow = yaml.safe_dump(draw(st.sampled_from(PLAUSIBLE[source])), default_flow_style=True,
                          width=10**6).strip()
    if kind == "merge":
        lines += [f"{source}: &a {flow}", f"{target}:", "  <<: *a"]
        if draw(st.booleans()):
            lines.append(f"  {draw(st.sampled_from(FIELDS)).split('.')[-1]}: 1")
    elif kind == "top-merge":
        lines = [f"<<: {{{', '.join(lines)}}}", f"{source}: {flow}"]
    elif kind == "deep":
        n = draw(st.integers(1, 3000))
        lines.append(f"{draw(st.sampled_from(FIELDS)).split('.')[0]}: {'[' * n}{']' * n}")
    elif kind == "bomb":
        width, depth = draw(st.integers(2, 10)), draw(st.integers(1, 9))
        lines.append("env:\n  b0: &b0 [" + ", ".join(["x"] * width) + "]")
        lines += [f"  b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * width) + "]"
                  for i in range(1, depth)]
        lines.append(f"args: *b{depth - 1}")
    else:
        lines += [f"{source}: &a {flow}", f"{target}: *a"]
    return "\n".join(lines) + "\n"


# ---- running ---------------------------------------------------------------------------------


def run(args: list[str]) -> Result:
    start = time.monotonic()
    result = CliRunner().invoke(cli, args)
    took = time.monotonic() - start
    SEEN[(" ".join(args[:3] if args[0] == "render" else args[:1]), result.exit_code)] += 1
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert took < SECONDS, f"{args} took {took:.1f} s"
    return result


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def check_output(command: str, text: str) -> None:
    """What any render must hold: no value reaches Compose's interpolation (each `$` is `$$`),
    no control characters but tab and newline in any value."""
    docs = list(yaml.safe_load_all(text))
    for value in (s for doc in docs for s in strings(doc)):
        assert not CONTROL.search(value), (command, value)
        if command == "render -t compose":
            assert "$" not in value.replace("$$", ""), value


def check_spec(tmp: Path, text: str) -> dict[str, Result]:
    """Every command on one spec: exit 0 or 2 (validate: 0, 1 for findings, or 2)."""
    spec = tmp / "kdist.yaml"
    spec.write_text(text, encoding="utf-8")
    results = {}
    for command in COMMANDS:
        args = [*command, str(spec)] if command[0] == "validate" else [*command, "-f", str(spec)]
        result = run(args)
        allowed = (0, 1, 2) if command[0] == "validate" else (0, 2)
        assert result.exit_code in allowed, (command, result.exit_code, result.output)
        results[" ".join(command)] = result
        if command[0] == "render" and result.exit_code == 0:
            check_output(" ".join(command), result.stdout)
    render_codes = {r.exit_code for k, r in results.items() if k != "validate --no-docker"}
    assert len(render_codes) == 1, f"render and diff disagree on the spec: {results}"
    return results


@pytest.fixture(scope="module", autouse=True)
def counts() -> Iterator[None]:
    yield
    if FUZZ:
        print("\nkdist fuzz: exit statuses per command (command, exit status): count")
        for (command, code), n in sorted(SEEN.items()):
            print(f"  {command:<24} exit {code}: {n}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"  peak memory of this process: {peak} MiB")


def test_hostile_specs_end_in_a_clear_status(tmp_path: Path) -> None:
    @given(hostile_specs())
    def check(text: str) -> None:
        check_spec(tmp_path, text)

    check()


def test_anchored_yaml_ends_in_a_clear_status(tmp_path: Path) -> None:
    @given(anchored_specs())
    def check(text: str) -> None:
        check_spec(tmp_path, text)

    check()


def test_mangled_yaml_ends_in_a_clear_status(tmp_path: Path) -> None:
    @given(mangled_yaml())
    def check(text: str) -> None:
        check_spec(tmp_path, text)

    check()


def strict_openapi(text: str) -> None:
    for doc in yaml.safe_load_all(text):
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_plausible_specs_render_valid_kubernetes(tmp_path: Path) -> None:
    """Specs that load render for every target; the Kubernetes objects pass strict OpenAPI."""
    rendered = []

    @settings(max_examples=30 * SCALE)
    @given(plausible_specs())
    def check(text: str) -> None:
        results = check_spec(tmp_path, text)
        k8s = results["render -t k8s"]
        if k8s.exit_code == 0:
            rendered.append(text)
            strict_openapi(k8s.stdout)
            assert yaml.safe_load(results["render -t helm-values"].stdout)

    check()
    assert len(rendered) >= 8 * SCALE, "too few plausible specs loaded to test the renderers"


def compose_v2() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.docker
def test_plausible_specs_pass_docker_compose_config(tmp_path: Path) -> None:
    """A sample (docker compose is slow): what renders, Compose reads without interpolating."""
    if not compose_v2():
        pytest.skip("docker compose v2 is not available")
    checked = []

    @settings(max_examples=3 * SCALE)
    @given(plausible_specs())
    def check(text: str) -> None:
        results = check_spec(tmp_path, text)
        out = results["render -t compose"]
        if out.exit_code != 0:
            return
        checked.append(text)
        file = tmp_path / "docker-compose.yaml"
        file.write_text(out.stdout, encoding="utf-8")
        done = subprocess.run(["docker", "compose", "-f", str(file), "config", "-q"],
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ.get("PATH", ""), "HOME": "/leak"})
        assert done.returncode == 0 and done.stderr == "", done.stderr

    check()
    assert checked, "no generated spec rendered: nothing went through docker compose config"


@st.composite
def edited_manifests(draw: st.DrawFn) -> tuple[str, str]:
    """A fresh render of the minimal spec with values anywhere replaced: (which, YAML text)."""
    from kdist.plan import LaunchPlan
    from kdist.spec.load import load_file
    from kdist.targets.compose import render as compose
    from kdist.targets.k8s import render as k8s

    plan = LaunchPlan(load_file(MINIMAL))
    which = draw(st.sampled_from(["compose", "k8s"]))
    docs: Any = [compose.render(plan)] if which == "compose" else k8s.render(plan)
    for _ in range(draw(st.integers(1, 3))):
        node = draw(st.sampled_from(docs))
        path = []
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 4)):
            key = draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict)
                                       else range(len(node))))
            path.append((node, key))
            node = node[key]
        if path:
            parent, key = path[-1]
            parent[key] = draw(VALUES)
    text = yaml.safe_dump_all(docs, allow_unicode=True)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
    return which, text


def test_diff_of_edited_manifests_ends_in_a_clear_status(tmp_path: Path) -> None:
    @given(edited_manifests())
    def check(edited: tuple[str, str]) -> None:
        which, text = edited
        file = tmp_path / f"{which}.yaml"
        file.write_text(text, encoding="utf-8")
        result = run(["diff", "-f", str(MINIMAL), f"--{which}", str(file)])
        assert result.exit_code in (0, 1, 2), result.output
        assert "\x1b" not in result.output

    check()
