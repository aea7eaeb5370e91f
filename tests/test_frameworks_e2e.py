"""A PyTorch Lightning and a Hugging Face Accelerate trainer (trainers/examples/lightning and
accelerate), unchanged, under `kdist run` and `kdist up`: a node lost from outside mid-run
(every process of a local node SIGKILLed; `docker kill` of a node container), every rank of
the next round resumes through the framework's own checkpoint, and the job ends with exit 0; a
trainer that raises is the named root cause. The losses are `make chaos` tests. Needs
pytorch-lightning and accelerate (the `frameworks` extra; skips without them). Real torchrun
processes; a real Docker Engine for `kdist up` (marked docker).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from test_compose_e2e import image  # noqa: F401  (a fixture: kdist's trainer image, the base)
from test_tutorial_e2e import kill_node, read_until
from tutorial_logs import assert_resumed_together

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "trainers" / "examples"
KDIST = [sys.executable, "-c", "from kdist.cli import main; main()"]
MODULES = {"lightning": "pytorch_lightning", "accelerate": "accelerate"}
RESUMED_RE = re.compile(r"\[rank (\d+)\] resumed from \S+ at epoch (\d+)")  # both trainers print it
LOST = "kdist | node-1 lost (killed by SIGKILL, no error in its log)"


def example(tmp_path: Path, framework: str, **config: object) -> Path:
    """The example project in a folder of its own, its config.json updated with `config`."""
    pytest.importorskip(MODULES[framework])
    folder = tmp_path / framework
    shutil.copytree(EXAMPLES / framework, folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def edit_spec(folder: Path, **fields: str) -> None:
    """Replace top-level `key: value` lines of the project's kdist.yaml."""
    spec = folder / "kdist.yaml"
    text = spec.read_text()
    for key, value in fields.items():
        text = re.sub(rf"^{key}: .*$", f"{key}: {value}", text, count=1, flags=re.M)
    spec.write_text(text)


@pytest.mark.torch
@pytest.mark.chaos
@pytest.mark.parametrize("framework", MODULES)
def test_kdist_run_loses_a_node_from_outside_and_the_framework_resumes(tmp_path: Path,
                                                                       framework: str) -> None:
    folder = example(tmp_path, framework, epochs=8, epoch_sleep=1.0)
    run_dir = (tmp_path / "run").resolve()
    proc = subprocess.Popen([*KDIST, "run", "--run-dir", str(run_dir)], cwd=folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "KDIST_RUN_DIR": str(run_dir)})
    seen: list[str] = []
    try:
        read_until(proc, "] epoch 3 ", seen)
        kill_node(run_dir, 1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert LOST in out and "node-restart node=1" in out, out[-3000:]
    assert_resumed_together(out, ranks=3, pattern=RESUMED_RE)  # node-1 came back: 3 ranks again
    assert "restarts 1" in err, err[-2000:]


@pytest.mark.torch
@pytest.mark.parametrize("framework", MODULES)
def test_a_framework_trainer_that_raises_is_the_root_cause(tmp_path: Path, framework: str) -> None:
    folder = example(tmp_path, framework, epochs=3, epoch_sleep=0, fail_at_epoch=1)
    edit_spec(folder, max_restarts="0")
    ran = subprocess.run([*KDIST, "run", "--nodes", "2"], cwd=folder, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert re.search(r"kdist: node-[01] failed \(torchrun exit code 1\): rank [01] exited with "
                     r"code 1: RuntimeError: injected failure at epoch 1\n", ran.stderr), ran.stderr


@pytest.mark.docker
@pytest.mark.chaos
@pytest.mark.parametrize("framework", MODULES)
def test_kdist_up_loses_a_node_docker_killed_and_the_framework_resumes(
        tmp_path: Path, image: str, framework: str) -> None:  # noqa: F811
    """The project's image (FROM kdist's trainer image, the framework from PyPI) built by
    `kdist up --build`; `docker kill` of node-1's container, which Docker does not restart:
    the other two nodes resume from the framework's checkpoint and finish."""
    folder = example(tmp_path, framework, epochs=8, epoch_sleep=1.0)
    name = f"{framework}-{uuid.uuid4().hex[:6]}"
    edit_spec(folder, name=name, image=f"{name}:test")
    stderr = tmp_path / "up.stderr"
    with stderr.open("w") as err:  # a file: the image build is chatty
        proc = subprocess.Popen([*KDIST, "up", "--build"], cwd=folder, text=True,
                                stdout=subprocess.PIPE, stderr=err)
    seen: list[str] = []
    try:
        read_until(proc, "] epoch 3 ", seen, timeout=900)
        killed = subprocess.run(["docker", "kill", f"{name}-node-1-1"], capture_output=True,
                                text=True, timeout=60)
        assert killed.returncode == 0, killed.stderr
        out = "".join(seen) + proc.communicate(timeout=400)[0]
        assert proc.returncode == 0, out[-3000:] + stderr.read_text()[-3000:]
        assert f"{LOST}; 2 of 3 nodes go on (min 2)" in out, out[-3000:]
        assert_resumed_together(out, ranks=2, pattern=RESUMED_RE)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([*KDIST, "down", "--volumes"], cwd=folder, capture_output=True, timeout=300)
        subprocess.run(["docker", "image", "rm", "-f", f"{name}:test"], capture_output=True,
                       timeout=120)
