"""The CLI boundary: help, version, atomic output, init, and no traceback for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import FIXTURES, ROOT

from kdist import __version__
from kdist.cli import cli
from kdist.spec.load import load_file

SPEC = FIXTURES / "features" / "minimal" / "kdist.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from kdist.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", cli.list_commands(click.Context(cli)))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: cli " + command in result.output or f"Usage: kdist {command}" in result.output


def test_render_to_folder_writes_one_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", "-t", "k8s", "-f", str(SPEC), "--dir", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["k8s.yaml"]  # no temp files left behind
    assert (out / "k8s.yaml").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    kinds = [d["kind"] for d in yaml.safe_load_all((out / "k8s.yaml").read_text())]
    assert kinds[-1] == "StatefulSet" and kinds[0] == "NetworkPolicy"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_spec_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = FIXTURES / "errors" / "typo-keys" / "kdist.yaml"
    result = CliRunner().invoke(cli, ["render", "-t", "compose", "-f", str(bad), "--dir", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_unwritable_output_is_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("render", "-t", "compose", "-f", str(SPEC), "--dir", str(blocker / "sub"))
    assert result.returncode == 1
    assert result.stderr.startswith("kdist: cannot write") and "Traceback" not in result.stderr


def test_missing_spec_file_is_a_message(tmp_path: Path) -> None:
    result = run("render", "-t", "k8s", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read: No such file or directory" in result.stderr


def test_unknown_target_lists_choices() -> None:
    result = run("render", "-t", "nomad", "-f", str(SPEC))
    assert result.returncode == 2 and "'compose', 'k8s'" in result.stderr


# ---- old option spellings: still working for one release, with one warning line -----------


def render(*args: str) -> Result:
    return CliRunner().invoke(cli, ["render", "-t", "k8s", "-f", str(SPEC), *args])


def test_render_prints_yaml_by_default_and_with_o_yaml() -> None:
    plain, explicit = render(), render("-o", "yaml")
    assert plain.exit_code == explicit.exit_code == 0
    assert plain.stdout == explicit.stdout and plain.stdout.startswith("---\napiVersion:")
    assert plain.stderr == explicit.stderr == ""


@pytest.mark.parametrize(("old", "new", "written"), [
    ("out", "--dir", "out/k8s.yaml"),
    ("job.yaml", "--out", "job.yaml"),
    ("sub/job.yml", "--out", "sub/job.yml"),
])
def test_render_old_o_path_writes_what_the_new_option_writes(
    tmp_path: Path, old: str, new: str, written: str
) -> None:
    result = render("-o", str(tmp_path / "old" / old))
    assert result.exit_code == 0, result.output
    path = tmp_path / "old" / old
    assert result.stderr == f"kdist: warning: -o {path} for a {'folder' if new == '--dir' else 'file'}" \
        f" is deprecated; use {new} {path}\n"
    fresh = render(new, str(tmp_path / "new" / old))
    assert fresh.exit_code == 0 and fresh.stderr == ""
    assert (tmp_path / "old" / written).read_text() == (tmp_path / "new" / written).read_text()
    assert (tmp_path / "new" / written).read_text() == render().stdout


def test_render_old_o_into_an_existing_folder_with_a_yaml_name(tmp_path: Path) -> None:
    folder = tmp_path / "x.yaml"
    folder.mkdir()
    result = render("-o", str(folder))
    assert result.exit_code == 0 and (folder / "k8s.yaml").is_file()
    assert f"use --dir {folder}" in result.stderr


def test_render_old_o_dash_is_stdout_with_a_warning() -> None:
    result = render("-o", "-")
    assert result.exit_code == 0 and result.stdout == render().stdout
    assert result.stderr == "kdist: warning: -o - is deprecated; stdout is the default (drop -o -)\n"


@pytest.mark.parametrize(("args", "message"), [
    (["-o", "json"], "'json' is not one of 'yaml' (a folder or file of that name: --dir json or "
                     "--out json)"),
    (["--dir", "a", "--out", "b.yaml"], "--dir and --out cannot go together"),
    (["-o", "a", "--dir", "a"], "-o a (a path) cannot go with --dir or --out"),
])
def test_render_output_conflicts_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = render(*args)
    assert result.exit_code == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["diff"], ["doctor"]])
def test_json_flag_is_a_hidden_alias_of_o_json(command: list[str]) -> None:
    new = CliRunner().invoke(cli, [*command, "-f", str(SPEC), "-o", "json"])
    old = CliRunner().invoke(cli, [*command, "-f", str(SPEC), "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert new.stderr == "" and old.stderr == "kdist: warning: --json is deprecated; use -o json\n"
    assert json.loads(old.stdout)["checks" if command == ["doctor"] else "rows"]
    if command == ["diff"]:  # doctor's checks include a free port: not the same twice
        assert old.stdout == new.stdout
    assert "--json" not in CliRunner().invoke(cli, [*command, "--help"]).output


@pytest.mark.parametrize("command", ["status", "doctor", "diff"])
def test_json_flag_contradicting_o_text_is_a_usage_error(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "-f", str(SPEC), "-o", "text", "--json"])
    assert result.exit_code == 2 and "--json contradicts -o text" in result.stderr


def test_status_json_alias_reaches_the_k8s_target(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none")}
    cmd = [sys.executable, "-c", "from kdist.cli import main; main()", "status", "-f", str(SPEC)]
    old = subprocess.run([*cmd, "-t", "k8s", "--json"], capture_output=True, text=True, env=env)
    new = subprocess.run([*cmd, "--target", "k8s", "-o", "json"], capture_output=True, text=True,
                         env=env)
    assert old.returncode == new.returncode == 2
    assert old.stderr == "kdist: warning: --json is deprecated; use -o json\n" + new.stderr
    assert "no kubeconfig" in new.stderr


@pytest.mark.parametrize("command", ["status", "logs", "scale", "apply", "delete", "doctor",
                                     "render"])
def test_t_is_target_and_lists_the_choices(command: str) -> None:
    args = ["2"] if command == "scale" else []
    result = CliRunner().invoke(cli, [command, *args, "-t", "nomad"])
    assert result.exit_code == 2  # the choices come from each command; every one has k8s
    error = result.stderr.splitlines()[-1]
    assert error.startswith("Error: Invalid value for '-t' / '--target': 'nomad' is not ")
    assert "'k8s'" in error


def test_logs_old_t_for_timestamps_is_a_usage_error() -> None:
    alone = CliRunner().invoke(cli, ["logs", "-t"])
    assert alone.exit_code == 2 and "Option '-t' requires an argument" in alone.stderr
    follow = CliRunner().invoke(cli, ["logs", "-t", "-f"])
    assert follow.exit_code == 2
    assert "'-f' is not one of 'compose', 'k8s'" in follow.stderr
    help_text = CliRunner().invoke(cli, ["logs", "--help"]).output
    assert "--timestamps" in help_text and "-f is --follow" in help_text


def test_init_writes_a_spec_that_loads_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "My Project_2"
    project.mkdir()
    monkeypatch.chdir(project)
    (project / "train.py").write_text("import torch\nif __name__ == '__main__':\n    pass\n")
    first = CliRunner().invoke(cli, ["init"])
    assert first.exit_code == 0, first.output
    job = load_file(project / "kdist.yaml")
    assert job.name == "my-project-2" and str(job.nodes) == "2:3"
    assert "#" in (project / "kdist.yaml").read_text()  # commented
    second = CliRunner().invoke(cli, ["init"])
    assert second.exit_code == 1 and "--force" in second.stderr
    assert CliRunner().invoke(cli, ["init", "--force", "--name", "x9"]).exit_code == 0
    assert load_file(project / "kdist.yaml").name == "x9"


def test_run_lengthens_keep_alives_only_when_simulated_nodes_crowd_the_cores() -> None:
    from kdist.plan import LaunchPlan
    from kdist.targets.local.job import CROWDED_NODES_PER_CORE, ROOMY_KEEP_ALIVE, roomy_plan

    plan = LaunchPlan(load_file(SPEC))
    assert roomy_plan(plan, CROWDED_NODES_PER_CORE * 2, cores=2) is None
    crowded = CROWDED_NODES_PER_CORE * 2 + 1
    roomy = roomy_plan(plan, crowded, cores=2)
    assert roomy is not None
    rdzv = roomy.spec.rendezvous
    assert (rdzv.keep_alive_interval, rdzv.keep_alive_max_attempt) == ROOMY_KEEP_ALIVE
    conf = roomy.torchrun_argv("127.0.0.1", 29400)
    assert f"keep_alive_interval={ROOMY_KEEP_ALIVE[0]}" in conf[conf.index("--rdzv-conf") + 1]
    assert roomy.spec.rendezvous.last_call_timeout == plan.spec.rendezvous.last_call_timeout
    assert roomy_plan(roomy, crowded, cores=2) is None  # already long enough: left alone



def test_render_loads_no_other_command() -> None:
    """Commands load their module when used (kdist.cli.COMMANDS): `kdist render` imports no
    backend and no other command's module."""
    spec = ROOT / "trainers" / "examples" / "cpu-gloo.yaml"
    code = ("import sys; from kdist.cli import main; sys.argv = ['kdist', 'render', '-t', 'k8s', "
            f"'-f', {str(spec)!r}]\ntry: main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('kdist.cli.')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stderr.strip() == "['kdist.cli.dev', 'kdist.cli.options']"
