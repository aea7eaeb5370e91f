"""The registry of targets (kdist/targets/__init__.py): what every list of targets reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT

from kdist.cli import cli
from kdist.errors import UsageError
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets import PACKAGES, Where, all_targets, get, names, open_job

EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))


def test_every_package_is_one_target_in_order() -> None:
    assert len(all_targets()) == len(PACKAGES)
    assert names() == ["local", "compose", "k8s", "helm-values"]
    assert names("render") == ["compose", "k8s", "helm-values"]
    assert names("run") == ["local", "compose", "k8s"]
    assert names("status") == names("logs") == names("scale") == ["compose", "k8s"]
    assert names("apply") == ["k8s"]


def test_rendered_targets_write_distinct_files() -> None:
    files = [get(name).filename for name in names("render")]
    assert len(set(files)) == len(files) and all(files)


def test_an_unknown_target_gets_a_did_you_mean() -> None:
    with pytest.raises(UsageError, match=r"unknown target 'k8' for render; expected one of "
                                         r"compose, k8s, helm-values; did you mean 'k8s'\?"):
        get("k8", "render")
    with pytest.raises(UsageError, match="unknown target 'local' for status"):
        get("local", "status")


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("target", ["compose", "k8s"])
def test_store_host_is_the_host_the_rendered_nodes_dial(spec: Path, target: str) -> None:
    """The one place a target says its rendezvous host is what its render uses (and doctor
    resolves)."""
    plan = LaunchPlan(load_file(spec))
    host = get(target).store_host(plan)
    text = get(target).render(plan)  # type: ignore[misc]
    assert f"--rdzv-endpoint {host}:{plan.spec.rendezvous.port}" in text
    assert shlex.quote(host) == host


def test_a_target_without_a_cluster_refuses_context_and_namespace(tmp_path: Path) -> None:
    plan = LaunchPlan(load_file(EXAMPLES[0]))
    with pytest.raises(UsageError, match="--context and --namespace are for a cluster; target "
                                         "compose has none"):
        open_job(plan, "compose", Where(tmp_path, namespace="team"))
    result = CliRunner().invoke(cli, ["status", "-t", "compose", "-n", "team", "-f",
                                      str(EXAMPLES[0])])
    assert result.exit_code == 2 and "target compose has none" in result.output


def test_target_choices_come_from_the_registry() -> None:
    for command, verb in (("render", "render"), ("status", "status"), ("logs", "logs"),
                          ("scale", "scale"), ("doctor", "run"), ("apply", "apply")):
        usage = CliRunner().invoke(cli, [command, "--help"]).output
        assert f"[{'|'.join(names(verb))}]" in usage, (command, usage)


def test_every_preflight_name_is_a_doctor_check() -> None:
    from kdist.tools.doctor import HOST_CHECKS

    for target in all_targets():
        assert set(target.preflight) - {"torch"} <= set(HOST_CHECKS), target.name
    assert names("run") == [t.name for t in all_targets() if t.runs]


def test_render_without_a_target_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["render", "-f", str(EXAMPLES[0])])
    assert result.exit_code == 2 and result.exception is not None
    assert "Missing option '-t' / '--target'" in result.output and "helm-values" in result.output
