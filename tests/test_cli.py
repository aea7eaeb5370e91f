"""The CLI boundary: help, version, atomic output, init, and no traceback for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import FIXTURES

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


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage: cli " + command in result.output or f"Usage: kdist {command}" in result.output


def test_render_to_folder_writes_one_file_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", "-t", "k8s", "-f", str(SPEC), "-o", str(out)])
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
    result = CliRunner().invoke(cli, ["render", "-t", "compose", "-f", str(bad), "-o", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_unwritable_output_is_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("render", "-t", "compose", "-f", str(SPEC), "-o", str(blocker / "sub"))
    assert result.returncode == 1
    assert result.stderr.startswith("kdist: cannot write") and "Traceback" not in result.stderr


def test_missing_spec_file_is_a_message(tmp_path: Path) -> None:
    result = run("render", "-t", "k8s", "-f", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read: No such file or directory" in result.stderr


def test_unknown_target_lists_choices() -> None:
    result = run("render", "-t", "nomad", "-f", str(SPEC))
    assert result.returncode == 2 and "'compose', 'k8s'" in result.stderr


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

