"""PyTorch's fault-tolerant torchrun tutorial (trainers/examples/tutorial), unchanged, on every
simulated target: a node is lost mid-run and the job still ends with exit 0, every rank of the
next round resumes from the same snapshot epoch > 0, and model_final.pth is where docs/outputs.md
says. Real torchrun processes (`kdist run`) and a real Docker Engine (`kdist up`, marked docker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_compose_e2e import IMAGE, Attached, Job, image  # noqa: F401  (image: a fixture)
from tutorial_logs import SAVED, assert_resumed_together

from kdist.plan import LaunchPlan, sh_join
from kdist.spec.load import load_text
from kdist.spec.quantity import memory_bytes
from kdist.targets.k8s import render as k8s
from kdist.targets.local.listening import listeners

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "trainers" / "examples" / "tutorial.yaml"
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]
def job_pids(run_dir: Path, node: int | None = None) -> list[int]:
    """Live processes of the `kdist run` that writes to run_dir (its KDIST_* markers), or of
    one of its nodes: what an outsider (the OOM killer, `kill -9`) would find."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        mine = f"KDIST_RUN_DIR={run_dir}".encode() in environ or any(
            e.startswith(b"TORCHELASTIC_ERROR_FILE=" + str(run_dir).encode()) for e in environ)
        if mine and (node is None or f"KDIST_NODE_RANK={node}".encode() in environ):
            pids.append(int(entry.name))
    return pids


def kill_node(run_dir: Path, node: int) -> None:
    """SIGKILL every process of one node from outside kdist, as the OOM killer or a dying host."""
    victims = job_pids(run_dir, node)
    assert victims, f"no process of node-{node} found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def read_until(proc: subprocess.Popen[str], text: str, seen: list[str], timeout: float = 200) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line or time.monotonic() > deadline:
            return


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.chaos)])
def test_kdist_run_survives_a_node_killed_from_outside(tmp_path: Path, victim: int) -> None:
    """The tutorial trainer on 2 nodes; mid-run, every process of one node is SIGKILLed from
    outside kdist (as the OOM killer or a dying host would). The node is lost, started again
    (max_restarts) and rejoins, and the job ends with exit 0, every rank resuming from the same epoch > 0.
    Meanwhile nothing of the job listens on an address other than loopback."""
    run_dir = (tmp_path / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "-f", str(TUTORIAL), "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KDIST_RUN_DIR": str(run_dir)})
    seen: list[str] = []
    try:
        read_until(proc, f"Epoch 4 | {SAVED}", seen)
        listening = listeners(job_pids(run_dir))
        assert len(listening) >= 3, listening  # the store, rank 0's store, gloo's pairs
        assert all(x.loopback_only for x in listening), [str(x) for x in listening]
        kill_node(run_dir, victim)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert f"kdist | node-{victim} lost (killed by SIGKILL, no error in its log)" in out, out[-3000:]
    assert f"node-restart node={victim}" in out
    assert_resumed_together(out, ranks=3)  # the restarted node rejoined: all 3 in the last round
    outputs = run_dir / "checkpoints"  # the job's files, beside links to the project's entries
    assert sorted(p.name for p in outputs.iterdir() if not p.is_symlink()) == ["model_final.pth",
                                                                               "snapshot.pt"]
    assert (outputs / "trainers").is_symlink()
    assert f"outputs (the working directory) in {outputs}" in err


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
@pytest.mark.parametrize("victim", ["node-1", pytest.param("node-0", marks=pytest.mark.chaos)])
def test_kdist_up_loses_a_node_and_every_rank_resumes(tutorial_job: Job, victim: str) -> None:
    j = tutorial_job
    up = Attached(j)
    wait_for_line(up, f"Epoch 4 | {SAVED}")
    killed = subprocess.run(["docker", "kill", f"{j.name}-{victim}-1"], capture_output=True,
                            text=True, timeout=60)  # from outside kdist: nothing marks the node
    assert killed.returncode == 0, killed.stderr
    code, out, err = up.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    assert f"kdist | {victim} lost (killed by SIGKILL, no error in its log)" in out, out[-3000:]
    assert f"nodes start in /checkpoints on volume {j.name}_checkpoints" in err
    assert_resumed_together(out, ranks=2)
    down = j("down")
    assert down.returncode == 0 and f"checkpoint volume {j.name}_checkpoints kept" in down.stderr
    assert volume_files(f"{j.name}_checkpoints") == ["model_final.pth", "snapshot.pt"]
    removed = j("down", "--volumes")
    assert f"checkpoint volume {j.name}_checkpoints removed" in removed.stderr, removed.stderr


def volume_files(volume: str) -> list[str]:
    """The job's own files on the volume (not the links to the project's entries)."""
    listed = subprocess.run(["docker", "run", "--rm", "-v", f"{volume}:/c", IMAGE, "find", "/c",
                             "-mindepth", "1", "-maxdepth", "1", "!", "-type", "l", "-printf",
                             "%f\n"], capture_output=True, text=True, timeout=120, check=True)
    return sorted(listed.stdout.split())


def pod_run_options(plan: LaunchPlan, volume: str) -> list[str]:
    """`docker run` options for the rendered node pod's security context and mounts."""
    sts = next(d for d in k8s.render(plan) if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert "workingDir" not in container  # it starts in the image's
    options = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges:true"]
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
    """The recipe of docs/outputs.md (FROM the trainer image, COPY the project; here into a
    WORKDIR of its own, as NGC's /workspace), started as the k8s pod starts it: its
    securityContext (read-only root, uid 1000), mounts and script's first lines (keep the image's
    working directory as $project, move to the volume), torchrun of the relative entrypoint."""
    project = tmp_path / "project"
    (project / "train").mkdir(parents=True)
    for name in ("train.py", "datautils.py"):
        source = ROOT / "trainers" / "examples" / "tutorial" / name
        (project / "train" / name).write_text(source.read_text())
    (project / "Dockerfile").write_text(f"FROM {IMAGE}\nWORKDIR /workspace\nCOPY . /workspace/\n")
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
        torchrun = sh_join(["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
                            plan.image_entrypoint, "4", "2"])
        ran = subprocess.run(
            ["docker", "run", "--rm", *options, tag, "sh", "-c", f"{plan.enter_workdir()}exec {torchrun}"],
            capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        assert "Saved model_final.pth" in ran.stdout
        assert volume_files(volume) == ["model_final.pth", "snapshot.pt"]
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, timeout=60)
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)

