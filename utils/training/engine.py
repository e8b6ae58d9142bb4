"""The training engine's steps, shared by both trainers: one epoch, validation, embedding.

`train_one_epoch` checks a stop flag after every step and, when it is raised, returns the position reached,
so utils/training/fit.py can save a mid-epoch checkpoint that resumes into the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models import input_channels
from utils.core.config import TrainParams
from utils.core.device import (
    amp_dtype,
    autocast,
    epoch_rng,
    uses_channels_last,
)
from utils.core.distributed import (
    SINGLE,
    DistContext,
    all_sum,
    all_sum_tensor,
    gather_rows,
    shard,
)
from utils.core.errors import NonFiniteLoss
from utils.core.progress import Progress, say
from utils.data.loading import augmentation_table, prepare_batch
from utils.scoring.metrics import class_centres
from utils.training.outlier_loss import training_loss

StepHook = Callable[[int, int, float], None]
PROGRESS_SECONDS = 60.0  # with the bar off, one progress line about this often within an epoch


# ----------------------------------------------------------------------------- train / eval
def model_input(x: torch.Tensor, params: TrainParams, device: torch.device,
                aug: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images -> the network's input for `params` (channels, size, layout, normalisation)."""
    return prepare_batch(x, params.img_size, input_channels(params.pretrained), device, aug=aug,
                         channels_last=uses_channels_last(params.channels_last, device, params.amp),
                         mean=params.input_mean, std=params.input_std,
                         strength=(params.aug_degrees, params.aug_shift, params.aug_scale))


class TrainNet(nn.Module):
    """Embedder + head as one module, so DDP synchronises the head's (margin) weights too."""

    def __init__(self, model: nn.Module, head: nn.Module, outliers: bool = False) -> None:
        super().__init__()
        self.model, self.head, self.outliers = model, head, outliers

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.outliers:
            return self.head(self.model(x), y)
        emb = self.model(x)
        # known images (label >= 0) get the head's margin logits, generated non-digits (-1) its plain ones
        return torch.where((y >= 0)[:, None], self.head(emb, y.clamp(min=0)), self.head(emb))


def epoch_indices(n: int, params: TrainParams, epoch: int, ctx: DistContext) -> torch.Tensor:
    """This rank's sample order for `epoch`: one permutation per (seed, epoch), cut like
    DistributedSampler(shuffle, drop_last): rank r takes every N-th index, so step k's N per-rank
    batches together are the single-process batch of N x batch_size."""
    perm = torch.from_numpy(epoch_rng(params.seed, epoch, "order").permutation(n))
    per = n // ctx.world
    return perm[: per * ctx.world][ctx.rank::ctx.world]


@dataclass
class Stepper:
    """What a training step changes: the network (TrainNet, or DDP around it), its optimiser and schedule, the
    fp16 GradScaler (one per run: its loss scale carries across epochs; None = a disabled one), and what
    runs after every step with (epoch, step, loss): the EMA update and the step log in fit."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    after_step: StepHook | None = None


def train_one_epoch(s: Stepper, x: torch.Tensor, y: torch.Tensor, params: TrainParams, device: torch.device,
                    epoch: int, ctx: DistContext = SINGLE, position: dict | None = None,
                    stop: list[int] | None = None) -> tuple[float, dict | None]:
    """One pass over (x, y) in shuffled batches: (mean training loss over all ranks, None).

    `position` = {'step', 'loss_sum', ...} continues a partly done epoch. When `stop` becomes non-empty on
    any rank, every rank finishes the same step and returns (loss so far, `position` moved to the next step),
    which resumes there.
    """
    s.net.train()
    dtype = amp_dtype(device, params.amp)
    scaler = s.scaler if s.scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    order = epoch_indices(len(x), params, epoch, ctx)
    aug = augmentation_table(len(x), params.seed, epoch, params.aug_erode) if params.augment else None
    bs = params.batch_size
    steps = len(order) // bs  # drop the ragged last batch: BatchNorm needs > 1 sample
    start, loss_sum = (position["step"], position["loss_sum"]) if position else (0, 0.0)
    bar = tqdm(total=steps * bs * ctx.world, initial=start * bs * ctx.world, unit="img", unit_scale=True,
               desc=f"epoch {epoch}", disable=not (params.use_tqdm and ctx.is_main), leave=False)
    lines = ctx.is_main and not params.use_tqdm  # no bar: a line about every PROGRESS_SECONDS instead
    t_start = t_line = time.perf_counter()
    for step in range(start, steps):
        idx = order[step * bs:(step + 1) * bs]
        xb = model_input(x[idx], params, device, None if aug is None else aug[idx])
        yb = y[idx].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = training_loss(s.net(xb, yb), yb, params)
        s.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(s.optimizer)
        scaler.update()
        if params.schedule != "step":
            s.scheduler.step()
        # one reduction per step carries the global batch's mean loss and any rank's stop request
        loss_total, stops = all_sum([loss.item(), float(bool(stop))], ctx, device)
        value = loss_total / ctx.world
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss became {value} at epoch {epoch}, step {step}; lower --lr, "
                                f"--scale or --margin (or use --amp=off) and train again.")
        loss_sum += value
        if s.after_step is not None:
            s.after_step(epoch, step, value)
        bar.update(bs * ctx.world)
        bar.set_postfix(loss=f"{value:.4f}")
        if lines and time.perf_counter() - t_line >= PROGRESS_SECONDS:
            t_line, done = time.perf_counter(), step + 1 - start
            rate = done * bs * ctx.world / (t_line - t_start)
            say(f"  epoch {epoch + 1}: step {step + 1}/{steps}, loss {loss_sum / (step + 1):.4f}, {rate:.0f} img/s, "
                f"epoch ETA {(steps - step - 1) * bs * ctx.world / rate:.0f} s", False)
        if stops > 0:  # every rank sees the same sum, so all stop after this same step
            bar.close()
            return loss_sum / (step + 1), {**(position or {}), "step": step + 1, "loss_sum": loss_sum}
    bar.close()
    return loss_sum / max(1, steps), None


@torch.inference_mode()
def embed(model: nn.Module, x: torch.Tensor, params: TrainParams, device: torch.device, desc: str = "embed",
          ctx: DistContext = SINGLE, line: bool = True) -> torch.Tensor:
    """Embeddings of uint8 images x [N, H, W], float32 on `device`, eval mode; computed in fp32 unless
    params.eval_amp (bf16 embeddings differ from fp32 by ~1e-4 in cosine: docs/en/evaluation.md).

    Under DDP each rank embeds its shard and the rows are gathered back in order on every rank.
    `line`: with the bar off, print one line with the count and rate when done.
    """
    model.eval()
    dtype = amp_dtype(device, params.amp) if params.eval_amp else None
    part = x[shard(len(x), ctx)]
    out = []
    bs = params.eval_batch_size
    bar = Progress(len(part), desc, "img", params.use_tqdm and ctx.is_main, line and ctx.is_main)
    for a in range(0, len(part), bs):
        xb = model_input(part[a:a + bs], params, device)
        with autocast(device, dtype):
            out.append(model(xb).float())
        bar.update(len(xb))
    bar.close()
    local = torch.cat(out) if out else torch.empty(0, params.embedding_dim, device=device)
    return gather_rows(local, len(x), ctx)


@torch.inference_mode()
def validate(model: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, params: TrainParams,
             device: torch.device, ctx: DistContext = SINGLE) -> tuple[float, float, float]:
    """Validation loss (the training objective, margin included), the head's accuracy, and the mean
    angle in degrees between each embedding and its class centre (the mean unit embedding of its class:
    a margin pulls classes tighter, so this falls faster with a margin than without).

    Each rank scores its shard; sums are reduced so the numbers equal a single-process run.
    """
    part = shard(len(x), ctx)
    emb = embed(model, x[part], params, device, desc="validate", line=False)
    head.eval()
    yd = y[part].to(device)
    loss_sum = F.cross_entropy(head(emb, yd), yd, reduction="sum").item() if len(yd) else 0.0
    correct = (head(emb).argmax(1) == yd).sum().item() if len(yd) else 0
    n_class = int(y.max()) + 1
    centres = F.normalize(all_sum_tensor(class_centres(emb, yd, n_class), ctx), dim=1)
    cos = (F.normalize(emb, dim=1) * centres[yd]).sum(1).clamp(-1, 1)
    angle_sum = torch.rad2deg(torch.acos(cos)).double().sum().item()
    loss_sum, correct, angle_sum = all_sum([loss_sum, correct, angle_sum], ctx, device)
    return loss_sum / len(x), correct / len(x), angle_sum / len(x)
