"""Elastic, resumable DDP trainer for kdist.

Launched by ``torchrun`` (possibly with ``--nnodes MIN:MAX``).  When a node
dies, torchrun restarts every worker in a new rendezvous round, possibly with
a different world size; the trainer then resumes exactly from the last
checkpoint written by global rank 0.

Resume across world sizes works because the sample order of an epoch is a
single global permutation (seeded by ``(seed, epoch)``) and the checkpoint
records how many *global* samples of the current epoch have been consumed.
Each rank takes its strided share of the remaining global indices, and each
global step consumes exactly ``world_size * batch_size`` samples.

Metrics are printed by global rank 0 to stdout as ``KDIST_METRIC <json>``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset

LOG = logging.getLogger("kdist.train")
METRIC_PREFIX = "KDIST_METRIC "
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
SYNTHETIC_SAMPLES = 2048
SYNTHETIC_DATA_SEED = 20240611
NUM_CLASSES = 10
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class UsageError(Exception):
    """A user-facing error reported as one line with exit code 2."""


@dataclass(frozen=True)
class Config:
    synthetic: bool
    data_dir: str
    max_steps: int
    epochs: int
    batch_size: int
    lr: float
    seed: int
    checkpoint_dir: Path
    checkpoint_every: int
    step_sleep: float
    fail_at_step: int
    dump_params: str | None
    hog_at_step: int = -1


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    consumed: int = 0  # global samples consumed in the current epoch
    saved_step: int = -1  # step of the last checkpoint written/loaded


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description="kdist elastic DDP trainer")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="use a deterministic synthetic CIFAR-shaped dataset",
    )
    p.add_argument(
        "--data",
        default=os.environ.get("KDIST_DATA_DIR", "./data"),
        help="CIFAR-10 directory (default: $KDIST_DATA_DIR or ./data)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="global optimizer steps; 0 = unlimited. When > 0 it takes "
        "precedence over --epochs (training runs as many epochs as needed)",
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="epochs to train when --max-steps is 0 (default 1)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="per-worker batch size")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("KDIST_CHECKPOINT_DIR", "./checkpoints"),
        help="default: $KDIST_CHECKPOINT_DIR or ./checkpoints",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=20,
        help="write a checkpoint every N global steps (0 = only at the end)",
    )
    p.add_argument(
        "--step-sleep",
        type=float,
        default=0.0,
        help="seconds to sleep after each step (for fault-injection tests)",
    )
    p.add_argument(
        "--fail-at-step",
        type=int,
        default=-1,
        help="global rank 0 raises RuntimeError when it reaches step N "
        "(before running it); -1 disables",
    )
    p.add_argument(
        "--hog-at-step",
        type=int,
        default=-1,
        help="the last global rank allocates memory until the kernel kills it when it reaches "
        "step N, in torchrun's first attempt only (for out-of-memory tests); -1 disables",
    )
    p.add_argument(
        "--dump-params",
        default=None,
        metavar="PATH",
        help="at the end every rank writes PATH.rank<R>.json with a sha256 of its parameters",
    )
    a = p.parse_args(argv)
    if a.batch_size < 1 or a.max_steps < 0 or a.epochs < 0 or a.checkpoint_every < 0:
        p.error(
            "--batch-size must be >= 1; --max-steps, --epochs and --checkpoint-every must be >= 0"
        )
    return Config(
        synthetic=a.synthetic,
        data_dir=a.data,
        max_steps=a.max_steps,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        checkpoint_dir=Path(a.checkpoint_dir),
        checkpoint_every=a.checkpoint_every,
        step_sleep=a.step_sleep,
        fail_at_step=a.fail_at_step,
        hog_at_step=a.hog_at_step,
        dump_params=a.dump_params,
    )


def emit_metric(info: DistInfo, event: str, **fields: Any) -> None:
    """Print one metric line on global rank 0 (no-op elsewhere)."""
    if info.rank != 0:
        return
    payload = {"event": event, **fields}
    line = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    sys.stdout.write(METRIC_PREFIX + line + "\n")
    sys.stdout.flush()


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[kdist rank{rank}] %(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def setup_distributed() -> DistInfo:
    if torch.cuda.is_available():
        backend = "nccl"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        backend = "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cpu")
        torch.set_num_threads(1)
    if backend == "nccl":
        dist.init_process_group(backend=backend, device_id=device)
    else:
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def make_synthetic_dataset() -> TensorDataset:
    """Deterministic CIFAR-shaped data: noisy class prototypes (learnable)."""
    gen = torch.Generator().manual_seed(SYNTHETIC_DATA_SEED)
    prototypes = torch.randn(NUM_CLASSES, 3, 32, 32, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (SYNTHETIC_SAMPLES,), generator=gen)
    noise = torch.randn(SYNTHETIC_SAMPLES, 3, 32, 32, generator=gen)
    images = 0.5 * prototypes[labels] + noise
    return TensorDataset(images, labels)


def load_cifar10(data_dir: str, info: DistInfo) -> TensorDataset:
    """CIFAR-10 train split as normalized tensors (local rank 0 downloads)."""
    try:
        datasets = importlib.import_module("torchvision.datasets")
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise UsageError(
            "torchvision is not installed: pass --synthetic or install torchvision"
        ) from exc
    if info.local_rank == 0:
        datasets.CIFAR10(data_dir, train=True, download=True)
    dist.barrier()
    ds = datasets.CIFAR10(data_dir, train=True, download=False)
    images = torch.as_tensor(ds.data, dtype=torch.uint8)  # N,32,32,3
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    y = torch.tensor(list(ds.targets), dtype=torch.long)
    return TensorDataset(x, y)


class ResumableSampler(Sampler[int]):
    """Strided share of a global per-epoch permutation, resumable mid-epoch.

    The permutation depends only on ``(seed, epoch)``; ``set_start(consumed)``
    skips the first ``consumed`` global samples.  Only whole global batches
    (``num_replicas * batch_size`` samples) are produced, so every global step
    consumes exactly that many samples.
    """

    def __init__(
        self, dataset_len: int, num_replicas: int, rank: int, batch_size: int, seed: int
    ) -> None:
        self.dataset_len = dataset_len
        self.num_replicas = num_replicas
        self.rank = rank
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, consumed_global_samples: int) -> None:
        self.start = consumed_global_samples

    @property
    def global_batch(self) -> int:
        return self.num_replicas * self.batch_size

    def num_steps(self) -> int:
        """Global steps left in this epoch from the current start position."""
        return max(self.dataset_len - self.start, 0) // self.global_batch

    def __len__(self) -> int:
        return self.num_steps() * self.batch_size

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.dataset_len, generator=gen)
        end = self.start + self.num_steps() * self.global_batch
        remaining = perm[self.start : end]
        return iter(remaining[self.rank :: self.num_replicas].tolist())


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        logits: torch.Tensor = self.fc(torch.flatten(x, 1))
        return logits


def save_checkpoint(
    cfg: Config, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState, info: DistInfo
) -> None:
    """Atomically write checkpoint.pt (global rank 0 only)."""
    if info.rank != 0:
        return
    cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "consumed_samples": state.consumed,
        "seed": cfg.seed,
        "world_size": info.world_size,
    }
    final = cfg.checkpoint_dir / CHECKPOINT_NAME
    tmp = cfg.checkpoint_dir / f".{CHECKPOINT_NAME}.tmp.{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    state.saved_step = state.step
    emit_metric(info, "checkpoint", step=state.step)


def broadcast_bytes(data: bytes | None, info: DistInfo) -> bytes:
    """Broadcast a byte string from rank 0 (numpy-free broadcast_object_list)."""
    size = torch.tensor(
        [len(data) if data is not None else 0], dtype=torch.long, device=info.device
    )
    dist.broadcast(size, src=0)
    n = int(size.item())
    if n == 0:
        return b""
    if info.rank == 0 and data is not None:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(info.device)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=info.device)
    dist.broadcast(buf, src=0)
    return data if info.rank == 0 and data is not None else bytes(buf.cpu().tolist())


def load_checkpoint(cfg: Config, info: DistInfo) -> dict[str, Any] | None:
    """Rank 0 reads checkpoint.pt (if any) and broadcasts it to all ranks.

    Broadcasting means only rank 0 needs to see the checkpoint directory.
    """
    raw: bytes | None = None
    path = cfg.checkpoint_dir / CHECKPOINT_NAME
    if info.rank == 0 and path.exists():
        raw = path.read_bytes()
    raw = broadcast_bytes(raw, info)
    if not raw:
        return None
    ckpt: dict[str, Any] = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if info.rank == 0:
        LOG.info("loaded checkpoint %s (step %d)", path, ckpt["step"])
    return ckpt


def params_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for param in model.parameters():
        flat = param.detach().to("cpu", torch.float32).contiguous().view(-1)
        digest.update(bytes(flat.view(torch.uint8).tolist()))
    return digest.hexdigest()


def dump_params(path: str, model: nn.Module, info: DistInfo, step: int) -> None:
    out = Path(f"{path}.rank{info.rank}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record_ = {
        "rank": info.rank,
        "world_size": info.world_size,
        "step": step,
        "param_sha256": params_sha256(model),
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record_, sort_keys=True) + "\n")
    os.replace(tmp, out)


def train_step(
    ddp: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, info: DistInfo
) -> float:
    """One optimizer step; returns the loss averaged over all ranks."""
    x = x.to(info.device, non_blocking=True)
    y = y.to(info.device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ddp(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    avg = loss.detach().clone()
    dist.all_reduce(avg, op=dist.ReduceOp.SUM)
    return float(avg.item()) / info.world_size


def finished(cfg: Config, state: TrainState) -> bool:
    if cfg.max_steps > 0:
        return state.step >= cfg.max_steps
    return state.epoch >= cfg.epochs


def hog_memory() -> None:
    """Touch 64 MiB blocks until the out-of-memory killer ends this process (first attempt only)."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    LOG.info("allocating memory until the kernel stops this process")
    blocks = []
    while True:
        blocks.append(bytearray(b"\x01") * (64 << 20))


def run_epoch(
    cfg: Config,
    model: nn.Module,
    ddp: nn.Module,
    opt: torch.optim.Optimizer,
    loader: DataLoader[Any],
    state: TrainState,
    info: DistInfo,
) -> None:
    """Train over the remaining part of the current epoch (or until max-steps)."""
    global_batch = info.world_size * cfg.batch_size
    t_prev = time.perf_counter()
    for x, y in loader:
        next_step = state.step + 1
        fail_at = cfg.fail_at_step
        if info.rank == 0 and fail_at >= 0 and next_step == max(fail_at, 1):
            raise RuntimeError(f"injected failure at step {cfg.fail_at_step}")
        if next_step == cfg.hog_at_step and info.rank == info.world_size - 1:
            hog_memory()
        loss = train_step(ddp, opt, x, y, info)
        state.step = next_step
        state.consumed += global_batch
        elapsed = max(time.perf_counter() - t_prev, 1e-9)
        emit_metric(
            info,
            "step",
            step=state.step,
            epoch=state.epoch,
            loss=round(loss, 6),
            samples_per_s=round(global_batch / elapsed, 1),
            world_size=info.world_size,
            time=time.time(),
        )
        if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0:
            save_checkpoint(cfg, model, opt, state, info)
        if cfg.step_sleep > 0:
            time.sleep(cfg.step_sleep)
        t_prev = time.perf_counter()
        if finished(cfg, state):
            return


def train(cfg: Config, info: DistInfo, dataset: TensorDataset) -> TrainState:
    torch.manual_seed(cfg.seed)
    model = SmallCNN().to(info.device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    state = TrainState()
    ckpt = load_checkpoint(cfg, info)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(
            int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["consumed_samples"]), int(ckpt["step"])
        )
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    emit_metric(info, "start", world_size=info.world_size, restart=restart, resumed_step=state.step,
                backend=dist.get_backend())
    LOG.info(
        "world_size=%d restart=%d epoch=%d step=%d consumed=%d",
        info.world_size,
        restart,
        state.epoch,
        state.step,
        state.consumed,
    )
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)
    sampler = ResumableSampler(len(dataset), info.world_size, info.rank, cfg.batch_size, cfg.seed)
    if len(dataset) < sampler.global_batch:
        raise UsageError(
            f"dataset has {len(dataset)} samples, fewer than one global "
            f"batch ({sampler.global_batch}); lower --batch-size"
        )
    loader: DataLoader[Any] = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True
    )
    while not finished(cfg, state):
        sampler.set_epoch(state.epoch)
        sampler.set_start(state.consumed)
        run_epoch(cfg, model, ddp, opt, loader, state, info)
        if len(dataset) - state.consumed < sampler.global_batch:  # epoch done
            state.epoch += 1
            state.consumed = 0
    if state.saved_step != state.step:
        save_checkpoint(cfg, model, opt, state, info)
    if cfg.dump_params:
        dump_params(cfg.dump_params, model, info, state.step)
    return state


@record
def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    if not cfg.synthetic:  # fail fast (before rendezvous) without torchvision
        try:
            importlib.import_module("torchvision")
        except ImportError:
            print(
                "error: torchvision is not installed: pass --synthetic or install torchvision",
                file=sys.stderr,
            )
            return 2
    info = setup_distributed()
    setup_logging(info.rank)
    try:
        dataset = make_synthetic_dataset() if cfg.synthetic else load_cifar10(cfg.data_dir, info)
        state = train(cfg, info, dataset)
        emit_metric(info, "done", step=state.step, world_size=info.world_size)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
