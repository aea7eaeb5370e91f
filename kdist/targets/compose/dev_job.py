"""`kdist up --dev`: the dev image, the JupyterLab service's start, and its readiness.

Like kdist.targets.compose.job, everything here returns data or raises a KdistError subclass; nothing
prints or exits. The token is generated here, handed to `docker compose` in its process
environment only (the rendered file names the variable, never its value) and kept for the user in
`.kdist/compose/<name>/dev-token` with mode 0600; `kdist down` removes that file.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kdist.fsio import write_all
from kdist.plan import LaunchPlan
from kdist.targets.compose.dev_render import (
    DEV_SERVICE,
    JUPYTER_PORT,
    LOOPBACK,
    TOKEN_ENV,
    dev_image,
    render_text,
)
from kdist.targets.compose.job import (
    ANSI_RE,
    DEV_TOKEN_FILE,
    ComposeJob,
    DockerError,
    ImageMissing,
    PortInUse,
    _Lines,
    detect,
    explain,
    project_for,
    run,
)

READY_TIMEOUT = 120.0
BASE_LABEL = "kdist.dev.base"  # the id of the job image a dev image was built on
INSPECT_TIMEOUT = 60.0
Output = Callable[[str], None] | None


@dataclass(frozen=True)
class DevServer:
    """A JupyterLab that answered with kdist's token."""

    port: int  # on 127.0.0.1
    token: str
    token_file: Path
    image: str

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/lab?token={self.token}"


def open_job(plan: LaunchPlan, workdir: Path, host_port: int) -> ComposeJob:
    """Check the engine and write the job's compose file with the `dev` service."""
    job = ComposeJob(project_for(plan, workdir), detect())
    job.write_file(render_text(plan, host_port))
    return job


def start(job: ComposeJob, build: bool | None = None, on_output: Output = None,
          timeout: float = READY_TIMEOUT) -> DevServer:
    """Build the dev image if needed, (re)start the dev service with a new token, wait for it."""
    image = ensure_image(job.project.image, build, on_output)
    token = secrets.token_hex(24)
    token_file = write_token(job.project.dir / DEV_TOKEN_FILE, token)
    _compose_up(job, token)
    port = published_port(job)
    wait_ready(job, port, token, timeout)
    return DevServer(port, token, token_file, image)


# ---- the image -------------------------------------------------------------------------------


def image_info(image: str) -> tuple[str, str] | None:
    """(image id, the `kdist.dev.base` label) of a local image; None when it is not here."""
    got = run(["docker", "image", "inspect", "--format",
               '{{.Id}} {{if .Config.Labels}}{{index .Config.Labels "' + BASE_LABEL + '"}}{{end}}',
               image], timeout=INSPECT_TIMEOUT)
    if got.returncode != 0 or not got.stdout.strip():
        return None
    image_id, _, label = got.stdout.strip().partition(" ")
    return image_id, label.strip()


def ensure_image(base: str, build: bool | None, on_output: Output = None) -> str:
    """The dev image for `base`: built when missing, when `base` changed since, or with build=True.

    The dev image records its base's id in a label, so a rebuilt job image brings a rebuilt dev
    image (the same torch and libraries in the notebook as in the nodes).
    """
    tag = dev_image(base)
    current = image_info(tag)
    if build is False:
        if current is None:
            raise ImageMissing(f"the dev image {tag} is not on this machine and --no-build was "
                               "given: run `kdist up --dev` without --no-build (it builds the image)")
        return tag
    base_info = image_info(base)
    if build or current is None or base_info is None or current[1] != base_info[0]:
        build_image(base, tag, base_info[0] if base_info else "", on_output)
    return tag


def dockerfile() -> str:
    return resources.files("kdist").joinpath("templates/Dockerfile.dev").read_text(encoding="utf-8")


def build_image(base: str, tag: str, base_id: str = "", on_output: Output = None) -> None:
    """`docker build` of kdist's Dockerfile.dev on top of `base`, with an empty context."""
    with tempfile.TemporaryDirectory(prefix="kdist-dev-") as context:
        (Path(context) / "Dockerfile").write_text(dockerfile(), encoding="utf-8")
        lines = _Lines(["docker", "build", "--tag", tag, "--build-arg", f"BASE_IMAGE={base}",
                        "--label", f"{BASE_LABEL}={base_id}", context])
        while (item := lines.get(timeout=1.0)) is not _Lines.EOF:
            if isinstance(item, str) and on_output is not None:
                on_output(ANSI_RE.sub("", item))
        if lines.close() != 0:
            raise explain("\n".join(lines.tail), f"docker build of the dev image {tag}", base)


# ---- the token and the service ---------------------------------------------------------------


def write_token(path: Path, token: str) -> Path:
    """Write the token readable by this user only (0600 before it is written, then a rename)."""
    write_all({path: token + "\n"}, mode=0o600)
    return path


def _compose_up(job: ComposeJob, token: str) -> None:
    argv = job.compose("up", "--detach", "--no-deps", "--no-build", "--force-recreate", DEV_SERVICE)
    result = run(argv, env={**os.environ, TOKEN_ENV: token})
    if result.returncode == 0:
        return
    error = explain(result.stderr + result.stdout, "starting the dev service", dev_image(job.project.image))
    if isinstance(error, PortInUse):
        raise PortInUse(f"{error}; for the dev service pass --dev-port PORT (0 picks a free one)")
    raise error


def published_port(job: ComposeJob) -> int:
    """The host port Docker bound for Jupyter; an error unless it is bound to 127.0.0.1 only."""
    result = run(job.compose("port", DEV_SERVICE, str(JUPYTER_PORT)),
                 timeout=INSPECT_TIMEOUT)
    host, _, port = result.stdout.strip().rpartition(":")
    if result.returncode != 0 or not port.isdigit():
        raise explain(result.stderr + result.stdout, "docker compose port dev")
    if host != LOOPBACK:
        raise DockerError(f"the dev service is published on {host}:{port}, not on {LOOPBACK} only; "
                          "removing it is safest: `kdist down`")
    return int(port)


# ---- readiness -------------------------------------------------------------------------------


def status_code(port: int, token: str = "", timeout: float = 2.0) -> int | None:
    """HTTP status of GET /api/status on 127.0.0.1 (None when nothing answers); no proxies."""
    request = urllib.request.Request(f"http://{LOOPBACK}:{port}/api/status")
    if token:
        request.add_header("Authorization", f"token {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_ready(job: ComposeJob, port: int, token: str, timeout: float = READY_TIMEOUT) -> None:
    """Until Jupyter answers 200 with the token; an error when it stops, refuses it or times out."""
    deadline = time.monotonic() + timeout
    while (code := status_code(port, token)) != 200:
        if code is not None and code != 503:
            raise DockerError(f"JupyterLab answered HTTP {code} to kdist's token on port {port}: "
                              f"{_logs_tail(job)}")
        state = _state(job)
        if state not in ("running", "created", "restarting"):
            raise DockerError(f"the dev service is {state or 'gone'} instead of running: "
                              f"{_logs_tail(job)}")
        if time.monotonic() > deadline:
            raise DockerError(f"JupyterLab did not answer on {LOOPBACK}:{port} within "
                              f"{timeout:.0f} s: {_logs_tail(job)}")
        time.sleep(0.5)


def _state(job: ComposeJob) -> str:
    labels = (f"label=com.docker.compose.project={job.project.name}",
              f"label=com.docker.compose.service={DEV_SERVICE}")
    result = run(["docker", "ps", "--all", "--filter", labels[0], "--filter", labels[1],
                  "--format", "{{.State}}"], timeout=INSPECT_TIMEOUT)
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def _logs_tail(job: ComposeJob, lines: int = 6) -> str:
    got = run(job.compose("logs", "--no-color", "--tail", str(lines), DEV_SERVICE),
              timeout=INSPECT_TIMEOUT)
    text = " / ".join(x.split("|", 1)[-1].strip() for x in got.stdout.splitlines() if x.strip())
    return f"its last log lines: {text}" if text else "it logged nothing (`docker compose logs dev`)"
