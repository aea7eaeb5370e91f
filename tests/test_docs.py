"""docs/cli.md is generated from the commands themselves; `make golden` rewrites it."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, Golden

from kdist.schema import job_schema


def cli_reference() -> str:
    """The reference as a fresh process prints it (see kdist.clidocs: no state from other tests)."""
    done = subprocess.run([sys.executable, "-m", "kdist.clidocs"], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return done.stdout


def test_cli_reference_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "cli.md", cli_reference())


def test_readme_links_the_cli_reference() -> None:
    assert "docs/cli.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_committed_schema_is_current(golden: Golden) -> None:
    golden.check(ROOT / "docs" / "kdist.schema.json", json.dumps(job_schema(), indent=2) + "\n")
