"""`kdist diff`: the Compose and Kubernetes renderings agree for every spec, and a hand-altered
manifest is reported row by row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import FIXTURES, ROOT

from kdist.cli import KdistGroup
from kdist.cli.tools import diff, doctor
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file
from kdist.targets import render
from kdist.targets.compose import render as compose
from kdist.targets.k8s import render as k8s
from kdist.tools.diff import compare, normalise, token_diff

SPECS = sorted((FIXTURES / "features").glob("*/kdist.yaml")) + sorted(
    (ROOT / "trainers" / "examples").glob("*.yaml"))
MINIMAL = FIXTURES / "features" / "minimal" / "kdist.yaml"
GPU = FIXTURES / "features" / "gpu" / "kdist.yaml"
NODE0 = FIXTURES / "features" / "node0-store" / "kdist.yaml"


@click.group(cls=KdistGroup)
def cli() -> None:
    """A group like kdist's, with the commands under test."""


cli.add_command(doctor)
cli.add_command(diff)


def spec_id(path: Path) -> str:
    return path.parent.name if path.name == "kdist.yaml" else path.stem


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["diff", *args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def flagged(result: Result) -> list[str]:
    """Names of the rows flagged `!=` in the table."""
    rows = []
    for line in result.stdout.splitlines():
        if not line.startswith("!="):
            continue
        rest = line[2:].strip()
        rows.append(rest.split("  ")[0])
    return rows


def plan(spec: Path) -> LaunchPlan:
    return LaunchPlan(load_file(spec))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def altered_compose(tmp_path: Path, spec: Path, change: Any) -> Path:
    doc = compose.render(plan(spec))
    change(doc)
    return write(tmp_path / "docker-compose.yaml", yaml.safe_dump(doc, sort_keys=False))


def altered_k8s(tmp_path: Path, spec: Path, old: str, new: str) -> Path:
    text = render(plan(spec), "k8s")
    assert old in text
    return write(tmp_path / "k8s.yaml", text.replace(old, new))


# ---- every spec: no difference -------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_fresh_renders_match(spec: Path) -> None:
    p = plan(spec)
    rows = compare(compose.render(p), k8s.render(p))
    assert [r.name for r in rows if not r.same] == []
    names = {r.name for r in rows}
    assert {"torchrun", "nodes", "rendezvous port", "shm", "gpus", "cpu", "memory",
            "checkpoint mount", "env KDIST_CHECKPOINT_DIR", "env HOME", "workdir", "user",
            "root filesystem", "scratch mounts"} <= names
    assert not any(r.name == "env PET_LOCAL_ADDR" for r in rows)
    result = invoke("-f", str(spec))
    assert result.exit_code == 0, result.output
    assert flagged(result) == [] and f"all {len(rows)} rows match" in result.stdout


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_committed_golden_files_match(spec: Path) -> None:
    folder = spec.parent if spec.name == "kdist.yaml" else ROOT / "manifests" / spec.stem
    if not (folder / "k8s.yaml").exists():
        pytest.skip(f"no rendered manifests in {folder}")
    result = invoke("-f", str(spec), "--compose", str(folder / "docker-compose.yaml"),
                    "--k8s", str(folder / "k8s.yaml"))
    assert result.exit_code == 0, result.output


def test_store_on_node_0_compares_both_torchrun_lines() -> None:
    p = plan(NODE0)
    rows = {r.name: r for r in compare(compose.render(p), k8s.render(p))}
    assert "is_host=true" in rows["torchrun (store host)"].compose
    assert "is_host=false" in rows["torchrun"].k8s
    assert "--rdzv-endpoint '<host>:29400'" in rows["torchrun"].compose
    assert rows["rendezvous store"].compose == "node 0's torchrun"


# ---- hand-altered manifests ----------------------------------------------------------------


def test_shm_size_limit_changed_in_k8s(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "sizeLimit: 1Gi", "sizeLimit: 2Gi")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert result.exit_code == 1
    assert flagged(result) == ["shm"]
    assert "  shm: compose: 1Gi / k8s: 2Gi" in result.stdout
    assert "1 of" in result.stderr and "rows differ" in result.stderr


def test_shm_equal_in_bytes_is_not_a_difference(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "sizeLimit: 1Gi", "sizeLimit: 1024Mi")
    assert invoke("-f", str(MINIMAL), "--k8s", str(manifest)).exit_code == 0


def test_torchrun_arg_changed_in_the_compose_command(tmp_path: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        for svc in ("node-0", "node-1"):
            command = doc["services"][svc]["command"]
            command[2] = command[2].replace("--max-restarts 3", "--max-restarts 5")

    result = invoke("-f", str(MINIMAL), "--compose", str(altered_compose(tmp_path, MINIMAL, change)))
    assert result.exit_code == 1
    assert flagged(result) == ["torchrun"]
    assert "  torchrun: compose: --max-restarts 5 / k8s: --max-restarts 3" in result.stdout


def test_one_compose_node_that_differs_is_named(tmp_path: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        command = doc["services"]["node-1"]["command"]
        command[2] = command[2].replace("--nproc-per-node 1", "--nproc-per-node 2")

    result = invoke("-f", str(MINIMAL), "--compose", str(altered_compose(tmp_path, MINIMAL, change)))
    assert result.exit_code == 1
    assert flagged(result) == ["torchrun (node-1)"]
    assert "compose: --nproc-per-node 2 / k8s: --nproc-per-node 1" in result.stdout


def test_env_value_changed(tmp_path: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        for svc in ("node-0", "node-1"):
            doc["services"][svc]["environment"]["PYTHONUNBUFFERED"] = "0"

    result = invoke("-f", str(MINIMAL), "--compose", str(altered_compose(tmp_path, MINIMAL, change)))
    assert result.exit_code == 1
    assert flagged(result) == ["env PYTHONUNBUFFERED"]
    assert "  env PYTHONUNBUFFERED: compose: 0 / k8s: 1" in result.stdout


def test_env_only_on_one_side(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "- name: PYTHONUNBUFFERED\n",
                           "- name: EXTRA\n          value: x\n        - name: PYTHONUNBUFFERED\n")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert flagged(result) == ["env EXTRA"]
    assert "env EXTRA: compose: (unset) / k8s: x" in result.stdout


def test_by_design_differences_are_not_reported() -> None:
    result = invoke("-f", str(MINIMAL))
    assert result.exit_code == 0, result.output
    assert "Not compared (different by design):" in result.stdout
    for what in ("PET_LOCAL_ADDR", "--rdzv-endpoint host"):
        assert f"  {what}: " in result.stdout
    assert "  HOME: " not in result.stdout


def test_what_a_trainer_can_write_is_compared(tmp_path: Path) -> None:
    """HOME, the working directory and the read-only root are rows, not "by design" notes."""
    manifest = altered_k8s(tmp_path, MINIMAL, "value: /tmp\n", "value: /home/elsewhere\n")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert result.exit_code == 1
    assert flagged(result) == ["env HOME"]
    manifest = altered_k8s(tmp_path, MINIMAL, "readOnlyRootFilesystem: true",
                           "readOnlyRootFilesystem: false")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert flagged(result) == ["root filesystem"]
    assert "root filesystem: compose: read-only / k8s: writable" in result.stdout
    manifest = altered_k8s(tmp_path, MINIMAL, "cd /checkpoints || exit 1", "cd /app || exit 1")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert flagged(result) == ["workdir"]
    assert "workdir: compose: /checkpoints / k8s: /app" in result.stdout


def test_rendezvous_port_changed_in_the_service(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "port: 29400\n", "port: 29401\n")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert result.exit_code == 1
    assert flagged(result) == ["rendezvous port"]
    assert "Service port 29401" in result.stdout


def test_replicas_changed(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "replicas: 2\n", "replicas: 3\n")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest))
    assert flagged(result) == ["nodes"]
    assert "compose starts 2 node services, the StatefulSet 3 replicas" in result.stdout


def test_gpu_count_changed(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, GPU, "nvidia.com/gpu: 2", "nvidia.com/gpu: 1")
    result = invoke("-f", str(GPU), "--k8s", str(manifest))
    assert flagged(result) == ["gpus"]
    assert "  gpus: compose: 2 / k8s: 1" in result.stdout


def test_cpu_memory_and_checkpoint_mount_changed(tmp_path: Path) -> None:
    def change(doc: dict[str, Any]) -> None:
        for svc in ("node-0", "node-1"):
            node = doc["services"][svc]
            node["deploy"]["resources"]["limits"] |= {"cpus": "2", "memory": "1g"}
            node["volumes"] = ["checkpoints:/ckpt"]

    result = invoke("-f", str(MINIMAL), "--compose", str(altered_compose(tmp_path, MINIMAL, change)))
    assert flagged(result) == ["cpu", "memory", "checkpoint mount"]
    assert "  memory: compose: 1Gi / k8s: 2Gi" in result.stdout


def test_json_output(tmp_path: Path) -> None:
    manifest = altered_k8s(tmp_path, MINIMAL, "sizeLimit: 1Gi", "sizeLimit: 2Gi")
    result = invoke("-f", str(MINIMAL), "--k8s", str(manifest), "-o", "json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 1 and doc["same"] is False
    assert [r["row"] for r in doc["rows"] if not r["same"]] == ["shm"]


# ---- bad input -----------------------------------------------------------------------------


def test_both_files_need_no_spec(tmp_path: Path) -> None:
    folder = FIXTURES / "features" / "elastic"
    result = invoke("-f", str(tmp_path / "none.yaml"), "--compose",
                    str(folder / "docker-compose.yaml"), "--k8s", str(folder / "k8s.yaml"))
    assert result.exit_code == 0, result.output


def test_bad_manifests_are_messages(tmp_path: Path) -> None:
    """Bad input exits 2 (1 means the renderings differ)."""
    no_sts = write(tmp_path / "k8s.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n")
    result = invoke("-f", str(MINIMAL), "--k8s", str(no_sts))
    assert result.exit_code == 2
    assert "no StatefulSet whose container runs torchrun" in result.stderr
    broken = write(tmp_path / "broken.yaml", "services: [\n")
    result = invoke("-f", str(MINIMAL), "--compose", str(broken))
    assert result.exit_code == 2 and f"{broken}:" in result.stderr and "not valid YAML" in result.stderr
    result = invoke("-f", str(MINIMAL), "--compose", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2 and "cannot read" in result.stderr
    scalar = write(tmp_path / "scalar.yaml", "just text\n")
    result = invoke("-f", str(MINIMAL), "--compose", str(scalar))
    assert result.exit_code == 2 and "not a Compose file" in result.stderr
    no_nodes = write(tmp_path / "c.yaml", "services: {web: {image: nginx:1}}\n")
    result = invoke("-f", str(MINIMAL), "--compose", str(no_nodes))
    assert result.exit_code == 2 and "no node service" in result.stderr
    garbage = write(tmp_path / "g.yaml", "services:\n  node-0:\n    command: [torchrun, t.py]\n"
                    "    deploy: {resources: {limits: {cpus: lots}}}\n")
    result = invoke("-f", str(MINIMAL), "--compose", str(garbage))
    assert result.exit_code == 2
    assert "the compose file has a value kdist diff cannot read" in result.stderr and "lots" in result.stderr


def test_normalise_and_token_diff() -> None:
    argv = ["torchrun", "--rdzv-endpoint", "rdzv:29400", "--rdzv-endpoint=node-0:1", "t.py"]
    assert normalise(argv) == ["torchrun", "--rdzv-endpoint", "<host>:29400",
                               "--rdzv-endpoint=<host>:1", "t.py"]
    assert token_diff(["a", "--x", "1"], ["a", "--x", "2"]) == "compose: --x 1 / k8s: --x 2"
    assert token_diff(["a"], ["a", "b"]) == "compose: (nothing) / k8s: b"
