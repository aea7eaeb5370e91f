"""A trainer written for `torchrun train.py` in its own project folder, knowing nothing of kdist:
it reads config.json and data/train.pt by relative paths, writes out/ckpt.pt the same way, and
resumes from it (after a lost node, or in a second run). Make the data with `python
make_data.py`. Every rank prints `resumed from out/ckpt.pt at epoch N` or `starting at epoch 0`.
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

CKPT = "out/ckpt.pt"


def main() -> None:
    with open("config.json") as f:
        config = json.load(f)
    x, y = torch.load("data/train.pt")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(torch.nn.Linear(x.shape[1], 1))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    start = 0
    if os.path.exists(CKPT):
        state = torch.load(CKPT)
        model.module.load_state_dict(state["model"])
        start = state["epoch"]
        print(f"[rank {rank}] resumed from {CKPT} at epoch {start}", flush=True)
    else:
        print(f"[rank {rank}] starting at epoch 0", flush=True)
    for epoch in range(start, config["epochs"]):
        for i in range(rank, len(x) - len(x) % world, world):  # the same step count on every rank
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i:i + 1]), y[i:i + 1])
            loss.backward()
            opt.step()
        time.sleep(config.get("epoch_sleep", 0))
        if rank == 0:
            os.makedirs("out", exist_ok=True)
            torch.save({"epoch": epoch + 1, "model": model.module.state_dict()}, CKPT + ".tmp")
            os.replace(CKPT + ".tmp", CKPT)
        print(f"[rank {rank}] epoch {epoch + 1} loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
