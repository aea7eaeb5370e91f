"""Find the torchrun call in a container command and check what breaks elastic jobs.

Containers usually run `sh -c SCRIPT` whose last line is `exec torchrun ...`; the script is split
with shlex. Options follow torchrun's own parser (`--opt value`, `--opt=value`, `_` or `-`,
unambiguous prefixes) and its PET_* environment fallbacks.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kdist.shellwords import logical_lines, split_words, torchrun_at, torchrun_lines
from kdist.spec.quantity import human_bytes

# torchrun options that take a value / that are flags (torch.distributed.run.get_args_parser)
VALUE_OPTIONS = (
    "nnodes", "nproc-per-node", "rdzv-backend", "rdzv-endpoint", "rdzv-id", "rdzv-conf",
    "max-restarts", "monitor-interval", "start-method", "event-log-handler", "role", "log-dir",
    "redirects", "tee", "local-ranks-filter", "duplicate-stdout-filters",
    "duplicate-stderr-filters", "node-rank", "master-addr", "master-port", "local-addr",
    "logs-specs", "numa-binding", "signals-to-handle", "shutdown-timeout",
)
FLAG_OPTIONS = ("standalone", "module", "no-python", "run-path", "virtual-local-rank", "help")
SHORT = {"m": "module", "r": "redirects", "t": "tee", "h": "help"}
DEFAULTS = {"nnodes": "1:1", "nproc-per-node": "1", "rdzv-backend": "static",
            "rdzv-endpoint": "", "rdzv-conf": "", "max-restarts": "0"}
SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh"}
C10D_PORT = 29400

# keys torch's c10d backend and dynamic rendezvous read (torch/distributed/elastic/rendezvous),
# plus `timeout` (set by the launcher), `use_libuv` (read by torch < 2.4) and `rank` (static)
TIMEOUT_KEYS = ("join_timeout", "last_call_timeout", "close_timeout", "heartbeat_timeout",
                "read_timeout", "timeout")
INT_KEYS = ("keep_alive_interval", "keep_alive_max_attempt", "rank")
BOOL_KEYS = ("is_host", "use_libuv")
RDZV_KEYS = (*TIMEOUT_KEYS, *INT_KEYS, *BOOL_KEYS, "store_type")
BOOL_WORDS = {"1", "true", "t", "yes", "y", "0", "false", "f", "no", "n"}


@dataclass
class Call:
    """One torchrun invocation: its options, flags and where it is (element, script line)."""

    options: dict[str, str]
    flags: set[str]
    element: int  # index in command + args
    script_line: int | None  # 0-based line in an `sh -c` script
    env: dict[str, str] = field(default_factory=dict)  # `export X=1` / `X=1 torchrun` in the script

    def option(self, name: str, env: dict[str, str]) -> str:
        """The value torchrun uses: command line, then PET_<NAME>, then torchrun's default."""
        if name in self.options:
            return self.options[name]
        pet = "PET_" + name.upper().replace("-", "_")
        return env.get(pet, DEFAULTS.get(name, ""))

    def has_option(self, name: str, env: dict[str, str]) -> bool:
        return name in self.options or "PET_" + name.upper().replace("-", "_") in env


def _canonical(opt: str) -> str | None:
    """`--nproc_per_node` / `--nproc-per` -> nproc-per-node; None when unknown or ambiguous."""
    if not opt.startswith("--"):
        return SHORT.get(opt[1:])
    name = opt[2:].replace("_", "-")
    known = VALUE_OPTIONS + FLAG_OPTIONS
    if name in known:
        return name
    prefixed = [k for k in known if k.startswith(name)]
    return prefixed[0] if len(prefixed) == 1 else None


def parse_options(tokens: list[str]) -> tuple[dict[str, str], set[str]]:
    """torchrun's options up to the training script (the first positional argument)."""
    options: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--" or not tok.startswith("-") or tok == "-":
            break
        opt, eq, value = tok.partition("=")
        name = _canonical(opt)
        if name in VALUE_OPTIONS:
            if not eq:
                i += 1
                value = tokens[i] if i < len(tokens) else ""
            options[name] = value
        elif name is not None:
            flags.add(name)
        i += 1
    return options, flags


_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _script_call(script: str, element: int) -> Call | None:
    """The last torchrun line of a shell script, with the variables exported before it."""
    lines = logical_lines(script)
    last = next(torchrun_lines(reversed(list(enumerate(lines))), strict=False), None)
    if last is None:
        return None
    index, prefix, words = last
    options, flags = parse_options(words)
    env: dict[str, str] = {}
    for _, before in lines[:index]:
        if before.lstrip().startswith("export"):
            export = split_words(before) or []
            env.update({m[1]: m[2] for t in export[1:] if (m := _ASSIGN.match(t))})
    env.update({m[1]: m[2] for t in prefix if (m := _ASSIGN.match(t))})
    return Call(options, flags, element, lines[index][0], env)


def find_call(argv: list[Any]) -> Call | None:
    """The torchrun call in a container's command + args (directly or via `sh -c`)."""
    words = [w if isinstance(w, str) else str(w) for w in argv]
    if not words:
        return None
    if words[0].rsplit("/", 1)[-1] in SHELLS:
        for i, w in enumerate(words[1:], 1):
            if re.fullmatch(r"-[a-z]*c[a-z]*", w) and i + 1 < len(words):
                return _script_call(words[i + 1], i + 1)
        return None
    at = torchrun_at(words)
    if at is None:
        return None
    options, flags = parse_options(words[at:])
    return Call(options, flags, 0, None)


# ---- what a launch site gives the generic checks ---------------------------------------------


Report = Callable[[str, str, str], None]  # (rule, where, message); where: command|env|shm|gpu


@dataclass
class Site:
    """A torchrun launch in one workload (a StatefulSet's container, a Compose service)."""

    call: Call
    env: dict[str, str]  # literal values
    env_complete: bool  # False when envFrom / env_file / valueFrom may set a variable
    gpus: int
    shm: int | None  # bytes of /dev/shm; None when not mounted / not set
    shm_mounted: bool
    report: Report

    def opt(self, name: str) -> str:
        return self.call.option(name, {**self.env, **self.call.env})

    def env_value(self, name: str) -> str | None:
        merged = {**self.env, **self.call.env}
        return merged.get(name)


def parse_nnodes(value: str) -> tuple[int, int] | None:
    parts = value.split(":")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        return None
    low, high = int(parts[0]), int(parts[-1])
    return (low, high) if 0 < low <= high else None


def parse_endpoint(value: str) -> tuple[str, int]:
    """`host[:port]` like torch parses it (IPv6 in brackets); port defaults to c10d's 29400."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, int(port) if re.fullmatch(r"\d{1,5}", port) else C10D_PORT


def nnodes_of(site: Site) -> tuple[int, int] | None:
    value = site.opt("nnodes")
    parsed = parse_nnodes(value)
    if parsed is None:
        site.report("torchrun-nnodes", "command",
                    f"--nnodes {value!r} is not N or MIN:MAX with 0 < MIN <= MAX")
    return parsed


def nproc_of(site: Site) -> int | None:
    value = site.opt("nproc-per-node")
    if value.isdigit():
        return int(value)
    if value in ("gpu", "auto") and site.gpus:
        return site.gpus
    return None


def check_site(site: Site, nnodes: tuple[int, int] | None) -> None:
    """Checks that need only the launch site itself (targets add endpoint/replica checks)."""
    nproc = nproc_of(site)
    check_gpus(site, nproc)
    check_shm(site, nproc)
    check_rdzv_conf(site)
    if nnodes is not None and nnodes[0] < nnodes[1]:
        check_elastic(site, nnodes)


def check_gpus(site: Site, nproc: int | None) -> None:
    if site.gpus > 0 and nproc is not None and nproc > site.gpus:
        site.report("torchrun-gpus", "gpu", f"--nproc-per-node {nproc} but the node gets "
                    f"{site.gpus} GPU{'s' if site.gpus > 1 else ''}: processes would share GPUs")


SHM_MIN = 2**30
SHARE_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def check_shm(site: Site, nproc: int | None) -> None:
    if not site.shm_mounted:
        site.report("torchrun-shm", "shm", "/dev/shm is not an in-memory volume: the runtime "
                    "default is 64 MB and DataLoader workers / NCCL fail with bus errors")
    elif (nproc or 1) > 1 and site.shm is not None and site.shm < SHM_MIN:
        site.report("torchrun-shm", "shm", f"/dev/shm is {human_bytes(site.shm)} for {nproc} processes "
                    "per node; use at least 1Gi")


def check_elastic(site: Site, nnodes: tuple[int, int]) -> None:
    low, high = nnodes
    value = site.env_value(SHARE_STORE_ENV)
    if value != "1" and (value is not None or site.env_complete):
        got = "is not set" if value is None else f"is {value!r}"
        site.report("torchrun-elastic-env", "env", f"elastic job ({low}:{high}) but "
                    f"TORCH_DISABLE_SHARE_RDZV_TCP_STORE {got}: re-joining nodes reuse a stale "
                    "store address")
    restarts = site.opt("max-restarts")
    if not restarts.isdigit() or int(restarts) < 1:
        site.report("torchrun-max-restarts", "command", f"elastic job ({low}:{high}) with "
                    f"--max-restarts {restarts}: the first node joining or leaving ends the job")


def check_rdzv_conf(site: Site) -> None:
    raw = site.opt("rdzv-conf").strip()
    if not raw:
        return
    for kv in raw.split(","):
        key, eq, value = (s.strip() for s in kv.partition("="))
        if not key or not eq or not value:
            site.report("torchrun-rdzv-conf", "command",
                        f"--rdzv-conf item {kv.strip()!r} is not key=value")
        elif key not in RDZV_KEYS:
            close = difflib.get_close_matches(key, RDZV_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            site.report("torchrun-rdzv-conf", "command", f"--rdzv-conf key {key!r} is not read "
                        f"by torch{hint}; known: {', '.join(RDZV_KEYS)}")
        elif problem := _conf_value_problem(key, value):
            site.report("torchrun-rdzv-conf", "command", f"--rdzv-conf {key}={value}: {problem}")


def _conf_value_problem(key: str, value: str) -> str:
    if key in TIMEOUT_KEYS:
        return "" if value.isdigit() and int(value) > 0 else "expected seconds > 0"
    if key in INT_KEYS:
        return "" if value.isdigit() else "expected an integer >= 0"
    if key in BOOL_KEYS:
        return "" if value.lower() in BOOL_WORDS else "expected true or false"
    if key == "store_type":
        return "" if value.strip().lower() in ("tcp", "file") else "expected tcp or file"
    return ""
