"""`network:` in the spec: tc arguments, the Compose helpers, Kubernetes ignoring it, validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import FIXTURES

from kdist.cli import cli
from kdist.netem import duration_us, netem_args, tc_argv
from kdist.plan import LaunchPlan
from kdist.spec.load import load_file, load_text
from kdist.spec.model import Network
from kdist.targets.compose import render as compose
from kdist.validate import Options, validate

SPEC = FIXTURES / "features" / "network" / "kdist.yaml"
BASE = "name: j\nimage: i:1\nentrypoint: t.py\nnodes: 2\n"


@pytest.mark.parametrize(("network", "args"), [
    (Network(latency="20ms", jitter="5ms", loss="0.1%"),
     ["netem", "delay", "20ms", "5ms", "loss", "0.1%"]),
    (Network(latency="1s"), ["netem", "delay", "1s"]),
    (Network(loss="2%"), ["netem", "loss", "2%"]),
    (Network(), ["netem"]),
])
def test_netem_arguments_hold_only_what_the_spec_sets(network: Network, args: list[str]) -> None:
    assert netem_args(network) == args
    assert tc_argv("eth0", network) == ["tc", "qdisc", "replace", "dev", "eth0", "root", *args]


def test_durations() -> None:
    assert duration_us("20ms") == 20_000 and duration_us("1.5s") == 1_500_000
    assert duration_us("500us") == 500
    for bad in ("20", "20 ms", "-1ms", "1m"):
        with pytest.raises(ValueError):
            duration_us(bad)


def test_network_is_optional_and_typed() -> None:
    assert load_text(BASE).network is None
    assert load_text(BASE + "network: {}\n").network == Network()
    assert load_file(SPEC).network == Network(latency="20ms", jitter="5ms", loss="0.1%")


def test_compose_adds_one_helper_per_node_in_the_node_namespace() -> None:
    services = compose.render(LaunchPlan(load_file(SPEC)))["services"]
    helpers = {k: v for k, v in services.items() if k.endswith("-netem")}
    assert list(helpers) == ["node-0-netem", "node-1-netem", "node-2-netem"]
    helper = helpers["node-2-netem"]
    assert helper["network_mode"] == "service:node-2"
    assert helper["cap_drop"] == ["ALL"] and helper["cap_add"] == ["NET_ADMIN"]
    assert helper["command"][:6] == ["tc", "qdisc", "replace", "dev", "eth0", "root"]
    assert helper["profiles"] == services["node-2"]["profiles"] == ["scale"]
    assert "profiles" not in helpers["node-0-netem"]
    assert "cap_add" not in services["node-0"] and services["node-0"]["user"] == "1000:1000"


def test_without_network_nothing_changes() -> None:
    plain = load_text(BASE)
    assert not any(k.endswith("-netem") for k in compose.render(LaunchPlan(plain))["services"])


def test_kubernetes_ignores_network_with_a_warning() -> None:
    result = CliRunner().invoke(cli, ["render", "-t", "k8s", "-f", str(SPEC)])
    assert result.exit_code == 0, result.output
    assert "kdist: warning: network conditions are a simulation feature" in result.stderr
    plain = CliRunner().invoke(cli, ["render", "-t", "compose", "-f", str(SPEC)])
    assert "warning" not in plain.stderr


def _compose_file(tmp_path: Path, change: Any = None) -> Path:
    data = compose.render(LaunchPlan(load_file(SPEC)))
    if change is not None:
        change(data["services"]["node-0-netem"])
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(data), sort_keys=False), encoding="utf-8")
    return path


def test_validate_accepts_the_helpers_but_not_root_with_more_power(tmp_path: Path) -> None:
    assert validate([str(SPEC)], Options()).findings == []
    assert validate([str(_compose_file(tmp_path))], Options()).findings == []

    def more(svc: dict[str, Any]) -> None:
        svc["cap_add"] = ["NET_ADMIN", "SYS_ADMIN"]

    found = validate([str(_compose_file(tmp_path, more))], Options()).findings
    helper = "service node-0-netem"
    assert sorted((f.rule, f.object) for f in found) == [
        ("compose-cap-add", helper), ("compose-cap-add", helper), ("compose-user", helper)]
