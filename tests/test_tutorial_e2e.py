"""PyTorch's fault-tolerant torchrun tutorial (trainers/examples/tutorial), unchanged, on every
simulated target: a node is lost mid-run and the job still ends with exit 0, every rank of the
next round resumes from the same snapshot epoch > 0, and model_final.pth is where docs/outputs.md
says. Real torchrun processes (`kdist run`) and a real Docker Engine (`kdist up`, marked docker).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_compose_e2e import IMAGE, Attached, Job, image  # noqa: F401  (image: a fixture)

from kdist.plan import LaunchPlan
from kdist.spec.load import load_text
from kdist.spec.quantity import memory_bytes
from kdist.targets.k8s import render as k8s

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "trainers" / "examples" / "tutorial.yaml"
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]
RESUMED_RE = re.compile(r"\[RANK(\d+)\] Resuming training from snapshot at Epoch (\d+)")
SAVED = "Training snapshot saved at snapshot.pt"


def resumed(output: str) -> dict[int, int]:
    """rank -> epoch of the last round's "Resuming" lines (one per rank of that round)."""
    found = [(int(rank), int(epoch)) for rank, epoch in RESUMED_RE.findall(output)]
    last: dict[int, int] = {}
    for rank, epoch in reversed(found):
        if rank in last:
            break
        last[rank] = epoch
    return last


def assert_resumed_together(output: str, ranks: int) -> None:
    last = resumed(output)
    assert sorted(last) == list(range(ranks)), output[-3000:]
    assert len(set(last.values())) == 1 and min(last.values()) > 0, last


@pytest.mark.parametrize("victim", [1, 0])
def test_kdist_run_loses_a_node_and_every_rank_resumes(tmp_path: Path, victim: int) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run([*KDIST, "run", "-f", str(TUTORIAL), "--run-dir", str(run_dir),
                             "--kill", f"node-{victim}@20s"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"kdist | kill node={victim}" in result.stdout
    assert_resumed_together(result.stdout, ranks=2)
    outputs = run_dir / "checkpoints"
    assert sorted(p.name for p in outputs.iterdir()) == ["model_final.pth", "snapshot.pt"]
    assert f"outputs (the working directory) in {outputs}" in result.stderr


@pytest.fixture
def tutorial_job(tmp_path: Path, image: str) -> Iterator[Job]:  # noqa: F811
    made = Job(tmp_path, "tut", base="tutorial.yaml")
    yield made
    made.teardown()


def wait_for_line(up: Attached, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in up.lines):
            return
        assert up.proc.poll() is None, "kdist up ended early:\n" + "\n".join(up.lines[-30:])
        time.sleep(0.3)
    raise AssertionError(f"no {text!r} within {timeout:.0f} s:\n" + "\n".join(up.lines[-30:]))


@pytest.mark.docker
@pytest.mark.parametrize("victim", ["node-1", "node-0"])
def test_kdist_up_loses_a_node_and_every_rank_resumes(tutorial_job: Job, victim: str) -> None:
    j = tutorial_job
    up = Attached(j)
    wait_for_line(up, f"Epoch 4 | {SAVED}")
    killed = j("kill", victim)
    assert killed.returncode == 0, killed.stderr
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"nodes start in /checkpoints on volume {j.name}_checkpoints" in err
    assert_resumed_together(out, ranks=2)
    down = j("down")
    assert down.returncode == 0 and f"checkpoint volume {j.name}_checkpoints kept" in down.stderr
    assert volume_files(f"{j.name}_checkpoints") == ["model_final.pth", "snapshot.pt"]
    removed = j("down", "--volumes")
    assert f"checkpoint volume {j.name}_checkpoints removed" in removed.stderr, removed.stderr


def volume_files(volume: str) -> list[str]:
    listed = subprocess.run(["docker", "run", "--rm", "-v", f"{volume}:/c", IMAGE, "ls", "/c"],
                            capture_output=True, text=True, timeout=120, check=True)
    return listed.stdout.split()


def pod_run_options(plan: LaunchPlan, volume: str) -> list[str]:
    """`docker run` options for the rendered node pod's security context, mounts and workdir."""
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    options = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges:true", "-w", container["workingDir"]]
    options += ["--read-only"] if security["readOnlyRootFilesystem"] else []
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        source, path = volumes[mount["name"]], mount["mountPath"]
        if "persistentVolumeClaim" in source:
            options += ["-v", f"{volume}:{path}"]
        elif path == "/dev/shm":
            options += ["--shm-size", str(memory_bytes(source["emptyDir"]["sizeLimit"]))]
        else:
            options += ["--tmpfs", f"{path}:exec"]  # an emptyDir allows exec
    env = [f"{e['name']}={e['value']}" for e in container["env"] if "value" in e]
    return options + [x for pair in env for x in ("-e", pair)]


@pytest.mark.docker
def test_user_image_runs_with_the_pods_security_settings(tmp_path: Path, image: str) -> None:  # noqa: F811
    """The recipe of docs/outputs.md (FROM the trainer image, COPY the project), started as the k8s pod
    starts it: its securityContext (read-only root, uid 1000), mounts and working directory."""
    project = tmp_path / "project"
    (project / "train").mkdir(parents=True)
    for name in ("train.py", "datautils.py"):
        source = ROOT / "trainers" / "examples" / "tutorial" / name
        (project / "train" / name).write_text(source.read_text())
    (project / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY . /app/\n")
    tag = f"kdist-user-{uuid.uuid4().hex[:8]}:test"
    volume = f"kdist-user-{uuid.uuid4().hex[:8]}"
    spec = yaml.safe_load(TUTORIAL.read_text()) | {"image": tag, "entrypoint": "train/train.py"}
    plan = LaunchPlan(load_text(yaml.safe_dump(spec)))
    options = pod_run_options(plan, volume)
    assert "--read-only" in options and "1000:1000" in options
    built = subprocess.run(["docker", "build", "-t", tag, str(project)], capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    try:
        ran = subprocess.run(
            ["docker", "run", "--rm", *options, tag, "torchrun", "--standalone", "--nnodes", "1",
             "--nproc-per-node", "2", plan.image_entrypoint, "4", "2"],
            capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "Saved model_final.pth" in ran.stdout
        assert volume_files(volume) == ["model_final.pth", "snapshot.pt"]
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, timeout=60)
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)

