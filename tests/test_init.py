"""`kdist init` for the user's project: the script named or found, its args, the next step."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdist.cli import cli
from kdist.spec.load import load_file
from kdist.tools.workdir import check

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "trainers" / "examples" / "tutorial"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tutorial trainer's two files in a folder of their own, the current directory."""
    for name in ("train.py", "datautils.py"):
        (tmp_path / name).write_text((TUTORIAL / name).read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_names_the_script_and_its_args(project: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "train.py", "--", "30", "2", "--epoch-sleep", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote kdist.yaml for train.py" in result.stderr
    first, image = result.stderr.rstrip().splitlines()
    assert first.endswith("next: kdist run") and "COPY . /app/" in image
    job = load_file(project / "kdist.yaml")
    assert job.entrypoint == "train.py" and job.args == ("30", "2", "--epoch-sleep", "1")
    text = (project / "kdist.yaml").read_text()
    assert "snapshot.pt, model_final.pth" in text and ".kdist/jobs/<name>/checkpoints" in text
    assert check(job, text, "kdist.yaml", project) == []


def test_init_picks_the_one_training_script(project: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "-f", "job.yaml"])  # datautils.py has no __main__
    assert result.exit_code == 0, result.output
    assert load_file(project / "job.yaml").entrypoint == "train.py"
    assert "next: kdist run -f job.yaml" in result.stderr


def test_init_asks_when_it_cannot_tell(project: Path) -> None:
    (project / "eval.py").write_text((project / "train.py").read_text())
    several = CliRunner().invoke(cli, ["init"])
    assert several.exit_code == 2
    assert "several training scripts here (eval.py, train.py); name one" in several.stderr
    missing = CliRunner().invoke(cli, ["init", "trian.py"])
    assert missing.exit_code == 2 and "trian.py: no such file" in missing.stderr
    for name in ("eval.py", "train.py"):
        (project / name).unlink()
    none = CliRunner().invoke(cli, ["init"])
    assert none.exit_code == 2 and "no training script found here" in none.stderr
    assert not (project / "kdist.yaml").exists()
