"""kompose-style goldens: one folder per feature, one expected file per target (`make golden`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, Golden

from kdist.cli import cli
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets import get, names, render

FEATURES = sorted(p for p in (FIXTURES / "features").iterdir() if p.is_dir())
ERRORS = sorted(p for p in (FIXTURES / "errors").iterdir() if p.is_dir())


@pytest.mark.parametrize("target", names("render"))
@pytest.mark.parametrize("feature", FEATURES, ids=lambda p: p.name)
def test_feature_renders_as_golden(feature: Path, target: str, golden: Golden) -> None:
    plan = LaunchPlan(load_file(feature / "kdist.yaml"))
    golden.check(feature / get(target).filename, render(plan, target))


def test_dev_render_is_golden(golden: Golden) -> None:
    """`kdist render --target compose --dev` (the JupyterLab service) for the `dev` feature."""
    from kdist.targets.compose.dev_render import render_text

    feature = FIXTURES / "features" / "dev"
    plan = LaunchPlan(load_file(feature / "kdist.yaml"))
    golden.check(feature / "docker-compose.dev.yaml", render_text(plan))


@pytest.mark.parametrize("case", ERRORS, ids=lambda p: p.name)
def test_bad_spec_message_is_golden(case: Path, golden: Golden,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(case)
    result = CliRunner().invoke(cli, ["render", "-t", "k8s", "-f", "kdist.yaml"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    golden.check(case / "error.txt", result.stderr)
