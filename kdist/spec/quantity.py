"""Sizes and cpu amounts as Kubernetes and Docker write them: one parser for every module."""

from __future__ import annotations

import re
from typing import Any

K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "E": 10**18, "m": 10**-3}
DOCKER_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30,
                "gb": 2**30}  # Docker's units are binary
_K8S_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]{0,2})\s*")
_DOCKER_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]{0,2})\s*")


def k8s_bytes(value: Any) -> int | None:
    """Kubernetes quantity (`8Gi`, `512M`, `1e9`, 1073741824) -> bytes; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = _K8S_RE.fullmatch(str(value))
    if not m or (m[2] and m[2] not in K8S_UNITS):
        return None
    return int(float(m[1]) * K8S_UNITS.get(m[2], 1))


def memory_bytes(quantity: str) -> int:
    """Like k8s_bytes, for quantities already checked (the loader's): ValueError otherwise."""
    n = k8s_bytes(quantity)
    if n is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return n


def docker_bytes(value: Any) -> int | None:
    """Compose byte values (1073741824, "1g", "512m", "64mb") -> bytes; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = _DOCKER_RE.fullmatch(str(value))
    if not m or m[2].lower() not in DOCKER_UNITS:
        return None
    return int(float(m[1]) * DOCKER_UNITS[m[2].lower()])


def cpu_cores(quantity: str) -> float:
    """Kubernetes cpu quantity -> cores (`500m` -> 0.5); ValueError when malformed."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def human_bytes(n: int) -> str:
    """Exact and short: `1536Mi`, `3G`, or `1000001 bytes` (equal texts <=> equal byte counts)."""
    units = (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10),
             ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))
    for unit, factor in units:
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"
