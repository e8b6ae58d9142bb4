"""torch.distributed glue for `torchrun` (DistributedDataParallel); a no-op for plain `python`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when they are absent the
run is single-process and nothing here touches torch.distributed. Backend: NCCL on CUDA, gloo
on CPU. Global batch = WORLD_SIZE x batch_size (batch_size is per process).

Failure handling: a rank that raises exits non-zero; torchrun then tears the whole group down
(its default), and the collective timeout below bounds how long the survivors can block.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn as nn

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("DIST_TIMEOUT_S", "300")))


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup(device_name: str) -> tuple[DistContext, str]:
    """Initialise the process group when launched by torchrun; returns (context, device to use)."""
    if not launched_by_torchrun():
        return SINGLE, device_name
    ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
        device_name = f"cuda:{ctx.local_rank}"
    else:
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return ctx, device_name


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (loss sums, counts, flags); identity when single-process."""
    if not ctx.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_sum_tensor(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum of a tensor over ranks (per-class sums); identity when single-process."""
    if ctx.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def shard(n: int, ctx: DistContext) -> slice:
    """Contiguous shard of n items for this rank; shards are equal but the last may be short."""
    per = -(-n // ctx.world)
    return slice(min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per))


def gather_rows(local: torch.Tensor, n: int, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's `shard` rows back into the full [n, ...] tensor, in order."""
    if not ctx.enabled:
        return local
    per = -(-n // ctx.world)
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    out = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(out, padded)
    return torch.cat(out)[:n]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch over all ranks, on any device.

    torch's SyncBatchNorm runs on CUDA only; this one reduces (sum, sum of squares, count) with the
    autograd-aware all_reduce, so gloo on CPU gets the same normalisation (and gradients) as one
    process seeing the whole batch. Eval mode uses the running statistics like plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D-5D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=xf.dtype, device=xf.device)
        stats = dist_fn.all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
            self.num_batches_tracked += 1
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> torch's SyncBatchNorm on CUDA, `GlobalBatchNorm` elsewhere (gloo on CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module
