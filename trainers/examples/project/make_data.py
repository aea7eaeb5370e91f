"""data/train.pt for train.py: 64 samples of a noisy linear function (no download)."""

import os

import torch

torch.manual_seed(0)
x = torch.randn(64, 8)
y = x @ torch.arange(8.0).unsqueeze(1) + 0.01 * torch.randn(64, 1)
os.makedirs("data", exist_ok=True)
torch.save((x, y), "data/train.pt")
