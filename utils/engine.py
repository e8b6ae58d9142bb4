"""The training engine shared by both trainers: one epoch, validation, embedding, fit.

`fit` is interruptible: SIGINT/SIGTERM set a flag that the step loop checks; the current state
(mid-epoch included) is then saved to `last.pt` and `TrainingInterrupted` is raised. Resuming
from it replays the same batches and augmentations, so an interrupted run ends where an
uninterrupted one would have (on CPU, same seed).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from models import input_channels
from utils.config import TrainParams
from utils.data import Splits, augmentation_table, prepare_batch
from utils.device import (
    amp_dtype,
    autocast,
    data_placement,
    epoch_rng,
    place,
    restore_rng,
    rng_state,
    uses_channels_last,
)
from utils.distributed import (
    SINGLE,
    DistContext,
    all_sum,
    all_sum_tensor,
    barrier,
    convert_sync_batchnorm,
    gather_rows,
    shard,
)
from utils.ema import WeightEMA
from utils.errors import DataError, NonFiniteLoss, TrainingInterrupted, leave_on_ctrl_c
from utils.io import save_checkpoint
from utils.metrics import class_centres
from utils.progress import Progress, say

StepHook = Callable[[int, int, float], None]
PROGRESS_SECONDS = 60.0  # with the bar off, one progress line about this often within an epoch


def make_optimizer(params: TrainParams, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(model.parameters()) + list(head.parameters()),
                             lr=params.lr, weight_decay=params.weight_decay)


def make_scheduler(params: TrainParams, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """'step': StepLR(step_size, gamma) stepped per epoch (the original).
    'cosine': linear warm-up then cosine decay to 0 over total_epochs, stepped per batch."""
    if params.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, params.step_size, params.gamma)
    total = max(1, params.total_epochs * steps_per_epoch)
    warm = int(params.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """Yield a list that becomes non-empty (holding the signal number) on SIGINT/SIGTERM."""
    hit: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        if hit:  # second Ctrl+C: the user really wants out (main.py reports it without a traceback)
            leave_on_ctrl_c()
        hit.append(signum)

    for s in old:
        signal.signal(s, handler)
    try:
        yield hit
    finally:
        for s, h in old.items():
            if signal.getsignal(s) is handler:  # not after a second Ctrl+C switched to leaving (SIG_IGN)
                signal.signal(s, h)


# ----------------------------------------------------------------------------- train / eval
def model_input(x: torch.Tensor, params: TrainParams, device: torch.device,
                aug: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images -> the network's input for `params` (channels, size, layout, normalisation)."""
    return prepare_batch(x, params.img_size, input_channels(params.pretrained), device, aug=aug,
                         channels_last=uses_channels_last(params.channels_last, device, params.amp),
                         mean=params.input_mean, std=params.input_std)


class TrainNet(nn.Module):
    """Embedder + head as one module, so DDP synchronises the head's (margin) weights too."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x), y)


def epoch_indices(n: int, params: TrainParams, epoch: int, ctx: DistContext) -> torch.Tensor:
    """This rank's sample order for `epoch`: one permutation per (seed, epoch), cut like
    DistributedSampler(shuffle, drop_last): rank r takes every N-th index, so step k's N per-rank
    batches together are the single-process batch of N x batch_size."""
    perm = torch.from_numpy(epoch_rng(params.seed, epoch, "order").permutation(n))
    per = n // ctx.world
    return perm[: per * ctx.world][ctx.rank::ctx.world]


def train_one_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    x: torch.Tensor, y: torch.Tensor, params: TrainParams, device: torch.device, epoch: int,
                    ctx: DistContext = SINGLE, resume: dict | None = None, stop: list[int] | None = None,
                    on_stop: Callable[[dict], None] | None = None, on_step: StepHook | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over (x, y) in shuffled batches; returns the mean training loss (over all ranks).

    `resume` = {'step', 'loss_sum', ...} continues a partly done epoch. When `stop` becomes non-empty on
    any rank, every rank finishes the same step and `on_stop` is called with `resume`'s keys updated to
    the next position.
    `scaler`: the run's fp16 GradScaler (fit keeps one per run); None = a disabled one.
    """
    net.train()
    dtype = amp_dtype(device, params.amp)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    order = epoch_indices(len(x), params, epoch, ctx)
    aug = augmentation_table(len(x), params.seed, epoch) if params.augment else None
    bs = params.batch_size
    steps = len(order) // bs  # drop the ragged last batch: BatchNorm needs > 1 sample
    start, loss_sum = (resume["step"], resume["loss_sum"]) if resume else (0, 0.0)
    bar = tqdm(total=steps * bs * ctx.world, initial=start * bs * ctx.world, unit="img", unit_scale=True,
               desc=f"epoch {epoch}", disable=not (params.use_tqdm and ctx.is_main), leave=False)
    lines = ctx.is_main and not params.use_tqdm  # no bar: a line about every PROGRESS_SECONDS instead
    t_start = t_line = time.perf_counter()
    for step in range(start, steps):
        idx = order[step * bs:(step + 1) * bs]
        xb = model_input(x[idx], params, device, None if aug is None else aug[idx])
        yb = y[idx].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(net(xb, yb), yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if params.schedule != "step":
            scheduler.step()
        # one reduction per step carries the global batch's mean loss and any rank's stop request
        loss_total, stops = all_sum([loss.item(), float(bool(stop))], ctx, device)
        value = loss_total / ctx.world
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss became {value} at epoch {epoch}, step {step}; lower --lr, "
                                f"--scale or --margin (or use --amp=off) and train again.")
        loss_sum += value
        if on_step is not None:
            on_step(epoch, step, value)
        bar.update(bs * ctx.world)
        bar.set_postfix(loss=f"{value:.4f}")
        if lines and time.perf_counter() - t_line >= PROGRESS_SECONDS:
            t_line, done = time.perf_counter(), step + 1 - start
            rate = done * bs * ctx.world / (t_line - t_start)
            say(f"  epoch {epoch + 1}: step {step + 1}/{steps}, loss {loss_sum / (step + 1):.4f}, {rate:.0f} img/s, "
                f"epoch ETA {(steps - step - 1) * bs * ctx.world / rate:.0f} s", False)
        if stops > 0:  # every rank sees the same sum, so all stop after this same step
            on_stop({**(resume or {}), "step": step + 1, "loss_sum": loss_sum})
    bar.close()
    return loss_sum / max(1, steps)


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


def fit(params: TrainParams, model: nn.Module, head: nn.Module, splits: Splits, device: torch.device,
        ckpt_dir: Path, on_epoch: Callable[[dict], None], resume_state: dict | None = None,
        ctx: DistContext = SINGLE, on_step: StepHook | None = None, ema: WeightEMA | None = None,
        code: dict | None = None) -> dict:
    """Train with early stopping; rank 0 keeps `best.pt` (lowest val loss) and `last.pt` (resumable).

    With params.ema_decay > 0 an EMA of the weights (utils/ema.py) is validated, selected and saved
    under the checkpoint's "ema" key; "model"/"head" keep the raw weights that training resumes from.
    A caller that scores the EMA mid-epoch (bench.train --to-accuracy) passes its own `ema` of
    (model, head) instead, so the average is updated once per step, not twice.
    `on_epoch` gets the run state after each epoch: "history" (one dict per epoch) and "steps"
    ([epoch, step, loss] per step when params.log_steps), both carried through resumes.
    `code` (utils/provenance.code_identity) is saved in every checkpoint: a resume can tell which code
    trained the epochs before it.
    """
    net: nn.Module = TrainNet(model, head)
    if ctx.enabled:
        if params.sync_bn:
            net = convert_sync_batchnorm(net, device)
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    inner = net.module if ctx.enabled else net  # its .model/.head are what we save and evaluate
    optimizer = make_optimizer(params, inner.model, inner.head)
    steps = len(splits.train_x) // ctx.world // params.batch_size
    if steps == 0:
        raise DataError(f"batch_size={params.batch_size} x {ctx.world} process(es) exceeds the "
                        f"{len(splits.train_x)} training images; lower --batch_size.")
    scheduler = make_scheduler(params, optimizer, steps)
    inner.head.set_total_steps(params.total_epochs * steps)  # SphereFace anneals over training progress
    # one scaler per run (fp16 only): its loss scale carries across epochs and resumes
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, params.amp) == torch.float16)
    if ema is None and params.ema_decay > 0:
        ema = WeightEMA(inner.model, inner.head, params.ema_decay)
    scored = (ema.model, ema.head) if ema is not None else (inner.model, inner.head)
    how = data_placement(splits.train_x.nbytes + splits.val_x.nbytes, device)
    train_x, val_x = place(splits.train_x, how, device), place(splits.val_x, how, device)
    st = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": -1, "epochs_no_improve": 0,
          "history": [], "steps": [], "train_seconds": 0.0, "partial": None}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        st.update({k: resume_state[k] for k in st if k in resume_state})
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        restore_rng(resume_state["rng"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])

    def step_hook(epoch: int, step: int, value: float) -> None:
        if ema is not None:
            ema.update()
        if params.log_steps:
            st["steps"].append([epoch, step, round(value, 8)])
        if on_step is not None:
            on_step(epoch, step, value)

    def snapshot(partial: dict | None) -> dict:
        return {"model": inner.model.state_dict(), "head": inner.head.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "params": vars(params).copy(), "rng": rng_state(), "code": code,
                **{k: v for k, v in st.items() if k != "partial"}, "partial": partial}

    def save(name: str, state: dict) -> None:
        if ctx.is_main:
            save_checkpoint(ckpt_dir / name, state)

    t0 = time.perf_counter() - st["train_seconds"]
    with stop_on_signals() as stop:
        def interrupted() -> None:
            barrier(ctx)  # last.pt exists before any rank reports it
            raise TrainingInterrupted(ckpt_dir / "last.pt", stop[0] if stop else signal.SIGTERM)

        def on_stop(partial: dict) -> None:
            st["train_seconds"] = time.perf_counter() - t0
            save("last.pt", snapshot(partial))
            interrupted()

        while st["epoch"] < params.total_epochs and st["epochs_no_improve"] < params.early_stop_epochs:
            epoch, te = st["epoch"], time.perf_counter()
            # the epoch's starting lr, kept through a mid-epoch resume so history.csv matches an uninterrupted run
            partial = st["partial"] or {"step": 0, "loss_sum": 0.0, "lr": optimizer.param_groups[0]["lr"]}
            train_loss = train_one_epoch(
                net, optimizer, scheduler, train_x, splits.train_y, params, device, epoch, ctx,
                partial, stop, on_stop, step_hook, scaler)
            st["partial"] = None
            if params.schedule == "step":
                scheduler.step()
            val_loss, val_acc, val_angle = validate(*scored, val_x, splits.val_y, params, device, ctx)
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"validation loss became {val_loss} after epoch {epoch}; lower --lr, "
                                    f"--scale or --margin (or use --amp=off) and train again.")
            improved = val_loss < st["best_val_loss"]
            st["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "val_acc": val_acc, "val_angle_deg": val_angle, "lr": partial["lr"],
                                  "seconds": time.perf_counter() - te})
            st["epoch"] = epoch + 1
            if improved:
                st.update(best_val_loss=val_loss, best_epoch=epoch, epochs_no_improve=0)
            else:
                st["epochs_no_improve"] += 1
            st["train_seconds"] = time.perf_counter() - t0
            state = snapshot(None)
            if improved:
                save("best.pt", state)
            save("last.pt", state)
            if ctx.is_main:
                on_epoch(st)
                left = params.total_epochs - st["epoch"]
                say(f"epoch {epoch + 1}/{params.total_epochs}: train {train_loss:.4f}  val {val_loss:.4f}  "
                    f"val_acc {val_acc:.4%}  angle {val_angle:.1f} deg  {st['history'][-1]['seconds']:.0f} s "
                    f"({len(train_x) / st['history'][-1]['seconds']:.0f} img/s)  "
                    f"ETA {left * st['train_seconds'] / st['epoch'] / 60:.0f} min{'  *best*' if improved else ''}",
                    params.use_tqdm)
            # a signal during validation or saving is honoured here, at the epoch boundary last.pt holds
            if all_sum([float(bool(stop))], ctx, device)[0] > 0:
                interrupted()
    barrier(ctx)  # best.pt is complete before any rank loads it
    return {"best_epoch": st["best_epoch"], "epochs_trained": st["epoch"], "train_seconds": st["train_seconds"],
            "best_val_loss": st["best_val_loss"], "history": st["history"], "steps": st["steps"]}
