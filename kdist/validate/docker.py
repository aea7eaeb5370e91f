"""The one side effect of validation: `docker compose -f - config -q` (Compose v2)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from kdist.validate.model import ComposeConfig

TIMEOUT_S = 60


@functools.cache
def available() -> bool:
    """True when `docker compose` (v2) runs here; the daemon is not needed for `config`."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "compose", "version"], capture_output=True,
                              timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def compose_config(text: str, project: Path) -> str | None:
    """None when docker compose accepts the file, else its message."""
    cmd = ["docker", "compose", "--project-directory", str(project), "-f", "-", "config", "-q"]
    try:
        done = subprocess.run(cmd, input=text, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"docker compose config did not finish in {TIMEOUT_S} s"
    except OSError as e:
        return f"cannot run docker compose: {e.strerror or e}"
    if done.returncode == 0:
        return None
    return done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}"


def runner() -> ComposeConfig | None:
    """The Options.compose_runner for the CLI: docker compose when it is installed."""
    return compose_config if available() else None
