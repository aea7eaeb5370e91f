"""Network conditions as Linux netem arguments (pure: no I/O).

Every simulated node's egress gets `tc qdisc replace dev IF root netem delay LATENCY JITTER
loss LOSS`, locally (kdist run, kdist/targets/local/netsim.py) and on Compose (a `node-N-netem`
helper service).
Both ends of a node-to-node connection delay what they send, so the added round trip between two
nodes is about 2 x latency; to the rendezvous store (which has no netem) it is about 1 x latency.
"""

from __future__ import annotations

import re

from kdist.spec.model import Network

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")  # no named groups: JSON Schema too
PERCENT_RE = re.compile(r"^(100(?:\.0+)?|\d{1,2}(?:\.\d+)?)%$")  # 0% to 100%
_MICROS = {"us": 1, "ms": 1_000, "s": 1_000_000}


def duration_us(text: str) -> float:
    """`20ms` -> 20000.0 (microseconds); ValueError for anything that is not a tc duration."""
    match = DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return float(match[1]) * _MICROS[match[2]]


def impaired(network: Network) -> bool:
    """True when the conditions change anything (`network: {}` only isolates the nodes)."""
    return bool(network.latency or network.jitter or network.loss)


def netem_args(network: Network) -> list[str]:
    """`netem delay 20ms 5ms loss 0.1%`, as tc arguments (only the parts the spec sets)."""
    args = ["netem"]
    if network.latency or network.jitter:
        args += ["delay", network.latency or "0ms", *([network.jitter] if network.jitter else [])]
    if network.loss:
        args += ["loss", network.loss]
    return args


def tc_argv(device: str, network: Network) -> list[str]:
    """The tc command line that applies the conditions to `device`'s egress."""
    return ["tc", "qdisc", "replace", "dev", device, "root", *netem_args(network)]
