"""`--dev`: a JupyterLab service next to the job's Compose nodes (pure: plan -> dicts).

The `dev` service joins the job's network with the project's code (the folder `kdist up` runs in,
bind-mounted at /app) and the checkpoint volume mounted. It is locked down like the nodes
(non-root, no capabilities, no-new-privileges) and more: a read-only root filesystem (/tmp is a
tmpfs and HOME), Jupyter published on 127.0.0.1 only, a token required (never password-less),
Jupyter's default `allow_origin` (no cross-origin access) and its Host-header check on, so a page
on another origin or a DNS-rebinding name cannot use it.

The token never appears in the file: `environment: [JUPYTER_TOKEN]` without a value passes the
variable through from the `docker compose` process, which `kdist up --dev` starts with a token it
generated. The service sits in the `dev` profile, so the job's own `docker compose up` never starts
it; kdist starts it after the nodes.
"""

from __future__ import annotations

import shlex
from typing import Any

from kdist.plan import LaunchPlan
from kdist.spec.quantity import cpu_cores
from kdist.targets.compose import render as compose
from kdist.yamlio import dump

DEV_SERVICE = "dev"
DEV_PROFILE = "dev"
JUPYTER_PORT = 8888  # inside the container
DEFAULT_PORT = 8888  # on the host's 127.0.0.1; 0 lets Docker pick a free one
LOOPBACK = "127.0.0.1"
CODE_DIR = "/app"  # the kdist trainer image's WORKDIR: node and notebook paths agree
TOKEN_ENV = "JUPYTER_TOKEN"
DEV_SUFFIX = "-dev"

_NO_TOKEN = ("dev: JUPYTER_TOKEN is not set; kdist up --dev sets it (by hand: export a random "
             "token before docker compose up dev)")


def dev_image(image: str) -> str:
    """The dev image's tag for a job image: `kdist-trainer:0.1.0` -> `kdist-trainer:0.1.0-dev`."""
    ref, _, digest = image.partition("@")
    repo, tag = ref, "latest"
    if ":" in ref.rsplit("/", 1)[-1]:
        repo, tag = ref.rsplit(":", 1)
    if digest:
        tag = digest.rsplit(":", 1)[-1][:12]
    return f"{repo}:{tag[: 128 - len(DEV_SUFFIX)]}{DEV_SUFFIX}"


def jupyter_argv() -> list[str]:
    """JupyterLab on every interface of the container (Docker publishes it on 127.0.0.1 only)."""
    return ["jupyter", "lab", "--no-browser", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}",
            f"--ServerApp.root_dir={CODE_DIR}",
            "--ServerApp.allow_remote_access=False"]  # keep the Host-header check on 0.0.0.0


def _script() -> str:
    guard = f'test -n "${TOKEN_ENV}" || {{ echo {shlex.quote(_NO_TOKEN)} >&2; exit 64; }}'
    return f"{guard}\nexec {' '.join(jupyter_argv())}"


def _port(host_port: int) -> dict[str, Any]:
    port: dict[str, Any] = {"target": JUPYTER_PORT, "host_ip": LOOPBACK, "protocol": "tcp"}
    if host_port:
        port["published"] = str(host_port)
    return port


def dev_service(plan: LaunchPlan, host_port: int = DEFAULT_PORT) -> dict[str, Any]:
    """The `dev` service: JupyterLab with the code and the checkpoints, on the job's network."""
    s = plan.spec
    env = {**plan.env(), "HOME": "/tmp"}
    res = s.resources
    return {
        "image": dev_image(s.image),
        "hostname": DEV_SERVICE,
        "command": ["sh", "-c", compose.escape(_script())],
        "working_dir": CODE_DIR,
        "environment": [TOKEN_ENV, *(f"{k}={compose.escape(v)}" for k, v in env.items()),
                        *s.secret_env],
        "user": f"{s.run_as_user}:{s.run_as_user}",
        "init": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "tmpfs": [f"{compose.TMP}:exec"],
        "networks": [compose.NETWORK],
        "ports": [_port(host_port)],
        "shm_size": compose.compose_size(res.shm),
        "deploy": {"resources": {"limits": {"cpus": f"{cpu_cores(res.cpu):g}",
                                            "memory": compose.compose_size(res.memory)}}},
        "volumes": [f"{compose.VOLUME}:{s.checkpoint.path}", f".:{CODE_DIR}"],
        "profiles": [DEV_PROFILE],
        "restart": "no",
    }


def render(plan: LaunchPlan, host_port: int = DEFAULT_PORT) -> dict[str, Any]:
    """The job's Compose file with the `dev` service added."""
    doc = compose.render(plan)
    doc["services"][DEV_SERVICE] = dev_service(plan, host_port)
    return doc


def render_text(plan: LaunchPlan, host_port: int = DEFAULT_PORT) -> str:
    """What `kdist render --target compose --dev` prints."""
    return dump(render(plan, host_port))
