"""Data-parallel training across processes (``torchrun``): what the one loop needs to know about it.

A :class:`Distributed` context handed to :class:`~core.train.loop.Trainer` makes the loop run as
one rank of a DistributedDataParallel job. Every rank draws the same shuffled order of the
training set and takes its share of each global batch (positions ``rank::world``, as
``DistributedSampler`` would), so the global batch is ``config.batch_size`` and each rank computes
``batch_size // world`` of it; gradients are averaged by ``torch.nn.parallel.DistributedDataParallel``
and each rank's loss is weighted by its share, so a step equals one step of a single process on the
whole global batch (exact data parallelism). BatchNorm layers all use their running statistics
(SyncBatchNorm is CUDA-only), the per-step loss and the epoch's sums are summed across ranks, so
every rank sees the same figures and takes the same decisions (divergence, early stopping).
Feature caches are computed in shares, one per rank, and gathered.

Without a context the loop behaves exactly as before: nothing here runs.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError

__all__ = ["Distributed", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True inside a process that ``torchrun`` started (it sets these variables for every rank)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


class _Dispatch(nn.Module):
    """Lets DistributedDataParallel run any of the model's entry points (forward, forward_head,
    forward_features): its gradient hooks only work through the wrapper's own forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, x):
        return self.model(x) if method == "forward" else getattr(self.model, method)(x)  # __call__ runs hooks


@dataclass
class Distributed:
    """One rank's view of a data-parallel job whose process group is already initialised."""

    rank: int
    world_size: int
    local_rank: int = 0

    @classmethod
    def from_env(cls, device_type: str = "cpu", timeout_s: float = 600) -> Distributed:
        """Join the job ``torchrun`` started (gloo on CPU, NCCL on CUDA); its variables say where."""
        from datetime import timedelta

        if device_type not in ("cpu", "cuda"):
            raise ConfigError('Distributed training runs on CPUs or NVIDIA GPUs: set "device" to "cpu" or "cuda".')
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)  # "cuda" now means this rank's own GPU
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check(self, batch_size: int) -> None:
        if batch_size < self.world_size:
            raise ConfigError(f"The batch size ({batch_size}) is the global batch, split across the "
                              f"{self.world_size} processes: make it at least {self.world_size}.")

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch of indices."""
        return idx[self.rank::self.world_size]

    def _device(self, tensor: torch.Tensor) -> torch.device:
        return tensor.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def sync_step(self, loss: torch.Tensor, n: int, cancelled: bool) -> tuple[torch.Tensor, float, bool]:
        """(loss to back-propagate, the global batch's mean loss, whether any rank was cancelled).

        DDP averages gradients over ranks; weighting each rank's mean loss by ``n * world / N``
        makes that average the gradient of the global batch's mean even when shares differ."""
        local = torch.stack([loss.detach().float() * n, torch.tensor(float(n), device=loss.device),
                             torch.tensor(float(cancelled), device=loss.device)])
        summed = local.to(self._device(local))
        dist.all_reduce(summed)
        total_loss, total_n, stops = summed.tolist()
        scaled = loss * (n * self.world_size / max(total_n, 1.0))
        return scaled, total_loss / max(total_n, 1.0), stops > 0

    def reduce_sums(self, sums: dict) -> dict:
        """The epoch's sums (loss × n, correct, n, ...) added over every rank."""
        keys = sorted(sums)
        values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return {k: v for k, v in zip(keys, values.tolist(), strict=True)}

    def rows(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share of ``n`` rows (for computing a cache in parts)."""
        per = -(-n // self.world_size)
        return min(n, self.rank * per), min(n, (self.rank + 1) * per)

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's share (from :meth:`rows`) put back together, in order, on every rank."""
        per = -(-n // self.world_size)
        device = self._device(part)
        padded = torch.zeros((per, *part.shape[1:]), dtype=part.dtype, device=device)
        padded[:len(part)] = part.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat(parts)[:n].to(part.device)

    def seed(self, batch_seed: int) -> int:
        """Augmentation seed of this rank's share: ranks crop their images independently."""
        return hash((batch_seed, self.rank)) & 0x7FFFFFFF

    @staticmethod
    def freeze_batchnorm(model: nn.Module) -> None:
        """Every BatchNorm uses (and keeps) its running statistics: per-rank batch statistics would
        differ from the global batch's, and SyncBatchNorm is CUDA-only."""
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

    def wrap(self, model: nn.Module, current=None):
        """A DDP wrapper over the parameters that train now (rebuilt when that set changes, as with
        progressive unfreezing: DDP only averages what required a gradient when it was built)."""
        trainable = tuple(id(p) for p in model.parameters() if p.requires_grad)
        if current is not None and current[0] == trainable:
            return current
        del current
        device = next(model.parameters()).device
        DDP = nn.parallel.DistributedDataParallel
        # BatchNorm statistics never move (see freeze_batchnorm): no need to send buffers every step
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                 else {"broadcast_buffers": False})
        ddp = DDP(_Dispatch(model), device_ids=[device.index or 0] if device.type == "cuda" else None, **quiet)
        return trainable, ddp

    def barrier(self) -> None:
        dist.barrier()
