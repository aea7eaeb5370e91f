"""Tiny kdist smoke trainer: one all_reduce, checked against WORLD_SIZE."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record


def emit_metric(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("KDIST_METRIC " + line + "\n")
    sys.stdout.flush()


@record
def main() -> int:
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        dist.init_process_group(backend="gloo")
    try:
        world_size = dist.get_world_size()
        expected = int(os.environ.get("WORLD_SIZE", str(world_size)))
        value = torch.ones(1, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        got = float(value.item())
        if got != expected or world_size != expected:
            raise RuntimeError(
                f"smoke all_reduce mismatch: got {got}, expected WORLD_SIZE={expected}"
            )
        if dist.get_rank() == 0:
            emit_metric("smoke", world_size=world_size)
            emit_metric("done", step=0, world_size=world_size)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
