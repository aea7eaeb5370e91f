"""One parser for Kubernetes and Docker sizes, used by render, diff, doctor and validate."""

from __future__ import annotations

import pytest

from kdist.spec.quantity import cpu_cores, docker_bytes, human_bytes, k8s_bytes, memory_bytes


@pytest.mark.parametrize(("value", "expected"), [
    ("1Gi", 2**30), ("512Mi", 512 * 2**20), ("3G", 3 * 10**9), ("1e9", 10**9), (1024, 1024),
    ("1.5Gi", 3 * 2**29), ("4 GB", None), ("lots", None), (True, None)])
def test_k8s_bytes(value: object, expected: int | None) -> None:
    assert k8s_bytes(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("1g", 2**30), ("512m", 512 * 2**20), ("64mb", 64 * 2**20), (2048, 2048), ("1x", None),
    (False, None)])
def test_docker_bytes(value: object, expected: int | None) -> None:
    assert docker_bytes(value) == expected


def test_memory_bytes_and_cpu_cores_reject_what_they_cannot_read() -> None:
    assert memory_bytes("2Gi") == 2**31 and cpu_cores("500m") == 0.5 and cpu_cores("2") == 2.0
    with pytest.raises(ValueError):
        memory_bytes("two")
    with pytest.raises(ValueError):
        cpu_cores("two")


def test_human_bytes_is_exact() -> None:
    assert [human_bytes(n) for n in (1536 * 2**20, 3 * 10**9, 10**6 + 1)] == [
        "1536Mi", "3G", "1000001 bytes"]
