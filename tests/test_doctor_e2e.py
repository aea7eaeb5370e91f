"""`kdist doctor --in-node` inside the trainer image, as an init step (marked `docker`).

The image is the one tests/test_compose_e2e.py builds (trainers/Dockerfile installs kdist); no
spec file is inside the container, so the options and the environment say what to check.
Skipped, with the reason, when no Docker Engine answers `docker info`.
"""

from __future__ import annotations

import subprocess

import pytest
from test_compose_e2e import image  # noqa: F401  (the image fixture)

pytestmark = pytest.mark.docker


def run_in_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "run", "--rm", *args], capture_output=True, text=True,
                          timeout=120)


def test_a_small_dev_shm_fails_the_init_step(image: str) -> None:  # noqa: F811
    done = run_in_node("--shm-size", "1m", image,
                       "kdist", "doctor", "--in-node", "--shm", "64Mi", "--rdzv-host", "localhost")
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stderr.splitlines() if line.startswith("kdist doctor: FAIL")]
    assert len(fails) == 1, done.stderr
    assert fails[0].startswith("kdist doctor: FAIL shm: /dev/shm is 1Mi")
    assert "smaller than --shm 64Mi" in fails[0]
    assert "fix: give the node a bigger /dev/shm (docker run --shm-size, compose shm_size" \
        in fails[0]
    assert "kdist doctor: 1 failed of 4 checks in this node" in done.stderr


def test_enough_shm_and_a_resolvable_store_host_pass(image: str) -> None:  # noqa: F811
    done = run_in_node("--shm-size", "128m", "--add-host", "job-rdzv:127.0.0.1",
                       "-e", "PET_RDZV_ENDPOINT=job-rdzv:29400", "-e", "GLOO_SOCKET_IFNAME=eth0",
                       image, "kdist", "doctor", "--in-node", "--shm", "64Mi")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kdist doctor: ok shm: /dev/shm is 128Mi" in done.stdout
    assert "kdist doctor: ok interface: network interface 'eth0' is present" in done.stdout
    assert "kdist doctor: ok dns: rendezvous host job-rdzv resolves" in done.stdout
    assert "all 4 checks passed in this node" in done.stdout
    whoami = run_in_node(image, "id", "-u")
    assert whoami.stdout.strip() == "1000"  # still non-root
