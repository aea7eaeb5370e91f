"""The README's Quickstart as scripts/quickstart.sh reads it (`make quickstart` runs it for real).

Only `--list` runs here (no clone, no venv): every line parses, every need is one the script
checks, and a line that needs Docker, a cluster or helm says so, so that the script skips it
honestly on machines without them instead of failing.
"""

from __future__ import annotations

import subprocess

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "quickstart.sh"


def quickstart() -> list[tuple[int, set[str], str]]:
    done = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = []
    for row in done.stdout.splitlines():
        where, needs, command = row.split("\t", 2)
        lines.append((int(where.split(":")[1]), set(needs.split()), command))
    return lines


def test_the_quickstart_starts_with_the_venv_and_runs_the_starter_spec() -> None:
    lines = quickstart()
    commands = [command.split("#")[0].strip() for _, _, command in lines]
    assert commands[0] == "make venv && . .venv/bin/activate"
    assert commands.index("kdist init") < commands.index("kdist run")
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    for number, _, command in lines:
        assert readme[number - 1] == "    " + command  # the line numbers point at README.md


def test_lines_that_need_more_than_python_say_so() -> None:
    for number, needs, command in quickstart():
        words = command.split("#")[0].split()
        if words[0] in ("docker",) or words[:2] in (["kdist", "up"], ["kdist", "down"]):
            assert "docker" in needs, (number, command)
        if words[:2] == ["kdist", "up"]:
            assert "image" in needs, (number, command)
        if words[0] == "kubectl" or words[:2] == ["kdist", "delete"] or (
                words[:2] == ["kdist", "apply"] and "--dry-run=client" not in words):
            assert "cluster" in needs, (number, command)
        if words[0] == "helm":
            assert "helm" in needs, (number, command)
            assert "install" not in words or "cluster" in needs, (number, command)
