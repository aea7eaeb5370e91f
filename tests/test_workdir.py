"""The job's working directory (the checkpoint volume) on every target, and the checks made before
anything starts: the entrypoint exists (kdist/tools/workdir.py), the volume path is one a node can use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kdist.errors import SpecError
from kdist.plan import LaunchPlan
from kdist.spec.load import load_text
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s
from kdist.tools.workdir import check, entrypoint_problem

ROOT = Path(__file__).resolve().parent.parent
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]
SPEC = """\
name: paths
image: kdist-trainer:0.1.0
entrypoint: {entrypoint}
nodes: 2
checkpoint:
  path: {path}
"""


def spec(entrypoint: str = "trainers/examples/tutorial/train.py", path: str = "/checkpoints"
         ) -> str:
    return SPEC.format(entrypoint=entrypoint, path=path)


def test_every_target_starts_nodes_in_the_checkpoint_volume() -> None:
    plan = LaunchPlan(load_text(spec(path="/data")))
    assert plan.workdir == "/data"
    node = compose.render(plan)["services"]["node-0"]
    assert node["working_dir"] == "/data" and "checkpoints:/data" in node["volumes"]
    assert node["read_only"] is True and node["tmpfs"] == ["/tmp:exec"]
    assert node["environment"]["HOME"] == "/tmp"
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["workingDir"] == "/data"
    assert {"name": "checkpoints", "mountPath": "/data"} in container["volumeMounts"]


def test_a_relative_entrypoint_is_resolved_against_the_image_project_dir() -> None:
    for entrypoint, in_image in (("./train.py", "/app/train.py"),
                                 ("trainers/examples/tutorial/train.py",
                                  "/app/trainers/examples/tutorial/train.py"),
                                 ("/opt/code/train.py", "/opt/code/train.py")):
        plan = LaunchPlan(load_text(spec(entrypoint=entrypoint)))
        assert plan.image_entrypoint == in_image
        assert in_image in compose.render(plan)["services"]["node-0"]["command"][2]


@pytest.mark.parametrize("path", ["/", "/tmp", "/dev/shm", "/proc/x", "/sys", "/app"])
def test_a_working_directory_no_node_can_use_is_refused(path: str) -> None:
    with pytest.raises(SpecError) as error:
        load_text(spec(path=path))
    assert [p.path for p in error.value.problems] == ["checkpoint.path"]


@pytest.mark.parametrize("path", ["/checkpoints", "/data/run-1", "/app/outputs", "/tmpdata"])
def test_a_working_directory_of_its_own_is_accepted(path: str) -> None:
    assert LaunchPlan(load_text(spec(path=path))).workdir == path


def test_entrypoint_problems_name_the_project_and_a_near_file() -> None:
    assert entrypoint_problem("trainers/train.py", ROOT, local=True) == ""
    missing = entrypoint_problem("trainers/examples/trian.py", ROOT, local=False)
    assert "not found in the project folder" in missing
    near = entrypoint_problem("train.py", ROOT, local=False)
    assert "(did you mean " in near and "trainers/train.py" in near
    assert "outside the project folder" in entrypoint_problem("../x.py", ROOT, local=False)
    assert entrypoint_problem("/opt/code/train.py", ROOT, local=False) == ""  # in the image
    assert "does not exist on this host" in entrypoint_problem("/opt/code/train.py", ROOT, True)


def test_problems_point_at_the_spec_lines() -> None:
    text = spec(entrypoint="nope.py")
    problems = check(load_text(text, "k.yaml"), text, "k.yaml", ROOT)
    assert [(p.line, p.column, p.path) for p in problems] == [(3, 13, "entrypoint")]


def test_kdist_run_refuses_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "kdist.yaml"
    path.write_text(spec(entrypoint="trainers/trian.py"), encoding="utf-8")
    run_dir = tmp_path / "run"
    result = subprocess.run([*KDIST, "run", "-f", str(path), "--run-dir", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"{path}:3:13: entrypoint: trainers/trian.py not found in the project folder" \
        in result.stderr
    assert "Traceback" not in result.stderr and not run_dir.exists()


def test_a_misspelt_entrypoint_gets_a_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('train')\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "trian.py").write_text("")  # hidden folders are not searched
    assert entrypoint_problem("trian.py", tmp_path, local=True).endswith("(did you mean train.py?)")
    assert "did you mean" not in entrypoint_problem("eval.py", tmp_path, local=True)
