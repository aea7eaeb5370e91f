"""kdist.yaml text -> JobSpec. Strict: every problem is collected, located and reported at once."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from kdist.errors import Problem, SpecError
from kdist.netem import DURATION_RE, PERCENT_RE, duration_us
from kdist.plan import IMAGE_PROJECT_DIR
from kdist.spec import model as s
from kdist.spec.quantity import cpu_cores, memory_bytes
from kdist.yamlio import MAX_DEPTH, too_deep

T = TypeVar("T")
Pos = tuple[int, int]  # 0-based (line, column) as ruamel reports them


class Invalid(Exception):
    """Raised by a field rule: the value at hand is wrong; the message says what was expected."""


Rule = Callable[["Reader", Any, str, Pos], Any]

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MEMORY_RE = re.compile(r"^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$", re.ASCII)
CPU_RE = re.compile(r"^(\d+(\.\d+)?|\d+m)$", re.ASCII)
MAX_NAME = 40  # leaves room for "-rdzv", "-<ordinal>" and controller-revision hashes in 63
# Control characters (C0, DEL, C1): NUL cannot reach an exec argv, the rest garble logs and
# terminals. Multi-line values (args, env values) may hold tabs and newlines.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_IN_TEXT_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Image references as Docker reads them (the distribution/reference grammar).
_ALNUM, _SEP = r"[a-z0-9]+", r"(?:[._]|__|-+)"
_PATH = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_HOST = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_HOST}(?:\.{_HOST})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::\w[\w.-]{{0,127}})?(?:@{_DIGEST})?$",
                      re.ASCII)
# Kubernetes label keys (an optional DNS-subdomain prefix, then a name) and label values.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY_RE = re.compile(rf"^((?=[^/]{{1,253}}/){_DNS_LABEL}(\.{_DNS_LABEL})*/)?{_LABEL_NAME}$",
                          re.ASCII)
LABEL_VALUE_RE = re.compile(rf"^({_LABEL_NAME})?$", re.ASCII)
MOUNT_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$", re.ASCII)
# Checkpoint mount points that hide what the container needs or clash with kdist's own mounts.
RESERVED_MOUNTS = ("/", "/tmp", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/var", "/boot")
RESERVED_TREES = ("/dev", "/proc", "/sys", "/run", "/var/run")
MAX_NODES = 1000
MAX_SECONDS = 2**31 - 1  # timeouts: what a signed 32-bit field holds (about 68 years)
MAX_COUNT = 10_000
MAX_MEMORY = 2**50  # 1Pi
MAX_CPU = 4096
MAX_TEXT = 4096  # characters in one value
MAX_SPEC_BYTES = 2**20


def plain(value: Any) -> Any:
    """ruamel's round-trip scalars (ScalarInt, ScalarFloat, ...) as plain Python values."""
    if isinstance(value, (bool, ScalarBoolean)):
        return bool(value)
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def describe(value: Any) -> str:
    """A short, user-facing description of a YAML value: `a string ('two')`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for kind, word in kinds.items():
        if type(value) is kind:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            return f"{word} ({shown})" if kind is str else f"{word} ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def key_text(key: Any) -> str:
    """A mapping key as a spec path shows it: quoted when it is not a plain printable string."""
    return key if isinstance(key, str) and key.isprintable() and key.strip() == key else repr(key)


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def described(rule: Rule, schema: dict[str, Any]) -> Rule:
    """Attach the JSON Schema of what `rule` accepts (read by kdist.spec.schema)."""
    rule.json_schema = schema  # type: ignore[attr-defined]
    return rule


# ---- scalar rules ---------------------------------------------------------------------------


def no_control(v: str, allowed: re.Pattern[str] = CONTROL_RE) -> None:
    """Invalid when `v` holds a control character (`allowed` picks which ones count)."""
    found = allowed.search(v)
    if found:
        raise Invalid(f"must not contain control characters, got {found[0]!r} at position "
                      f"{found.start()}")


def integer(low: int, high: int | None = None) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> int:
        if type(v) is not int:
            raise Invalid(f"expected an integer, got {describe(v)}")
        if v < low or (high is not None and v > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise Invalid(f"expected an integer {bound}, got {v}")
        return v

    bounds = {"minimum": low} | ({"maximum": high} if high is not None else {})
    return described(rule, {"type": "integer", **bounds})


def text(pattern: re.Pattern[str] | None = None, hint: str = "", max_len: int = 0) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> str:
        if type(v) is not str:
            raise Invalid(f"{hint or 'expected a string'}, got {describe(v)}")
        if not v.strip():
            raise Invalid("must not be empty")
        if len(v) > (max_len or MAX_TEXT):
            raise Invalid(f"must be at most {max_len or MAX_TEXT} characters, got {len(v)}")
        no_control(v)
        if pattern is not None and not pattern.fullmatch(v):
            raise Invalid(f"{hint}, got {v!r}")
        return v

    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_len or MAX_TEXT,
                              "pattern": pattern.pattern if pattern is not None else r"\S",
                              "not": {"pattern": CONTROL_RE.pattern}}
    return described(rule, schema)


def choice(*options: str) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> str:
        if v not in options:
            listed = ", ".join(options)
            hint = did_you_mean(v, list(options)) if isinstance(v, str) else ""
            raise Invalid(f"expected one of {listed}, got {describe(v)}{hint}")
        return str(v)

    return described(rule, {"enum": list(options)})


def quantity(kind: str) -> Rule:
    """Kubernetes quantities; YAML numbers are accepted for cpu (2, 0.5) and memory (bytes)."""
    pattern, example = (CPU_RE, "2, 0.5 or 500m") if kind == "cpu" else (MEMORY_RE, "8Gi or 512Mi")

    def rule(r: Reader, v: Any, path: str, pos: Pos) -> str:
        if type(v) in (int, float):
            v = str(v)
        if type(v) is not str or len(v) > 32 or not pattern.fullmatch(v):
            raise Invalid(f"expected a {kind} quantity like {example}, got {describe(v)}")
        amount = cpu_cores(v) if kind == "cpu" else memory_bytes(v)
        high, shown = (MAX_CPU, str(MAX_CPU)) if kind == "cpu" else (MAX_MEMORY, "1Pi")
        if amount <= 0:
            raise Invalid(f"must be greater than zero, got {v!r}")
        if kind == "cpu" and amount < 0.001:
            raise Invalid(f"must be at least 1m (0.001), got {v!r}")
        if amount > high:
            raise Invalid(f"must be at most {shown}, got {v!r}")
        return v

    high = MAX_CPU if kind == "cpu" else MAX_MEMORY
    return described(rule, {"oneOf": [{"type": "string", "pattern": pattern.pattern, "maxLength": 32},
                                      {"type": "number", "exclusiveMinimum": 0, "maximum": high}]})


def string_list(item: Rule) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise Invalid(f"expected a list, got {describe(v)}")
        return tuple(r.value(item, x, f"{path}[{i}]", r.item_pos(v, i, pos)) for i, x in enumerate(v))

    return described(rule, {"type": "array", "items": item})


def scalar_text(r: Reader, v: Any, path: str, pos: Pos) -> str:
    """Any YAML scalar as the string a shell or an env var would see (tabs and newlines kept)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if type(v) in (int, float):
        return str(v)
    if type(v) is str:
        if len(v) > MAX_TEXT:
            raise Invalid(f"must be at most {MAX_TEXT} characters, got {len(v)}")
        no_control(v, CONTROL_IN_TEXT_RE)
        return v
    raise Invalid(f"expected a string or number, got {describe(v)}")


described(scalar_text, {"type": ["string", "number", "boolean"], "maxLength": MAX_TEXT,
                        "not": {"type": "string", "pattern": CONTROL_IN_TEXT_RE.pattern}})


def string_map(key_re: re.Pattern[str], key_hint: str, reserved: str = "",
               item: Rule = scalar_text) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> tuple[tuple[str, str], ...]:
        if not isinstance(v, dict):
            raise Invalid(f"expected a mapping, got {describe(v)}")
        out = []
        for key, val in v.items():
            kpos, sub = r.key_pos(v, key, pos), f"{path}.{key_text(key)}"
            if not isinstance(key, str) or not key_re.fullmatch(key):
                r.add(kpos, sub, f"{key_hint}, got {key!r}")
            elif reserved and key.startswith(reserved):
                r.add(kpos, sub, f"{reserved}* variables are set by kdist from the spec")
            else:
                out.append((key, r.value(item, val, sub, r.val_pos(v, key, pos))))
        return tuple(sorted(out))

    schema = {"type": "object", "propertyNames": {"pattern": key_re.pattern},
              "additionalProperties": item}
    if reserved:
        schema["propertyNames"] = {"pattern": key_re.pattern, "not": {"pattern": f"^{reserved}"}}
    return described(rule, schema)


def section(cls: type[T]) -> Rule:
    def rule(r: Reader, v: Any, path: str, pos: Pos) -> T:
        return r.section(cls, v, path, pos)

    return described(rule, {"section": cls})


def nodes(r: Reader, v: Any, path: str, pos: Pos) -> s.Nodes:
    """`nodes: 4`, `nodes: "2:4"` or `nodes: {min: 2, max: 4, count: 3}`."""
    if isinstance(v, dict):
        raw = {k: plain(v[k]) for k in v}
        unknown = sorted(set(raw) - {"min", "max", "count"})
        if unknown:
            raise Invalid(f"unknown key {unknown[0]!r}; expected min, max and optional count")
        low, high = raw.get("min"), raw.get("max")
        count = raw.get("count", high)
    elif type(v) is int:
        low = high = count = v
    elif type(v) is str and re.fullmatch(r"[0-9]{1,9}:[0-9]{1,9}", v.strip()):
        low, high = (int(x) for x in v.strip().split(":"))
        count = high
    else:
        raise Invalid(f"expected a node count like 2 or a range like \"2:4\", got {describe(v)}")
    if not all(type(x) is int and 1 <= x <= MAX_NODES for x in (low, high, count)):
        raise Invalid(f"min, max and count must be integers from 1 to {MAX_NODES}")
    assert isinstance(low, int) and isinstance(high, int) and isinstance(count, int)
    if low > high:
        raise Invalid(f"min ({low}) is greater than max ({high})")
    if not low <= count <= high:
        raise Invalid(f"count ({count}) must be within min:max ({low}:{high})")
    return s.Nodes(min=low, max=high, count=count)


_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_NODES}
described(nodes, {"oneOf": [
    _COUNT,
    {"type": "string", "pattern": r"^\s*[0-9]{1,9}:[0-9]{1,9}\s*$"},
    {"type": "object", "properties": {"min": _COUNT, "max": _COUNT, "count": _COUNT},
     "required": ["min", "max"], "additionalProperties": False},
]})


DNS_NAME = text(LABEL_RE, "expected a DNS-1123 label (lowercase letters, digits and '-')", 63)
LABEL_KEY = text(LABEL_KEY_RE, "expected a Kubernetes label key like kubernetes.io/arch", 317)
SECONDS = integer(1, MAX_SECONDS)


def label_value(r: Reader, v: Any, path: str, pos: Pos) -> str:
    """A Kubernetes label value: at most 63 characters, alphanumeric at both ends ("" allowed)."""
    value = scalar_text(r, v, path, pos)
    if len(value) > 63 or not LABEL_VALUE_RE.fullmatch(value):
        raise Invalid("expected a Kubernetes label value (at most 63 letters, digits, '-', '_' "
                      f"or '.', alphanumeric at both ends), got {value!r}")
    return value


described(label_value, {"type": ["string", "number", "boolean"], "pattern": LABEL_VALUE_RE.pattern,
                        "maxLength": 63})


_MOUNT_TEXT = text(max_len=1024)


def mount_path(r: Reader, v: Any, path: str, pos: Pos) -> str:
    """The checkpoint mount point: absolute, normalised, not a directory the container needs."""
    value: str = _MOUNT_TEXT(r, v, path, pos)
    if not MOUNT_RE.fullmatch(value) and value != "/":
        raise Invalid("expected an absolute path in the container like /checkpoints (letters, "
                      f"digits, '.', '_', '-' and '/', no trailing '/'), got {value!r}")
    if {".", ".."} & set(value.split("/")):
        raise Invalid(f"must not contain '.' or '..' components, got {value!r}")
    reserved = [p for p in RESERVED_TREES if value == p or value.startswith(p + "/")]
    if value in RESERVED_MOUNTS or reserved:
        raise Invalid(f"{value} is a directory the container needs (or kdist mounts itself); "
                      "use a path of its own like /checkpoints")
    if value == IMAGE_PROJECT_DIR:
        raise Invalid(f"mounting the volume at {value} would hide the project's code in the "
                      "image; use a path of its own like /checkpoints")
    return value


_NOT_MOUNTABLE = [{"enum": [*RESERVED_MOUNTS, IMAGE_PROJECT_DIR]},
                  {"pattern": f"^({'|'.join(map(re.escape, RESERVED_TREES))})(/|$)"},
                  {"pattern": r"/\.\.?(/|$)"}]  # '.' and '..' components
described(mount_path, {"type": "string", "pattern": MOUNT_RE.pattern, "maxLength": 1024,
                       "not": {"anyOf": _NOT_MOUNTABLE}})


def toleration(r: Reader, v: Any, path: str, pos: Pos) -> s.Toleration:
    """A toleration the API server accepts: an empty key needs Exists, Exists takes no value."""
    t = r.section(s.Toleration, v, path, pos)
    if t is INVALID:
        return INVALID
    if not t.key and t.operator != "Exists":
        raise Invalid("a toleration without a key must have operator: Exists (it then tolerates "
                      "every taint); give a key or operator: Exists")
    if t.operator == "Exists" and t.value:
        raise Invalid(f"operator Exists takes no value, got value {t.value!r}")
    return t


_EXISTS = {"operator": {"const": "Exists"}}
described(toleration, {"allOf": [
    {"section": s.Toleration},
    {"anyOf": [{"required": ["key"]}, {"required": ["operator"], "properties": _EXISTS}]},
    {"not": {"required": ["operator", "value"], "properties": {**_EXISTS, "value": {"minLength": 1}}}},
]})

RULES: dict[type, dict[str, Rule]] = {
    s.JobSpec: {
        "name": text(NAME_RE, "expected a DNS-1035 label: lowercase letters, digits and '-', "
                     "starting with a letter", MAX_NAME),
        "image": text(IMAGE_RE, "expected an image reference like registry.example.com/team/"
                      "trainer:1.0 (lowercase repository, optional :tag and @digest)", 512),
        "entrypoint": text(re.compile(r"^[^\s-]\S*$"), "expected the training script path: no "
                           "spaces, not starting with '-' (torchrun would read it as its own option)"),
        "args": string_list(scalar_text),
        "nodes": nodes,
        "procs_per_node": integer(1, 64),
        "resources": section(s.Resources),
        "rendezvous": section(s.Rendezvous),
        "max_restarts": integer(0, 1000),
        "env": string_map(ENV_RE, "expected an environment variable name", reserved="PET_"),
        "secret_env": string_list(text(ENV_RE, "expected an environment variable name like "
                                       "HF_TOKEN")),
        "checkpoint": section(s.Checkpoint),
        "network_interface": text(re.compile(r"^[\w.:-]{1,15}$"), "expected an interface name like eth0"),
        "network": section(s.Network),
        "run_as_user": integer(1, 2**31 - 1),
        "compose": section(s.ComposeOptions),
        "k8s": section(s.K8sOptions),
        "validate": section(s.ValidateOptions),
    },
    s.ValidateOptions: {
        "disable": string_list(text(re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
                                    "expected a rule id like pss-run-as-non-root")),
    },
    s.Resources: {
        "cpu": quantity("cpu"),
        "memory": quantity("memory"),
        "gpu": integer(0, 64),
        "shm": quantity("memory"),
    },
    s.Rendezvous: {
        "port": integer(1, 65535),
        "store": choice("standalone", "node0"),
        "join_timeout": SECONDS,
        "last_call_timeout": SECONDS,
        "close_timeout": SECONDS,
        "keep_alive_interval": SECONDS,
        "keep_alive_max_attempt": integer(1, MAX_COUNT),
        "read_timeout": SECONDS,
        "wait_timeout": integer(0, MAX_SECONDS),
    },
    s.Checkpoint: {
        "path": mount_path,
        "size": quantity("memory"),
        "storage_class": DNS_NAME,
        "access_mode": choice("ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"),
    },
    s.Network: {
        "latency": text(DURATION_RE, "expected a duration like 20ms, 500us or 1s"),
        "jitter": text(DURATION_RE, "expected a duration like 5ms, 500us or 1s"),
        "loss": text(PERCENT_RE, "expected a percentage from 0% to 100% like 0.1%"),
    },
    s.ComposeOptions: {"build": section(s.Build)},
    s.Build: {"context": text(), "dockerfile": text()},
    s.K8sOptions: {
        "namespace": DNS_NAME,
        "node_selector": string_map(LABEL_KEY_RE, "expected a Kubernetes label key like "
                                    "kubernetes.io/arch", item=label_value),
        "tolerations": string_list(toleration),
        "service_account": DNS_NAME,
        "priority_class": DNS_NAME,
        "image_pull_secrets": string_list(DNS_NAME),
        "queue": DNS_NAME,
    },
    s.Toleration: {
        "key": LABEL_KEY,
        "operator": choice("Equal", "Exists"),
        "value": label_value,
        "effect": choice("NoSchedule", "PreferNoSchedule", "NoExecute"),
    },
}
REQUIRED: dict[type, tuple[str, ...]] = {s.JobSpec: ("name", "image", "entrypoint", "nodes")}

# What each key means, for `kdist schema` (editors' tooltips) and the Helm chart's values.yaml
# and values.schema.json (kdist/targets/helm/chart.py): one text per field, beside its rule.
DESCRIPTIONS: dict[type, dict[str, str]] = {
    s.JobSpec: {
        'name': (
            "Job name (DNS-1035 label: lowercase letters, digits and '-', starting with a "
            'letter, at most 40 characters). Names every object: <name> (Service, StatefulSet, '
            'PDB, NetworkPolicy), <name>-rdzv (standalone store), <name>-checkpoints (PVC); '
            'also the torchrun --rdzv-id.'
        ),
        'image': (
            'Container image for the nodes and the standalone store (needs python3 and torch).'
        ),
        'entrypoint': (
            'The script torchrun starts (path in the image, relative to the working directory).'
        ),
        'args': (
            'Arguments for the script (strings; shell-quoted in the node script exactly like '
            'kdist does).'
        ),
        'nodes': (
            'How many nodes (pods). min == max is a fixed-size job; min < max is elastic '
            '(torchrun --nnodes MIN:MAX).'
        ),
        'procs_per_node': (
            'torchrun --nproc-per-node: processes per node (one per GPU on GPU nodes).'
        ),
        'max_restarts': 'torchrun --max-restarts: rendezvous rounds after a worker failure.',
        'resources': 'Per node. Requests equal limits (Guaranteed QoS).',
        'rendezvous': "c10d rendezvous. The timeouts are torch's rdzv-conf keys, in seconds.",
        'checkpoint': 'A volume shared by every node (PersistentVolumeClaim <name>-checkpoints).',
        'env': (
            'Extra environment for every node: NAME: "value" (strings; PET_* is reserved for '
            'torchrun).'
        ),
        'secret_env': (
            'Names of environment variables every node gets from where the job is started, '
            'never written into rendered files: kdist run and kdist up pass them from the '
            'shell; Kubernetes reads them from the Secret <name>-env, which kdist apply writes '
            'from the shell.'
        ),
        'network_interface': (
            'Network interface for collectives (sets NCCL_SOCKET_IFNAME and '
            'GLOO_SOCKET_IFNAME); "" = auto.'
        ),
        'run_as_user': "UID and GID the containers run as (non-root; also the pod's fsGroup).",
        'network': (
            "Simulated network conditions (kdist run, kdist up): netem on every node's egress; "
            'ignored on Kubernetes.'
        ),
        'compose': 'Options of the Compose target only.',
        'k8s': 'Options of the Kubernetes targets only (k8s, helm-values).',
        'validate': 'Options of kdist validate for this job.',
    },
    s.Nodes: {
        'min': "Fewest nodes the job runs with (also the PodDisruptionBudget's minAvailable).",
        'max': 'Most nodes the job runs with.',
        'count': 'How many nodes start (StatefulSet replicas); min <= count <= max.',
    },
    s.Resources: {
        'cpu': 'CPU per node, a Kubernetes quantity: "2", "0.5", "500m".',
        'memory': 'Memory per node: "8Gi", "512Mi".',
        'gpu': 'GPUs per node (nvidia.com/gpu); 0 for none. procs_per_node must not exceed it.',
        'shm': 'Size of the in-memory /dev/shm (DataLoader workers and NCCL need more than 64 MB).',
    },
    s.Rendezvous: {
        'store': (
            'standalone: a small store Deployment every node joins (survives losing any node); '
            "node0: node 0's torchrun hosts the store (losing node 0 ends the job)."
        ),
        'port': "Store port (c10d's default is 29400).",
        'join_timeout': 'Seconds for a rendezvous round to complete.',
        'last_call_timeout': (
            'Seconds to wait for more nodes once `nodes.min` have joined; less than '
            'join_timeout.'
        ),
        'close_timeout': 'Seconds to wait for the rendezvous to close after the last call.',
        'keep_alive_interval': (
            'Heartbeat period; a node is lost after keep_alive_interval x '
            'keep_alive_max_attempt seconds (at least 5) without a heartbeat.'
        ),
        'keep_alive_max_attempt': 'Missed heartbeats before a node is dropped.',
        'read_timeout': "Store read timeout (also the standalone store's timeout).",
        'wait_timeout': "Seconds a node waits for the store's DNS name and port.",
    },
    s.Checkpoint: {
        'path': (
            "Mount path in the node containers and every node's working directory; the trainer "
            'reads it from KDIST_CHECKPOINT_DIR.'
        ),
        'size': 'Requested size of the claim.',
        'storage_class': 'StorageClass of the claim; "" uses the cluster\'s default class.',
        'access_mode': 'ReadWriteMany (every node mounts it), ReadWriteOnce or ReadWriteOncePod.',
    },
    s.K8sOptions: {
        'namespace': (
            'Namespace written into every object; "" leaves it out (kdist apply: the context\'s '
            'namespace).'
        ),
        'node_selector': (
            'Node labels the node pods must match, e.g. {cloud.google.com/gke-nodepool: gpu}; '
            'not the store pod, which prefers nodes without GPUs.'
        ),
        'tolerations': (
            'Tolerations of the node pods (not the store pod): key, operator (Equal or Exists; '
            'default Equal), value, effect (NoSchedule, PreferNoSchedule or NoExecute).'
        ),
        'service_account': (
            'ServiceAccount of the node pods, whose token only their finish sidecar mounts (a '
            'projected volume; no container gets an automounted token); "" creates one named '
            'after the job.'
        ),
        'priority_class': 'PriorityClass of the node and store pods; "" for none.',
        'image_pull_secrets': 'Names of Secrets for pulling the image.',
        'queue': (
            'Kueue LocalQueue; sets the label kueue.x-k8s.io/queue-name on the StatefulSet; "" '
            'for none.'
        ),
    },
    s.Toleration: {
        'key': 'The taint key to tolerate; empty with operator Exists tolerates every taint.',
        'operator': 'Equal (key and value match) or Exists (the key alone).',
        'value': 'The taint value, with operator Equal.',
        'effect': 'NoSchedule, PreferNoSchedule or NoExecute; empty matches every effect.',
    },
    s.Network: {
        'latency': 'Added delay on every packet a node sends, a tc duration like 20ms.',
        'jitter': 'Variation of the delay, a tc duration like 5ms.',
        'loss': 'Share of packets dropped, a percentage like 0.1%.',
    },
    s.ComposeOptions: {
        'build': 'Build the image before kdist up when it is missing (--build: always).',
    },
    s.Build: {
        'context': 'The build context, relative to the spec\'s folder.',
        'dockerfile': 'The Dockerfile, relative to the context.',
    },
    s.ValidateOptions: {
        'disable': 'Rule ids kdist validate skips for this job, like pss-run-as-non-root.',
    },
}
INVALID: Any = object()


class Reader:
    """Walks the ruamel tree, converting values and collecting Problems with positions."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, pos: Pos, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, pos[0] + 1, pos[1] + 1, path, message))

    @staticmethod
    def key_pos(m: Any, key: Any, default: Pos) -> Pos:
        """Where `key` is written; a key merged in with `<<: *anchor` has no position of its
        own in this mapping: `default` (the mapping's) then."""
        known = key in (getattr(getattr(m, "lc", None), "data", None) or {})
        return tuple(m.lc.key(key)) if known else default

    @staticmethod
    def val_pos(m: Any, key: Any, default: Pos) -> Pos:
        known = key in (getattr(getattr(m, "lc", None), "data", None) or {})
        return tuple(m.lc.value(key)) if known else default

    @staticmethod
    def item_pos(seq: Any, i: int, default: Pos) -> Pos:
        lc = getattr(seq, "lc", None)
        return tuple(lc.item(i)) if lc is not None else default

    def value(self, rule: Rule, v: Any, path: str, pos: Pos) -> Any:
        try:
            return rule(self, plain(v), path, pos)
        except Invalid as e:
            self.add(pos, path, str(e))
            return INVALID

    def section(self, cls: type[T], v: Any, path: str, pos: Pos) -> T:
        if not isinstance(v, dict):
            raise Invalid(f"expected a mapping, got {describe(v)}")
        rules = RULES[cls]
        kwargs: dict[str, Any] = {}
        meant: set[str] = set()  # required keys that a misspelt key already points to
        for key in v:
            kpos, sub = self.key_pos(v, key, pos), f"{path}.{key_text(key)}" if path else key_text(key)
            if key not in rules:
                hint = did_you_mean(str(key), list(rules))
                meant |= {k for k in REQUIRED.get(cls, ()) if hint and hint == did_you_mean(str(key), [k])}
                self.add(kpos, sub, f"unknown key{hint}; expected one of {', '.join(rules)}")
                continue
            kwargs[key] = self.value(rules[key], v[key], sub, self.val_pos(v, key, pos))
        for key in REQUIRED.get(cls, ()):
            if key not in v:
                if key not in meant:  # else the typo's did-you-mean already says it
                    self.add(pos, f"{path}.{key}" if path else key, "is required")
                kwargs[key] = INVALID
        if any(x is INVALID for x in kwargs.values()):
            return INVALID  # type: ignore[no-any-return]
        assert is_dataclass(cls)
        return cls(**{k: val for k, val in kwargs.items() if k in {f.name for f in fields(cls)}})


def _pos_of(doc: Any, path: str) -> Pos:
    """Position of the value at a dotted path (`a.b`, `a[2]`), or of the deepest that exists."""
    pos: Pos = (0, 0)
    node = doc
    for key in path.split("."):
        key, _, index = key.partition("[")
        if not isinstance(node, dict) or key not in node:
            break
        pos = Reader.val_pos(node, key, pos)
        node = node[key]
        if index and isinstance(node, list) and int(index[:-1]) < len(node):
            pos = Reader.item_pos(node, int(index[:-1]), pos)
            node = node[int(index[:-1])]
    return pos


def _cross_checks(job: s.JobSpec) -> list[tuple[str, str]]:
    """Rules that involve several fields: (path, message) for each violation."""
    out = []
    res, rdzv = job.resources, job.rendezvous
    if res.gpu and job.procs_per_node > res.gpu:
        out.append(("procs_per_node", f"{job.procs_per_node} processes per node but resources.gpu "
                    f"is {res.gpu}: use at most one process per GPU"))
    if rdzv.keep_alive_interval * rdzv.keep_alive_max_attempt < 5:
        out.append(("rendezvous.keep_alive_max_attempt",
                    "keep_alive_interval x keep_alive_max_attempt must be >= 5 s; "
                    "tighter settings drop live nodes"))
    if memory_bytes(res.shm) > memory_bytes(res.memory):
        out.append(("resources.shm", f"/dev/shm ({res.shm}) is larger than the memory limit "
                    f"({res.memory}): it counts against that limit on both targets; lower shm "
                    "or raise memory"))
    if rdzv.last_call_timeout >= rdzv.join_timeout:
        out.append(("rendezvous.last_call_timeout",
                    f"must be less than join_timeout ({rdzv.join_timeout})"))
    out += _secret_env_checks(job)
    net = job.network
    if net is not None and net.jitter and duration_us(net.jitter) > duration_us(net.latency or "0s"):
        out.append(("network.jitter", f"{net.jitter} is more than network.latency "
                    f"({net.latency or 'none'}): netem would cut the negative delays off at zero"))
    return out


def _secret_env_checks(job: s.JobSpec) -> list[tuple[str, str]]:
    out, literal = [], dict(job.env)
    for i, name in enumerate(job.secret_env):
        path = f"secret_env[{i}]"
        if not isinstance(name, str):  # already reported
            continue
        if name.startswith("PET_"):
            out.append((path, "PET_* variables are set by kdist from the spec"))
        elif name in literal:
            out.append((path, f"{name} is also in env with a literal value: keep one of them"))
        elif name in job.secret_env[:i]:
            out.append((path, f"{name} is listed twice"))
    return out


def _check_depth(text_: str, file: str) -> None:
    """A SpecError when collections nest deeper than MAX_DEPTH (before composing recurses)."""
    mark = too_deep(text_)
    if mark is not None:
        raise SpecError([Problem(file, mark[0] + 1, mark[1] + 1, "",
                                 f"invalid YAML: nested more than {MAX_DEPTH} levels deep")])


def parse_yaml(text_: str, file: str) -> Any:
    """YAML 1.2 round-trip parse (keeps line/column; merge keys `<<: *base` are supported);
    syntax errors and nesting deeper than MAX_DEPTH become a SpecError."""
    try:
        _check_depth(text_, file)
        with warnings.catch_warnings():  # YAML allows an anchor to be defined again
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            return YAML(typ="rt", pure=True).load(text_)
    except RecursionError:
        raise SpecError([Problem(file, 0, 0, "", "invalid YAML: nested too deeply")]) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line, mark.column) if mark is not None else (0, 0)
        message = f"invalid YAML: {e.problem or e.context}"
        raise SpecError([Problem(file, line + 1, col + 1, "", message)]) from None
    except YAMLError as e:
        raise SpecError([Problem(file, 0, 0, "", f"invalid YAML: {e}")]) from None


def load_text(text_: str, file: str = "kdist.yaml") -> s.JobSpec:
    doc = parse_yaml(text_, file)
    if not isinstance(doc, dict):
        got = "an empty file" if doc is None else describe(doc)
        raise SpecError([Problem(file, 1, 1, "", f"expected a mapping with name, image, "
                                                 f"entrypoint and nodes, got {got}")])
    r = Reader(file)
    job = r.value(section(s.JobSpec), doc, "", (0, 0))
    if job is not INVALID:
        for path, message in _cross_checks(job):
            r.add(_pos_of(doc, path), path, message)
    if r.problems:
        raise SpecError(r.problems)
    return job  # type: ignore[no-any-return]


def read_text(path: Path) -> str:
    """File contents as text, or a SpecError that says why it cannot be read. At most
    MAX_SPEC_BYTES are read, so a device or an endless pipe ends in a message too."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError([Problem(str(path), 0, 0, "", f"cannot read: {e.strerror}")]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([Problem(str(path), 0, 0, "", f"larger than {MAX_SPEC_BYTES // 2**20} MiB: "
                                 "not a job spec")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem(str(path), 0, 0, "", "not a text file (not UTF-8)")]) from None


def load_file(path: Path) -> s.JobSpec:
    return load_text(read_text(path), str(path))
