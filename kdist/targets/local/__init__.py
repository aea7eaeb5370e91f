"""`local`: the nodes as processes on this machine (`kdist run`, kdist/targets/local/job.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdist.targets import Target

if TYPE_CHECKING:
    from kdist.plan import LaunchPlan

LOCAL_HOST = "127.0.0.1"  # the store listens here; with `network:` on the host's veth


def store_host(plan: LaunchPlan) -> str:
    return LOCAL_HOST


TARGET = Target(name="local", store_host=store_host, simulates_network=True,
                preflight=("torch", "port", "listening", "shm", "interface", "gpus-here"))
