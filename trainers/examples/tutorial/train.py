"""A trainer written the way PyTorch's fault-tolerant torchrun tutorial teaches, knowing nothing
of kdist: global rank 0 saves `snapshot.pt` into the working directory every few epochs, every
rank loads it at start when it exists, rank 0 saves `model_final.pth` at the end; no `@record`,
no KDIST_* variables, a sibling module import. kdist's tests run it unchanged on every target.

    torchrun --nnodes 2 --nproc-per-node 1 ... train.py 20 2 [--epoch-sleep S] [--raise-at E]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from datautils import MyTrainDataset
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler


class Trainer:
    def __init__(self, model: torch.nn.Module, train_data: DataLoader[tuple[torch.Tensor, torch.Tensor]],
                 optimizer: torch.optim.Optimizer, save_every: int, snapshot_path: str) -> None:
        self.global_rank = int(os.environ["RANK"])
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.epochs_run = 0
        self.snapshot_path = snapshot_path
        if os.path.exists(snapshot_path):
            print(f"[RANK{self.global_rank}] Loading snapshot", flush=True)
            self._load_snapshot(snapshot_path)
        self.model = DDP(self.model)

    def _load_snapshot(self, snapshot_path: str) -> None:
        snapshot = torch.load(snapshot_path, map_location="cpu")
        self.model.load_state_dict(snapshot["MODEL_STATE"])
        self.epochs_run = snapshot["EPOCHS_RUN"]
        print(f"[RANK{self.global_rank}] Resuming training from snapshot at Epoch {self.epochs_run}",
              flush=True)

    def _run_batch(self, source: torch.Tensor, targets: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss = F.mse_loss(self.model(source), targets)
        loss.backward()
        self.optimizer.step()

    def _run_epoch(self, epoch: int, epoch_sleep: float) -> None:
        sampler = self.train_data.sampler
        assert isinstance(sampler, DistributedSampler)
        sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self._run_batch(source, targets)
        time.sleep(epoch_sleep)
        print(f"[RANK{self.global_rank}] Epoch {epoch} | Steps: {len(self.train_data)}", flush=True)

    def _save_snapshot(self, epoch: int) -> None:
        snapshot = {"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}
        tmp = self.snapshot_path + ".tmp"
        torch.save(snapshot, tmp)
        os.replace(tmp, self.snapshot_path)
        print(f"Epoch {epoch} | Training snapshot saved at {self.snapshot_path}", flush=True)

    def train(self, max_epochs: int, epoch_sleep: float, raise_at: int) -> None:
        for epoch in range(self.epochs_run, max_epochs):
            if epoch == raise_at and self.global_rank == 0:
                raise RuntimeError(f"tutorial trainer: deliberate failure at epoch {epoch}")
            self._run_epoch(epoch, epoch_sleep)
            if self.global_rank == 0 and (epoch + 1) % self.save_every == 0:
                self._save_snapshot(epoch + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description="tutorial-style elastic training job")
    parser.add_argument("total_epochs", type=int)
    parser.add_argument("save_every", type=int)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epoch-sleep", type=float, default=0.0, help="seconds to idle per epoch")
    parser.add_argument("--raise-at", type=int, default=-1, help="rank 0 raises at this epoch")
    args = parser.parse_args()
    init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(1)
    dataset = MyTrainDataset(256)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                        sampler=DistributedSampler(dataset))
    model = torch.nn.Linear(20, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = Trainer(model, loader, optimizer, args.save_every, "snapshot.pt")
    trainer.train(args.total_epochs, args.epoch_sleep, args.raise_at)
    if trainer.global_rank == 0:
        torch.save(trainer.model.module.state_dict(), "model_final.pth")
        print("Saved model_final.pth", flush=True)
    destroy_process_group()


if __name__ == "__main__":
    main()
