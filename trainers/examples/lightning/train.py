"""A PyTorch Lightning trainer, started the way Lightning's docs say for torchrun
(`torchrun --nnodes N --nproc-per-node 1 train.py` in this folder), knowing nothing of kdist.

A tiny regression model on synthetic data; config.json by a relative path; Lightning writes its
checkpoints to out/checkpoints (default_root_dir "out") and `fit(ckpt_path=...)` resumes from
out/checkpoints/last.ckpt after a lost node or in a second run. Lightning checks that
num_nodes x devices equals torchrun's WORLD_SIZE, so an elastic job (nodes MIN:MAX) passes
num_nodes from WORLD_SIZE: the world can change between restarts. Every rank prints
`resumed from out/checkpoints/last.ckpt at epoch N` or `starting at epoch 0`.
"""

from __future__ import annotations

import json
import os
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

LAST = "out/checkpoints/last.ckpt"


class Regression(pl.LightningModule):
    def __init__(self, lr: float, epoch_sleep: float, fail_at_epoch: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_train_start(self) -> None:
        where = f"resumed from {LAST} at epoch {self.current_epoch}" if self.current_epoch \
            else "starting at epoch 0"
        print(f"[rank {self.global_rank}] {where}", flush=True)

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == self.hparams["fail_at_epoch"]:
            raise RuntimeError(f"injected failure at epoch {self.current_epoch}")
        time.sleep(self.hparams["epoch_sleep"])
        print(f"[rank {self.global_rank}] epoch {self.current_epoch + 1} done", flush=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def main() -> None:
    with open("config.json") as f:
        config = json.load(f)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
    model = Regression(config["lr"], config.get("epoch_sleep", 0), config.get("fail_at_epoch", -1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, num_nodes=int(os.environ.get("WORLD_SIZE", "1")),
        strategy="ddp", max_epochs=config["epochs"], default_root_dir="out", logger=False,
        callbacks=[ModelCheckpoint(dirpath="out/checkpoints", save_last=True)],
        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader, ckpt_path=LAST if os.path.exists(LAST) else None)


if __name__ == "__main__":
    main()
