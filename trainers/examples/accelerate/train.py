"""A Hugging Face Accelerate trainer in the style of Accelerate's examples, started the way its
docs say for torchrun (`torchrun --nnodes N --nproc-per-node 1 train.py` in this folder),
knowing nothing of kdist.

A tiny regression model on synthetic data; config.json by a relative path; after every epoch
`accelerator.save_state("out/epoch_N")`, and at start the newest out/epoch_N is loaded with
`accelerator.load_state` (after a lost node or in a second run). Every rank prints
`resumed from out/epoch_N at epoch N` or `starting at epoch 0`.
"""

from __future__ import annotations

import json
import os
import re
import time

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

OUT = "out"


def newest_epoch() -> int:
    """The newest epoch whose state was saved whole (its model file written last)."""
    done = [int(m.group(1)) for name in (os.listdir(OUT) if os.path.isdir(OUT) else [])
            if (m := re.fullmatch(r"epoch_(\d+)", name))
            and os.path.exists(os.path.join(OUT, name, "model.safetensors"))]
    return max(done, default=0)


def main() -> None:
    with open("config.json") as f:
        config = json.load(f)
    accelerator = Accelerator(cpu=True)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, shuffle=True)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    model, opt, loader = accelerator.prepare(model, opt, loader)
    rank, start = accelerator.process_index, newest_epoch()
    if start:
        accelerator.load_state(os.path.join(OUT, f"epoch_{start}"))
        print(f"[rank {rank}] resumed from {OUT}/epoch_{start} at epoch {start}", flush=True)
    else:
        print(f"[rank {rank}] starting at epoch 0", flush=True)
    for epoch in range(start, config["epochs"]):
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            opt.step()
        if epoch == config.get("fail_at_epoch", -1):
            raise RuntimeError(f"injected failure at epoch {epoch}")
        time.sleep(config.get("epoch_sleep", 0))
        accelerator.save_state(os.path.join(OUT, f"epoch_{epoch + 1}"))
        print(f"[rank {rank}] epoch {epoch + 1} loss {loss.item():.4f}", flush=True)
    accelerator.end_training()


if __name__ == "__main__":
    main()
