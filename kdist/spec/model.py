"""The typed model of kdist.yaml. Plain frozen dataclasses with defaults; no YAML, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StoreMode = Literal["standalone", "node0"]


@dataclass(frozen=True)
class Nodes:
    """`nodes: N` or `nodes: MIN:MAX`; `count` is how many start (default MAX)."""

    min: int
    max: int
    count: int

    @property
    def elastic(self) -> bool:
        return self.min != self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.max}"


@dataclass(frozen=True)
class Resources:
    """Per node. Quantities use Kubernetes syntax (`cpu: "2"`, `memory: 8Gi`)."""

    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = 0
    shm: str = "1Gi"


@dataclass(frozen=True)
class Rendezvous:
    """c10d rendezvous settings; the timeouts are torch's rdzv-conf keys (seconds)."""

    port: int = 29400
    store: StoreMode = "standalone"
    join_timeout: int = 600
    last_call_timeout: int = 1
    close_timeout: int = 10
    keep_alive_interval: int = 1
    keep_alive_max_attempt: int = 5
    read_timeout: int = 60
    wait_timeout: int = 300  # how long a node waits for the store's DNS name/port


@dataclass(frozen=True)
class Checkpoint:
    """A volume shared by every node, mounted at `path` (KDIST_CHECKPOINT_DIR): also every
    node's working directory."""

    path: str = "/checkpoints"
    size: str = "10Gi"
    storage_class: str = ""
    access_mode: str = "ReadWriteMany"


@dataclass(frozen=True)
class Build:
    context: str = "."
    dockerfile: str = "trainers/Dockerfile"


@dataclass(frozen=True)
class ComposeOptions:
    build: Build | None = None


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""


@dataclass(frozen=True)
class K8sOptions:
    namespace: str = ""
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    service_account: str = ""
    priority_class: str = ""
    image_pull_secrets: tuple[str, ...] = ()
    queue: str = ""  # Kueue LocalQueue name -> label kueue.x-k8s.io/queue-name


@dataclass(frozen=True)
class ValidateOptions:
    """Rule ids `kdist validate` skips for this job (checked by kdist validate)."""

    disable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Network:
    """Simulated network conditions (kdist run, kdist up): netem on every node's egress.

    `latency`/`jitter` are tc durations (`20ms`, `1s`), `loss` a percentage (`0.1%`); "" = none.
    Between two nodes the added round trip is about 2 x latency (both ends delay their egress).
    """

    latency: str = ""
    jitter: str = ""
    loss: str = ""


@dataclass(frozen=True)
class JobSpec:
    name: str
    image: str
    entrypoint: str
    nodes: Nodes
    args: tuple[str, ...] = ()
    procs_per_node: int = 1
    resources: Resources = field(default_factory=Resources)
    rendezvous: Rendezvous = field(default_factory=Rendezvous)
    max_restarts: int = 3
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[str, ...] = ()  # names; values from where the job starts, never rendered
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    network_interface: str = ""
    network: Network | None = None  # simulation only: kdist run and compose, not Kubernetes
    run_as_user: int = 1000
    compose: ComposeOptions = field(default_factory=ComposeOptions)
    k8s: K8sOptions = field(default_factory=K8sOptions)
    validate: ValidateOptions = field(default_factory=ValidateOptions)
