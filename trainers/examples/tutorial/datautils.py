"""The tutorial's dataset module, imported by train.py as a sibling (`from datautils import ...`)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class MyTrainDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random regression pairs, the same on every rank (fixed seed)."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = [(torch.rand(20, generator=generator), torch.rand(1, generator=generator))
                     for _ in range(size)]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index]
