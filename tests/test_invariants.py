"""docs/architecture.md invariants 1, 2 and 4: one torchrun line, deterministic output, valid documents."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import FIXTURES, ROOT

from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets import get, names, render
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s

SPECS = sorted((FIXTURES / "features").glob("*/kdist.yaml")) + sorted(
    (ROOT / "trainers" / "examples").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "trainers" / "examples").glob("*.yaml"))


def spec_id(path: Path) -> str:
    return path.parent.name if path.name == "kdist.yaml" else path.stem


def torchrun_lines(script: str) -> list[list[str]]:
    """Every torchrun argv exec'd by a node script (one, or two when node 0 hosts the store)."""
    out = []
    for line in script.splitlines():
        if line.lstrip().startswith(("exec torchrun ", "torchrun ")):
            words = shlex.split(line[line.index("torchrun") :])
            out.append(words[:-1] if words[-1] == "&" else words)
    return out


def without_host(argv: list[str]) -> list[str]:
    i = argv.index("--rdzv-endpoint")
    port = argv[i + 1].rsplit(":", 1)[1]
    return [*argv[: i + 1], f"HOST:{port}", *argv[i + 2 :]]


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_one_torchrun_command_line_for_every_target(spec: Path) -> None:
    plan = LaunchPlan(load_file(spec))
    local = without_host(plan.torchrun_argv("127.0.0.1", is_host=False))
    services = compose.render(plan)["services"]
    sts = k8s.statefulset(plan)["spec"]["template"]["spec"]["containers"][0]
    per_target: dict[str, list[list[str]]] = {
        "compose": [a for name, svc in services.items() if name.startswith("node-")
                    for a in torchrun_lines(svc["command"][2].replace("$$", "$"))],
        "k8s": torchrun_lines(sts["command"][2]),
    }
    assert len(per_target["k8s"]) == (1 if plan.standalone_store else 2)
    for target, lines in per_target.items():
        assert lines, target
        clients = [without_host(a) for a in lines if "is_host=false" in " ".join(a)]
        assert clients and all(a == local for a in clients), target
    hosts = [a for lines in per_target.values() for a in lines if "is_host=true" in " ".join(a)]
    assert len(hosts) == (0 if plan.standalone_store else 2)  # node 0 in compose and in k8s


@pytest.mark.parametrize("target", names("render"))
def test_rendering_is_byte_identical_across_processes(target: str) -> None:
    spec = FIXTURES / "features" / "elastic" / "kdist.yaml"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        cmd = [sys.executable, "-c", "from kdist.cli import main; main()",
               "render", "-t", target, "-f", str(spec)]
        outs.add(subprocess.run(cmd, env=env, capture_output=True, check=True).stdout)
    assert len(outs) == 1


@pytest.mark.parametrize("target", names("render"))
@pytest.mark.parametrize("example", EXAMPLES, ids=spec_id)
def test_committed_manifests_equal_a_fresh_render(example: Path, target: str) -> None:
    committed = ROOT / "manifests" / example.stem / get(target).filename
    assert committed.exists(), f"{committed} missing: run `make examples`"
    fresh = render(LaunchPlan(load_file(example)), target)
    assert committed.read_text() == fresh, f"{committed} drifted: run `make examples`"


def k8s_docs(spec: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(render(LaunchPlan(load_file(spec)), "k8s")))


@pytest.mark.parametrize("version", ["1.31.0", "1.35.0"])
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_k8s_documents_pass_strict_openapi(spec: Path, version: str) -> None:
    for doc in k8s_docs(spec):
        kubernetes_validate.validate(doc, version, strict=True)


def compose_v2() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    return probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout) is not None


@pytest.mark.docker
@pytest.mark.skipif(not compose_v2(), reason="Docker Compose v2 not installed (../shared/env/docker.sh)")
@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_compose_file_passes_docker_compose_config(spec: Path, tmp_path: Path) -> None:
    text = render(LaunchPlan(load_file(spec)), "compose")
    result = subprocess.run(["docker", "compose", "-f", "-", "config", "-q"], input=text,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
