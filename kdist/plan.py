"""Target-independent decisions, made once: names, labels, the torchrun argv, env, ports.

Every target (local, compose, k8s, helm) launches `torchrun_argv(...)`; only the rendezvous
endpoint host differs between targets (invariant 1 in docs/architecture.md).
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from kdist.errors import InputError
from kdist.spec.model import JobSpec

STORE_COMPONENT = "rdzv"
NODE_COMPONENT = "node"
CHECKPOINT_ENV = "KDIST_CHECKPOINT_DIR"
# Where the project's code is in kdist's images (trainers/Dockerfile's WORKDIR); the checkpoint
# volume may not hide it.
IMAGE_PROJECT_DIR = "/app"
# A container node's script starts in its image's working directory (WORKDIR: where the image
# keeps the project, /app in kdist's, /workspace in NGC's), keeps it as $project, then moves to
# the job's working directory; a relative entrypoint and the project's links point into $project.
PROJECT = "$project"



def sh_join(argv: list[str]) -> str:
    """shlex.join, except that $project (PROJECT) at the start of a word stays a variable."""
    words = []
    for arg in argv:
        if arg == PROJECT or arg.startswith(PROJECT + "/"):
            rest = arg[len(PROJECT):]
            words.append(f'"{PROJECT}"' + (shlex.quote(rest) if rest else ""))
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def program(name: str) -> str:
    """The text of an in-pod program in kdist/node/ (run as `python3 -c TEXT`, so an image
    needs python3 but not kdist); the Helm chart ships the same bytes under charts/kdist/files/."""
    return resources.files("kdist.node").joinpath(name).read_text(encoding="utf-8")


STORE_CODE = program("store.py")  # the standalone c10d store
WAIT_CODE = program("wait.py")  # wait for the store before torchrun


@dataclass(frozen=True)
class LaunchPlan:
    spec: JobSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def store_name(self) -> str:
        return f"{self.spec.name}-{STORE_COMPONENT}"

    @property
    def standalone_store(self) -> bool:
        return self.spec.rendezvous.store == "standalone"

    @property
    def finish_role(self) -> str:
        return f"{self.spec.name}-finish"

    @property
    def secret_env_name(self) -> str:
        """The Secret that holds the values of `secret_env` on Kubernetes (kdist apply writes it)."""
        return f"{self.spec.name}-env"

    def secret_values(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The values of `secret_env` from `environ`, where the job is started; all must be set."""
        names = self.spec.secret_env
        missing = [n for n in names if n not in environ]
        if missing:
            raise InputError(f"secret_env: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
                             " not set in this environment; export "
                             f"{'it' if len(missing) == 1 else 'them'} before starting the job, "
                             "or remove the name from secret_env")
        return {n: environ[n] for n in names}

    @property
    def outcome_record(self) -> str:
        """The ConfigMap where the finish sidecar records the outcome (kdist/node/finish.py)."""
        return f"{self.spec.name}-outcome"

    @property
    def checkpoint_claim(self) -> str:
        return f"{self.spec.name}-checkpoints"

    @property
    def workdir(self) -> str:
        """Where every node starts: the shared checkpoint volume, so relative paths a trainer
        writes (snapshot.pt, model_final.pth) are shared by all nodes and outlive the job."""
        return self.spec.checkpoint.path

    @property
    def image_entrypoint(self) -> str:
        """The entrypoint as a node's script names it in the image: a relative one under $project
        (the image's working directory, PROJECT), an absolute one as it is."""
        entrypoint = posixpath.normpath(self.spec.entrypoint)
        return entrypoint if posixpath.isabs(entrypoint) else f"{PROJECT}/{entrypoint}"

    def selector_job(self) -> dict[str, str]:
        """Matches every pod of this job (nodes and store)."""
        return {"app.kubernetes.io/name": "kdist", "app.kubernetes.io/instance": self.name}

    def labels(self, component: str) -> dict[str, str]:
        """`app.kubernetes.io/*` labels; the selector subset is name + instance + component."""
        return {
            "app.kubernetes.io/name": "kdist",
            "app.kubernetes.io/instance": self.name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "kdist",
        }

    def selector(self, component: str) -> dict[str, str]:
        labels = self.labels(component)
        del labels["app.kubernetes.io/managed-by"]
        return labels

    def rdzv_conf(self, is_host: bool) -> str:
        r = self.spec.rendezvous
        pairs = [
            ("join_timeout", r.join_timeout),
            ("last_call_timeout", r.last_call_timeout),
            ("close_timeout", r.close_timeout),
            ("keep_alive_interval", r.keep_alive_interval),
            ("keep_alive_max_attempt", r.keep_alive_max_attempt),
            ("read_timeout", r.read_timeout),
            ("is_host", "true" if is_host else "false"),
        ]
        return ",".join(f"{k}={v}" for k, v in pairs)

    def torchrun_argv(self, host: str, port: int | None = None, is_host: bool = False) -> list[str]:
        """The one torchrun command line. `host` is the only target-specific part."""
        s = self.spec
        return [
            "torchrun",
            "--nnodes", str(s.nodes),
            "--nproc-per-node", str(s.procs_per_node),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{host}:{port or s.rendezvous.port}",
            "--rdzv-id", s.name,
            "--rdzv-conf", self.rdzv_conf(is_host),
            "--max-restarts", str(s.max_restarts),
            self.image_entrypoint,
            *s.args,
        ]  # fmt: skip

    def store_argv(self, port: int | None = None, bind: str = "", idle: int = 0) -> list[str]:
        """The standalone store; `bind` (default: every interface) e.g. 127.0.0.1 locally;
        `idle`: exit once no node has been connected for that many seconds (kdist/node/store.py)."""
        timeout = self.spec.rendezvous.read_timeout
        argv = ["python3", "-c", STORE_CODE, str(port or self.spec.rendezvous.port), str(timeout)]
        return [*argv, bind, *([str(idle)] if idle else [])] if bind or idle else argv

    def wait_argv(self, host: str) -> list[str]:
        r = self.spec.rendezvous
        connect = "1" if self.standalone_store else "0"
        return ["python3", "-c", WAIT_CODE, host, str(r.port), str(r.wait_timeout), connect,
                PROJECT]

    def enter_workdir(self) -> str:
        """The first lines of a container node's script: keep the image's working directory as
        $project, then move to the job's (the checkpoint volume)."""
        return f"project=$PWD\ncd {shlex.quote(self.workdir)} || exit 1\n"

    def node_script(self, host: str, is_host: bool = False) -> str:
        """POSIX sh for a Compose node: wait for the store, then exec torchrun (PID 1 under init)."""
        torchrun = sh_join(self.torchrun_argv(host, is_host=is_host))
        return f"set -e\n{self.enter_workdir()}{sh_join(self.wait_argv(host))}\nexec {torchrun}\n"

    def env(self) -> dict[str, str]:
        """Environment shared by every node on every target (before target-specific entries)."""
        s = self.spec
        env = {
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # pytorch#135712: stale peer addresses
            "PYTHONUNBUFFERED": "1",
            "LOGLEVEL": "INFO",  # torchrun's rendezvous and restart lines, read by kdist.torchlog
            CHECKPOINT_ENV: s.checkpoint.path,
        }
        if s.network_interface:
            env["NCCL_SOCKET_IFNAME"] = s.network_interface
            env["GLOO_SOCKET_IFNAME"] = s.network_interface
        env.update(dict(s.env))
        return dict(sorted(env.items()))
