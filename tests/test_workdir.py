"""The job's working directory (the checkpoint volume) on every target, and the checks made before
anything starts: the entrypoint exists (kdist/tools/workdir.py), the volume path is one a node can use."""

from __future__ import annotations

import os
import re
import socket
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
    assert "checkpoints:/data" in node["volumes"] and "working_dir" not in node
    assert node["command"][2].startswith("set -e\nproject=$$PWD\ncd /data || exit 1\n")
    assert node["read_only"] is True and node["tmpfs"] == ["/tmp:exec"]
    assert node["environment"]["HOME"] == "/tmp"
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][2].startswith("project=$PWD\ncd /data || exit 1\n")
    assert "workingDir" not in container  # it starts in the image's, where its code is
    assert {"name": "checkpoints", "mountPath": "/data"} in container["volumeMounts"]


def test_a_relative_entrypoint_is_resolved_against_the_image_working_directory() -> None:
    for entrypoint, in_image, in_script in (
            ("./train.py", "$project/train.py", '"$project"/train.py'),
            ("trainers/examples/tutorial/train.py", "$project/trainers/examples/tutorial/train.py",
             '"$project"/trainers/examples/tutorial/train.py'),
            ("src/$x/train.py", "$project/src/$x/train.py", "\"$project\"'/src/$x/train.py'"),
            ("/opt/code/train.py", "/opt/code/train.py", "/opt/code/train.py")):
        plan = LaunchPlan(load_text(spec(entrypoint=entrypoint)))
        assert plan.image_entrypoint == in_image
        compose_script = compose.render(plan)["services"]["node-0"]["command"][2]
        for script in (k8s_script(plan), compose_script.replace("$$", "$")):
            assert re.search(f" {re.escape(in_script)}( &)?\n", script), script[-400:]


def k8s_script(plan: LaunchPlan) -> str:
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    return str(sts["spec"]["template"]["spec"]["containers"][0]["command"][2])


@pytest.mark.parametrize("in_root", [False, True], ids=["workdir", "no-workdir"])
def test_the_script_runs_the_entrypoint_from_the_image_working_directory(
        tmp_path: Path, in_root: bool) -> None:
    """The Compose node's script with `python3` and `torchrun` stand-ins, started in an
    "image" folder: the entrypoint and the project's links point into it ("/" is no project:
    nothing is linked)."""
    image = tmp_path / "workspace"  # an image's WORKDIR, as NGC's /workspace
    (image / "data").mkdir(parents=True)
    volume, bin_dir = tmp_path / "volume", tmp_path / "bin"
    volume.mkdir()
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text('#!/bin/sh\necho "$PWD $*" > "$OUT"\n')
    (bin_dir / "torchrun").chmod(0o755)
    plan = LaunchPlan(load_text(spec(entrypoint="train.py", path="/checkpoints")))
    script = compose.render(plan)["services"]["node-0"]["command"][2].replace("$$", "$")
    script = script.replace("cd /checkpoints ", f"cd {volume} ").replace(" rdzv 29400 ", " localhost 1 ")
    start = Path("/") if in_root else image
    with socket.create_server(("127.0.0.1", 0)) as store:  # the store's port accepts
        port = store.getsockname()[1]
        script = script.replace(" localhost 1 ", f" localhost {port} ")
        ran = subprocess.run(["sh", "-c", script], cwd=start, capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                  "OUT": str(tmp_path / "argv")}, timeout=60)
    assert ran.returncode == 0, ran.stderr
    cwd, *argv = (tmp_path / "argv").read_text().split()
    assert cwd == str(volume)
    assert argv[-1] == f"{start}/train.py"  # //train.py from /: the same file
    linked = sorted(p.name for p in volume.iterdir() if p.is_symlink())
    assert linked == ([] if in_root else ["data"])


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
