"""Hostile input on the spec side (issue 14): every bad spec or manifest is a clear error (exit
2, file:line:col: path: message), nothing reaches Compose's interpolation or the terminal raw,
and `render -o` never replaces a file silently. The messages themselves are error goldens
(tests/fixtures/errors/); here: behaviour across commands, budgets and output files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import FIXTURES

from kdist.cli import cli
from kdist.plan import LaunchPlan
from kdist.spec.load import load_text
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s

MINIMAL = FIXTURES / "features" / "minimal" / "kdist.yaml"
BASE = "name: job\nimage: trainer:1.0\nentrypoint: train.py\nnodes: 2\n"


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- specs that render what a cluster or Compose refuses or misreads --------------------------

BAD = {
    "image with $": ("image", 'image: "trainer:${HOME}"'),
    "image with a newline": ("image", 'image: "trainer:1.0\\n"'),
    "image in uppercase": ("image", "image: Trainer:1.0"),
    "name with a newline": ("name", 'name: "job\\n"'),
    "entrypoint is an option": ("entrypoint", "entrypoint: --standalone"),
    "entrypoint with NUL": ("entrypoint", 'entrypoint: "train.py\\0"'),
    "checkpoint at /": ("checkpoint.path", "checkpoint: {path: /}"),
    "checkpoint at /tmp": ("checkpoint.path", "checkpoint: {path: /tmp}"),
    "checkpoint at /dev/shm": ("checkpoint.path", "checkpoint: {path: /dev/shm}"),
    "checkpoint read-only": ("checkpoint.path", 'checkpoint: {path: "/x:ro"}'),
    "checkpoint with ..": ("checkpoint.path", "checkpoint: {path: /a/../b}"),
    "checkpoint relative": ("checkpoint.path", "checkpoint: {path: ckpt}"),
    "checkpoint with $": ("checkpoint.path", 'checkpoint: {path: "/c${HOME}"}'),
    "empty toleration": ("k8s.tolerations[0]", "k8s: {tolerations: [{}]}"),
    "toleration operator": ("k8s.tolerations[0].operator",
                            "k8s: {tolerations: [{key: a, operator: Maybe}]}"),
    "toleration effect": ("k8s.tolerations[0].effect",
                          "k8s: {tolerations: [{key: a, effect: Never}]}"),
    "node_selector key": ("k8s.node_selector.a b", 'k8s: {node_selector: {"a b": c}}'),
    "node_selector value": ("k8s.node_selector.a", 'k8s: {node_selector: {a: "-c"}}'),
    "arg with ESC": ("args[0]", 'args: ["\\e]0;title\\a"]'),
    "arg with CR": ("args[0]", 'args: ["a\\rb"]'),
    "env with NUL": ("env.A", 'env: {A: "x\\0"}'),
    "env key with a newline": ("env.'A\\n'", 'env: {"A\\n": x}'),
    "shm over memory": ("resources.shm", "resources: {memory: 1Gi, shm: 2Gi}"),
    "nodes over 1000": ("nodes", "nodes: 100000000"),
    "timeout over 2^31": ("rendezvous.join_timeout",
                          "rendezvous: {join_timeout: 9223372036854775808}"),
    "memory over 1Pi": ("resources.memory", "resources: {memory: 1Ei}"),
    "cpu over 4096": ("resources.cpu", "resources: {cpu: 100000}"),
    "cpu under 1m": ("resources.cpu", 'resources: {cpu: "0.0001"}'),
    "quantity with 400 digits": ("resources.memory", f"resources: {{memory: {'9' * 400}}}"),
}


def with_line(line: str) -> str:
    """BASE with `line` in place of the key it sets (or added)."""
    key = line.split(":")[0]
    kept = [x for x in BASE.splitlines() if x.split(":")[0] != key]
    return "\n".join([*kept, line]) + "\n"


@pytest.mark.parametrize("command", [["render", "-t", "compose"], ["render", "-t", "k8s"],
                                     ["render", "-t", "helm-values"], ["diff"]],
                         ids=lambda c: " ".join(c[:3]))
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_exit_2_naming_the_field(case: str, command: list[str], tmp_path: Path) -> None:
    path, line = BAD[case]
    spec = write(tmp_path / "kdist.yaml", with_line(line))
    result = invoke(*command, "-f", str(spec))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{spec}:") and f": {path}: " in first, first
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr


def test_multi_line_args_and_env_are_kept(tmp_path: Path) -> None:
    spec = write(tmp_path / "kdist.yaml", BASE + 'args: ["--note", "a\\nb\\tc", "$HOME"]\n'
                 'env: {NOTE: "x\\ny"}\n')
    job = load_text(spec.read_text())
    assert job.args == ("--note", "a\nb\tc", "$HOME") and dict(job.env)["NOTE"] == "x\ny"
    result = invoke("diff", "-f", str(spec))
    assert result.exit_code == 0, result.output
    assert "all " in result.stderr + result.stdout


# ---- Compose interpolation ----------------------------------------------------------------


def test_every_dollar_reaches_compose_escaped(tmp_path: Path) -> None:
    text = BASE + ('compose: {build: {context: "${HOME}", dockerfile: "D$x"}}\n'
                   'args: ["$SECRET"]\nenv: {A: "${B}"}\n')
    doc = compose.render(LaunchPlan(load_text(text)))
    node = doc["services"]["node-0"]
    assert node["build"] == {"context": "$${HOME}", "dockerfile": "D$$x"}
    assert node["environment"]["A"] == "$${B}"
    assert "'$$SECRET'" in node["command"][2]
    strings = [s for s in yaml.safe_dump(doc).split() if "$" in s]
    assert strings and all("$$" in s for s in strings)


def test_diff_sees_the_real_value_of_an_escaped_mount(tmp_path: Path) -> None:
    """A hand-edited compose file that mounts at /c$$x (a literal $) differs from /checkpoints."""
    p = LaunchPlan(load_text(BASE))
    doc = compose.render(p)
    for svc in doc["services"].values():
        if "volumes" in svc:
            svc["volumes"] = ["checkpoints:/c$$x"]
    c = write(tmp_path / "c.yaml", yaml.safe_dump(doc))
    spec = write(tmp_path / "kdist.yaml", BASE)
    result = invoke("diff", "-f", str(spec), "--compose", str(c), "-o", "json")
    assert result.exit_code == 1
    rows = {r["row"]: r for r in yaml.safe_load(result.stdout)["rows"]}
    assert rows["checkpoint mount"]["compose"] == "/c$x"


@pytest.mark.docker
def test_docker_compose_reads_dollars_literally(tmp_path: Path, docker_compose: list[str]) -> None:
    import subprocess

    text = BASE + 'args: ["${HOME}"]\nenv: {A: "$PATH"}\n'
    out = write(tmp_path / "docker-compose.yaml", yaml.safe_dump(compose.render(
        LaunchPlan(load_text(text)))))
    done = subprocess.run([*docker_compose, "-f", str(out), "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/leak"})
    assert done.returncode == 0, done.stderr
    node = yaml.safe_load(done.stdout)["services"]["node-0"]
    assert node["environment"]["A"] == "$$PATH"  # config prints the literal `$` escaped again
    assert "$${HOME}" in node["command"][2] and "/leak" not in done.stdout


@pytest.fixture
def docker_compose() -> list[str]:
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose v2 is not available")
    return ["docker", "compose"]


# ---- YAML structure: merge keys, depth, aliases, size ---------------------------------------


def test_merge_keys_are_supported() -> None:
    text = BASE + "resources:\n  <<: {cpu: '2', memory: 4Gi}\n  shm: 1Gi\n"
    job = load_text(text)
    assert (job.resources.cpu, job.resources.memory, job.resources.shm) == ("2", "4Gi", "1Gi")
    anchored = load_text(BASE + "resources: &r {cpu: '2', memory: 4Gi}\nk8s:\n  <<: {queue: q}\n")
    assert anchored.k8s.queue == "q"


def test_merge_key_bringing_unknown_keys_is_located(tmp_path: Path) -> None:
    spec = write(tmp_path / "kdist.yaml", BASE + "resources: &r {cpu: '2'}\nrendezvous:\n"
                 "  <<: *r\n")
    result = invoke("render", "-t", "k8s", "-f", str(spec))
    assert result.exit_code == 2
    assert f"{spec}:7:3: rendezvous.cpu: unknown key" in result.stderr  # at the `<<`


def test_deep_nesting_in_a_spec_is_a_message(tmp_path: Path) -> None:
    spec = write(tmp_path / "kdist.yaml", BASE + "args: " + "[" * 5000 + "]" * 5000 + "\n")
    result = invoke("render", "-t", "k8s", "-f", str(spec))
    assert result.exit_code == 2 and "nested more than 100 levels deep" in result.stderr


def test_alias_bomb_in_a_spec_is_cheap(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    spec = write(tmp_path / "kdist.yaml", BASE + "env:\n" + "".join(
        f"  {line}\n" for line in levels) + "args: *a8\n")
    start = time.monotonic()
    result = invoke("render", "-t", "compose", "-f", str(spec))
    assert result.exit_code == 2 and time.monotonic() - start < 10
    assert "env.a0: expected a string or number, got a list" in result.stderr


def test_spec_larger_than_1_mib_is_refused(tmp_path: Path) -> None:
    spec = write(tmp_path / "kdist.yaml", BASE + "# " + "x" * 2**20 + "\n")
    result = invoke("render", "-t", "k8s", "-f", str(spec))
    assert result.exit_code == 2 and "larger than 1 MiB" in result.stderr
    result = invoke("render", "-t", "k8s", "-f", "/dev/zero")
    assert result.exit_code == 2 and "larger than 1 MiB" in result.stderr


def k8s_manifest(tmp_path: Path, extra: str) -> Path:
    docs = yaml.safe_dump_all(k8s.render(LaunchPlan(load_text(BASE))))
    return write(tmp_path / "k8s.yaml", docs + "---\n" + extra)


def test_diff_refuses_an_alias_bomb_quickly(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    manifest = k8s_manifest(tmp_path, "\n".join(levels) + "\n")
    start = time.monotonic()
    result = invoke("diff", "-f", str(MINIMAL), "--k8s", str(manifest))
    assert time.monotonic() - start < 10
    assert result.exit_code == 2
    assert "more than 1000000 values once its aliases are expanded" in result.stderr
    assert result.stderr.startswith(f"kdist: {manifest}:")


def test_diff_refuses_deep_nesting_and_cycles(tmp_path: Path) -> None:
    deep = write(tmp_path / "deep.yaml", "services: " + "[" * 3000 + "]" * 3000 + "\n")
    result = invoke("diff", "-f", str(MINIMAL), "--compose", str(deep))
    assert result.exit_code == 2 and "nested more than 100 levels deep" in result.stderr
    cycle = k8s_manifest(tmp_path, "a: &a [*a]\n")
    result = invoke("diff", "-f", str(MINIMAL), "--k8s", str(cycle))
    assert result.exit_code == 2


def test_diff_reads_merge_keys_in_a_manifest(tmp_path: Path) -> None:
    p = LaunchPlan(load_text(BASE))
    text = yaml.safe_dump(compose.render(p)).replace("services:\n", "x-base: &base {restart: 'no'}\n"
                                                     "services:\n", 1)
    text = text.replace("    restart: 'no'\n", "    <<: *base\n")
    c = write(tmp_path / "c.yaml", text)
    spec = write(tmp_path / "kdist.yaml", BASE)
    assert invoke("diff", "-f", str(spec), "--compose", str(c)).exit_code == 0


def test_diff_compares_args_with_newlines_and_carriage_returns(tmp_path: Path) -> None:
    """A hand-edited manifest may hold any character; the torchrun lines still split."""
    spec = write(tmp_path / "kdist.yaml", BASE + 'args: ["a\\nb", "it\'s"]\n')
    p = LaunchPlan(load_text(spec.read_text()))
    doc = compose.render(p)
    for svc in doc["services"].values():
        if str(svc.get("hostname", "")).startswith("node"):
            svc["command"][2] = svc["command"][2].replace("a\nb", "a\r\nb")
    c = write(tmp_path / "c.yaml", yaml.safe_dump(doc))
    result = invoke("diff", "-f", str(spec), "--compose", str(c))
    assert result.exit_code == 1, result.output
    assert "torchrun" in result.stdout.split("Differences:")[1]
    assert invoke("diff", "-f", str(spec)).exit_code == 0


# ---- the terminal ---------------------------------------------------------------------------


def test_diff_never_prints_escape_sequences(tmp_path: Path) -> None:
    p = LaunchPlan(load_text(BASE))
    doc = compose.render(p)
    doc["services"]["node-0"]["environment"]["EVIL"] = "\x1b]0;owned\x07\r\u202e"
    c = write(tmp_path / "c.yaml", yaml.safe_dump(doc))
    spec = write(tmp_path / "kdist.yaml", BASE)
    result = invoke("diff", "-f", str(spec), "--compose", str(c))
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "\r" not in result.output and "\u202e" not in result.output
    assert "\\x1b]0;owned\\x07\\x0d\\u202e" in result.stdout


def test_error_messages_never_print_escape_sequences(tmp_path: Path) -> None:
    spec = write(tmp_path / "kdist.yaml", BASE + 'k8s: {"\\e[2Jqueue": x}\n')
    result = invoke("render", "-t", "k8s", "-f", str(spec))
    assert result.exit_code == 2 and "\x1b" not in result.stderr
    assert "k8s.'\\x1b[2Jqueue': unknown key" in result.stderr


# ---- render --dir / --out --------------------------------------------------------------------


def render_to(spec: Path, option: str, output: Path, *extra: str) -> Result:
    return invoke("render", "-t", "k8s", "-f", str(spec), option, str(output), *extra)


def test_render_into_a_folder_refuses_to_replace_a_different_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render_to(MINIMAL, "--dir", out).exit_code == 0
    first = (out / "k8s.yaml").read_text()
    assert render_to(MINIMAL, "--dir", out).exit_code == 0  # the same content: nothing to replace
    (out / "k8s.yaml").write_text("hand edited\n")
    result = render_to(MINIMAL, "--dir", out)
    assert result.exit_code == 2
    assert f"{out / 'k8s.yaml'} exists and differs from this render; pass --force" in result.stderr
    assert (out / "k8s.yaml").read_text() == "hand edited\n"
    assert render_to(MINIMAL, "--dir", out, "--force").exit_code == 0
    assert (out / "k8s.yaml").read_text() == first


def test_render_out_writes_that_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "job.yaml"
    assert render_to(MINIMAL, "--out", target).exit_code == 0
    assert target.is_file() and list(target.parent.iterdir()) == [target]
    existing = write(tmp_path / "notes", "mine\n")
    result = render_to(MINIMAL, "--out", existing)
    assert result.exit_code == 2 and "exists and differs" in result.stderr
    assert existing.read_text() == "mine\n"


def test_render_to_a_device_is_a_message() -> None:
    result = render_to(MINIMAL, "--out", Path("/dev/null"))
    assert result.exit_code == 2
    assert ("/dev/null exists and is not a regular file; without --dir and --out, render prints "
            "to stdout") in result.stderr
