"""A trainer that works with `torchrun train.py` in its own project folder (trainers/examples/
project: config.json and data/train.pt read by relative paths, out/ckpt.pt written the same way)
runs unchanged under `kdist run` and `kdist up`: the project's files show in the working
directory, what it writes lands on the job's storage, and a second run resumes from it.
Real torchrun processes; a real Docker Engine for `kdist up` (marked docker).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_compose_e2e import IMAGE, image  # noqa: F401  (image: a fixture)

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "trainers" / "examples" / "project"
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]


def project_copy(tmp_path: Path, name: str, epochs: int = 4, **config: object) -> Path:
    """The example project in a folder of its own, with its data made, as a user has it."""
    folder = tmp_path / "project"
    shutil.copytree(PROJECT, folder)
    subprocess.run([sys.executable, "make_data.py"], cwd=folder, check=True, timeout=120)
    (folder / "config.json").write_text(json.dumps({"epochs": epochs, "lr": 0.01,
                                                    "epoch_sleep": 0.3, **config}))
    spec = (folder / "kdist.yaml").read_text().replace("name: project", f"name: {name}")
    (folder / "kdist.yaml").write_text(spec)
    return folder


def kdist(folder: Path, *args: str, timeout: float = 300,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KDIST, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=env)


def needs_token(folder: Path) -> dict[str, str]:
    """The trainer logs in with HF_TOKEN the way Hugging Face scripts do (and exits without
    it); the spec names it in secret_env. Returns an environment that holds a token."""
    train = folder / "train.py"
    train.write_text(train.read_text().replace(
        "def main() -> None:\n",
        "def main() -> None:\n"
        "    if not os.environ.get(\"HF_TOKEN\", \"\").startswith(\"hf_\"):\n"
        "        raise SystemExit(\"HF_TOKEN is not set\")\n", 1))
    spec = folder / "kdist.yaml"
    spec.write_text(spec.read_text() + "secret_env: [HF_TOKEN]\n")
    return {**os.environ, "HF_TOKEN": f"hf_{uuid.uuid4().hex}"}


def starts(output: str) -> list[str]:
    return sorted(line.split("| ", 1)[1] for line in output.splitlines()
                  if "resumed from" in line or "starting at epoch" in line)


@pytest.mark.torch
def test_kdist_run_reads_the_project_and_a_second_run_resumes(tmp_path: Path) -> None:
    folder = project_copy(tmp_path, "proj-local")
    first = kdist(folder, "run", "--nodes", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    outputs = folder / ".kdist" / "jobs" / "proj-local" / "checkpoints"
    assert "kdist | nodes start in .kdist/jobs/proj-local/checkpoints (relative paths" in first.stdout
    assert starts(first.stdout) == ["[rank 0] starting at epoch 0", "[rank 1] starting at epoch 0"]
    assert (outputs / "out" / "ckpt.pt").is_file() and not (outputs / "out").is_symlink()
    assert (outputs / "config.json").is_symlink() and (outputs / "data").is_symlink()
    assert not (folder / "out").exists()  # the project folder stays as it was
    assert "warning" not in first.stderr

    (folder / "config.json").write_text(json.dumps({"epochs": 6, "lr": 0.01, "epoch_sleep": 0.3}))
    second = kdist(folder, "run", "--nodes", "2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "it holds an earlier run's outputs: the trainer resumes from them" in second.stdout
    assert starts(second.stdout) == ["[rank 0] resumed from out/ckpt.pt at epoch 4",
                                     "[rank 1] resumed from out/ckpt.pt at epoch 4"]

    fresh = kdist(folder, "run", "--nodes", "2", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert starts(fresh.stdout) == ["[rank 0] starting at epoch 0", "[rank 1] starting at epoch 0"]


@pytest.mark.torch
def test_kdist_run_gives_every_node_the_secret_env_and_refuses_without_it(tmp_path: Path) -> None:
    folder = project_copy(tmp_path, "proj-token", epochs=1)
    env = needs_token(folder)
    without = kdist(folder, "run", "--nodes", "2", env={k: v for k, v in env.items()
                                                        if k != "HF_TOKEN"})
    assert without.returncode == 2, without.stderr[-3000:]
    assert "kdist: secret_env: HF_TOKEN is not set in this environment; export it" in \
        without.stderr
    assert not (folder / ".kdist").exists()  # refused before anything started
    ran = kdist(folder, "run", "--nodes", "2", env=env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert len(starts(ran.stdout)) == 2 and env["HF_TOKEN"] not in ran.stdout + ran.stderr


@pytest.mark.torch
def test_kdist_run_warns_when_the_trainer_writes_into_the_project(tmp_path: Path) -> None:
    """data/ is the project's: in a container it comes from the image, read-only."""
    folder = project_copy(tmp_path, "proj-writes", epochs=1)
    train = folder / "train.py"
    train.write_text(train.read_text().replace(
        '    x, y = torch.load("data/train.pt")',
        '    x, y = torch.load("data/train.pt")\n'
        '    if os.environ.get("RANK") == "0":\n'
        '        torch.save(x, "data/cache.bin")'))
    ran = kdist(folder, "run", "--nodes", "2")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "warning: the trainer wrote into the project's own folders (data/cache.bin); in a " \
           "container they come from the image, read-only, and these writes fail" in ran.stderr


@pytest.mark.docker
def test_kdist_up_runs_the_project_image_unchanged(tmp_path: Path, image: str) -> None:  # noqa: F811
    """`kdist up` builds the project's image (FROM the trainer image, the project copied into a
    WORKDIR of its own, as NGC's /workspace, not kdist's /app) and runs it: the relative
    entrypoint is found there, the outputs land on the volume at out/ckpt.pt; a write into data/
    fails, as in a pod. The trainer needs HF_TOKEN (secret_env), which no rendered file holds."""
    name = f"proj-up-{uuid.uuid4().hex[:6]}"
    folder = project_copy(tmp_path, name)
    (folder / "Dockerfile").write_text(f"FROM {IMAGE}\nWORKDIR /workspace\nCOPY . /workspace/\n")
    spec = (folder / "kdist.yaml").read_text().replace("kdist-project:0.1.0", f"{name}:test")
    (folder / "kdist.yaml").write_text(spec)
    env = needs_token(folder)
    try:
        up = kdist(folder, "up", "--build", timeout=600, env=env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        rendered = (folder / ".kdist" / "compose" / name / "docker-compose.yaml").read_text()
        assert "HF_TOKEN: null" in rendered and env["HF_TOKEN"] not in rendered
        assert starts(up.stdout) == ["[rank 0] starting at epoch 0", "[rank 1] starting at epoch 0",
                                     "[rank 2] starting at epoch 0"]
        listed = subprocess.run(["docker", "run", "--rm", "-v", f"{name}_checkpoints:/c", IMAGE,
                                 "ls", "/c/out"], capture_output=True, text=True, timeout=120)
        assert listed.stdout.split() == ["ckpt.pt"], listed.stderr
        wrote = subprocess.run(["docker", "run", "--rm", "--read-only", "-w", "/checkpoints",
                                "-v", f"{name}_checkpoints:/checkpoints", f"{name}:test",
                                "python3", "-c", "open('data/cache.bin', 'wb')"],
                               capture_output=True, text=True, timeout=120)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, wrote.stderr
    finally:
        kdist(folder, "down", "--volumes")
        subprocess.run(["docker", "image", "rm", "-f", f"{name}:test"], capture_output=True,
                       timeout=120)
