"""`fit`: epochs of training with validation, best-checkpoint selection, early stopping and resuming.

The step-level work is in utils/training/engine.py (`train_one_epoch`, `validate`, `embed`); this module
strings it together. `fit` is interruptible: SIGINT/SIGTERM set a flag that the step loop checks; the
current state (mid-epoch included) is then saved to `last.pt` and `TrainingInterrupted` is raised.
Resuming from it replays the same batches and augmentations, so an interrupted run ends where an
uninterrupted one would have (on CPU, same seed).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from utils.core import datasets
from utils.core.config import TrainParams
from utils.core.device import amp_dtype, data_placement, place, restore_rng, rng_state
from utils.core.distributed import SINGLE, DistContext, all_sum, barrier, convert_sync_batchnorm
from utils.core.errors import DataError, NonFiniteLoss, TrainingInterrupted, leave_on_ctrl_c
from utils.core.io import save_checkpoint, save_same
from utils.core.progress import say
from utils.data.images import polarity_of
from utils.data.loading import Splits
from utils.data.outliers import with_outliers
from utils.training.ema import WeightEMA
from utils.training.engine import StepHook, Stepper, TrainNet, train_one_epoch, validate

RESUMED = ("epoch", "best_val_loss", "best_epoch", "epochs_no_improve", "history", "steps", "train_seconds",
           "partial")


def make_optimizer(params: TrainParams, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """AdamW over the backbone and the head. The fused kernel updates every tensor in one pass instead of a
    Python loop per tensor (bench.profile_step: ~5x faster on a 2-core CPU, ~13 % of the step); the same
    update rule, rounded differently, so it moved the numbers once (tests/golden.py's reference)."""
    weights = list(model.parameters()) + list(head.parameters())
    fused = all(w.device.type in ("cpu", "cuda") for w in weights) or None  # other devices: torch's default
    return torch.optim.AdamW(weights, lr=params.lr, weight_decay=params.weight_decay, fused=fused)


def make_scheduler(params: TrainParams, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """'step': StepLR(step_size, gamma) stepped per epoch (the original).
    'cosine': linear warm-up then cosine decay to 0 over total_epochs, stepped per batch.
    'onecycle': linear warm-up then linear decay to 0 (the triangular one-cycle of speed recipes), per batch."""
    if params.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, params.step_size, params.gamma)
    total = max(1, params.total_epochs * steps_per_epoch)
    warm = int(params.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        done = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - done if params.schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * done))

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


@dataclass
class Run:
    """What one fit holds: the network (DDP-wrapped when distributed) with its optimiser, schedule, fp16 scaler
    and EMA, where it saves, and the state that resumes (epoch counters, history, per-step losses)."""
    stepper: Stepper  # .net is what trains; its .after_step is this run's `after_step`
    inner: TrainNet  # its .model/.head are what is saved and evaluated
    ema: WeightEMA | None
    steps: int
    params: TrainParams
    ckpt_dir: Path
    ctx: DistContext
    code: dict | None = None  # utils/core/provenance.code_identity, saved in every checkpoint
    on_step: StepHook | None = None  # a caller's per-step hook (bench.train --to_accuracy)
    state: dict = field(default_factory=lambda: {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": -1,
                                                 "epochs_no_improve": 0, "history": [], "steps": [],
                                                 "train_seconds": 0.0, "partial": None})

    def after_step(self, epoch: int, step: int, value: float) -> None:
        if self.ema is not None:
            self.ema.update()
        if self.params.log_steps:
            self.state["steps"].append([epoch, step, round(value, 8)])
        if self.on_step is not None:
            self.on_step(epoch, step, value)

    def save(self, name: str, partial: dict | None = None, also: str | None = None) -> None:
        """Rank 0 writes the checkpoint `name` (best.pt, or the resumable last.pt) into ckpt_dir; `also` names
        the same state again (a hard link: a best epoch's last.pt is its best.pt, 187 MB written once)."""
        if self.ctx.is_main:
            save_checkpoint(self.ckpt_dir / name, snapshot(self, partial))
            if also is not None:
                save_same(self.ckpt_dir / name, self.ckpt_dir / also)

    def interrupted(self, signum: int) -> TrainingInterrupted:
        barrier(self.ctx)  # last.pt exists before any rank reports it
        return TrainingInterrupted(self.ckpt_dir / "last.pt", signum)


def prepare(params: TrainParams, model: nn.Module, head: nn.Module, n_train: int, device: torch.device,
            ctx: DistContext, ema: WeightEMA | None, ckpt_dir: Path, code: dict | None = None,
            on_step: StepHook | None = None) -> Run:
    """Wrap the network, build optimiser, schedule, scaler and (unless handed one) the EMA."""
    net: nn.Module = TrainNet(model, head, outliers=params.outliers != "off")
    if ctx.enabled:
        if params.sync_bn:
            net = convert_sync_batchnorm(net, device)
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    inner = net.module if ctx.enabled else net
    optimizer = make_optimizer(params, inner.model, inner.head)
    steps = n_train // ctx.world // params.batch_size
    if steps == 0:
        raise DataError(f"batch_size={params.batch_size} x {ctx.world} process(es) exceeds the "
                        f"{n_train} training images; lower --batch_size.")
    scheduler = make_scheduler(params, optimizer, steps)
    inner.head.set_total_steps(params.total_epochs * steps)  # SphereFace anneals over training progress
    # one scaler per run (fp16 only): its loss scale carries across epochs and resumes
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, params.amp) == torch.float16)
    if ema is None and params.ema_decay > 0:
        ema = WeightEMA(inner.model, inner.head, params.ema_decay)
    run = Run(Stepper(net, optimizer, scheduler, scaler), inner, ema, steps, params, ckpt_dir, ctx, code, on_step)
    run.stepper.after_step = run.after_step
    return run


def restore(run: Run, saved: dict) -> None:
    """Continue from a checkpoint: optimiser, schedule, counters, scaler, RNG streams and the EMA."""
    run.stepper.optimizer.load_state_dict(saved["optimizer"])
    run.stepper.scheduler.load_state_dict(saved["scheduler"])
    run.state.update({k: saved[k] for k in RESUMED if k in saved})
    if saved.get("scaler"):
        run.stepper.scaler.load_state_dict(saved["scaler"])
    restore_rng(saved["rng"])
    if run.ema is not None and saved.get("ema") is not None:
        run.ema.load_state_dict(saved["ema"])


def snapshot(run: Run, partial: dict | None) -> dict:
    """Everything a resume needs, as a checkpoint dict."""
    s = run.stepper
    return {"model": run.inner.model.state_dict(), "head": run.inner.head.state_dict(),
            "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else None,
            "params": vars(run.params).copy(), "rng": rng_state(), "code": run.code,
            **{k: v for k, v in run.state.items() if k != "partial"}, "partial": partial}


def close_epoch(run: Run, record: dict) -> bool:
    """Append the epoch's record and move the early-stopping counters; True when it is the best so far."""
    st = run.state
    improved = record["val_loss"] < st["best_val_loss"]
    st["history"].append(record)
    st["epoch"] = record["epoch"] + 1
    if improved:
        st.update(best_val_loss=record["val_loss"], best_epoch=record["epoch"], epochs_no_improve=0)
    else:
        st["epochs_no_improve"] += 1
    return improved


def epoch_line(params: TrainParams, st: dict, n_train: int, improved: bool) -> str:
    h = st["history"][-1]
    left = params.total_epochs - st["epoch"]
    return (f"epoch {h['epoch'] + 1}/{params.total_epochs}: train {h['train_loss']:.4f}  val {h['val_loss']:.4f}  "
            f"val_acc {h['val_acc']:.4%}  angle {h['val_angle_deg']:.1f} deg  {h['seconds']:.0f} s "
            f"({n_train / h['seconds']:.0f} img/s)  "
            f"ETA {left * st['train_seconds'] / st['epoch'] / 60:.0f} min{'  *best*' if improved else ''}")


def fit(params: TrainParams, model: nn.Module, head: nn.Module, splits: Splits, device: torch.device,
        ckpt_dir: Path, on_epoch: Callable[[dict], None], resume_state: dict | None = None,
        ctx: DistContext = SINGLE, on_step: StepHook | None = None, ema: WeightEMA | None = None,
        code: dict | None = None) -> dict:
    """Train with early stopping; rank 0 keeps `best.pt` (lowest val loss) and `last.pt` (resumable).

    With params.ema_decay > 0 an EMA of the weights (utils/training/ema.py) is validated, selected and saved
    under the checkpoint's "ema" key; "model"/"head" keep the raw weights that training resumes from.
    A caller that scores the EMA mid-epoch (bench.train --to_accuracy) passes its own `ema` of
    (model, head) instead, so the average is updated once per step, not twice.
    `on_epoch` gets the run state after each epoch: "history" (one dict per epoch) and "steps"
    ([epoch, step, loss] per step when params.log_steps), both carried through resumes.
    `code` (utils/core/provenance.code_identity) is saved in every checkpoint: a resume can tell which code
    trained the epochs before it.
    """
    train_x, train_y = splits.train_x, splits.train_y
    if params.outliers != "off":  # generated non-digits join the training set with label -1
        train_x, train_y = with_outliers(train_x, train_y, params.outlier_fraction, polarity_of(train_x.numpy()),
                                         datasets.get(params.dataset_name).normalise, params.data_root, params.seed,
                                         tuple(params.outlier_kinds.split(",")))
    run = prepare(params, model, head, len(train_x), device, ctx, ema, ckpt_dir, code, on_step)
    scored = (run.ema.model, run.ema.head) if run.ema is not None else (run.inner.model, run.inner.head)
    how = data_placement(train_x.nbytes + splits.val_x.nbytes, device)
    train_x, val_x = place(train_x, how, device), place(splits.val_x, how, device)
    if resume_state is not None:
        restore(run, resume_state)
    st = run.state
    t0 = time.perf_counter() - st["train_seconds"]
    with stop_on_signals() as stop:
        while st["epoch"] < params.total_epochs and st["epochs_no_improve"] < params.early_stop_epochs:
            epoch, te = st["epoch"], time.perf_counter()
            # the epoch's starting lr, kept through a mid-epoch resume so history.csv matches an uninterrupted run
            partial = st["partial"] or {"step": 0, "loss_sum": 0.0, "lr": run.stepper.optimizer.param_groups[0]["lr"]}
            train_loss, stopped_at = train_one_epoch(run.stepper, train_x, train_y, params, device, epoch, ctx,
                                                     partial, stop)
            if stopped_at is not None:  # a signal mid-epoch: keep the position in last.pt, then leave
                st["train_seconds"] = time.perf_counter() - t0
                run.save("last.pt", stopped_at)
                raise run.interrupted(stop[0] if stop else signal.SIGTERM)
            st["partial"] = None
            if params.schedule == "step":
                run.stepper.scheduler.step()
            val_loss, val_acc, val_angle = validate(*scored, val_x, splits.val_y, params, device, ctx)
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"validation loss became {val_loss} after epoch {epoch}; lower --lr, "
                                    f"--scale or --margin (or use --amp=off) and train again.")
            improved = close_epoch(run, {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                         "val_acc": val_acc, "val_angle_deg": val_angle, "lr": partial["lr"],
                                         "seconds": time.perf_counter() - te})
            st["train_seconds"] = time.perf_counter() - t0
            # best.pt first: a kill in between leaves last.pt at the epoch before, which a resume repeats
            if improved:
                run.save("best.pt", also="last.pt")
            else:
                run.save("last.pt")
            if ctx.is_main:
                on_epoch(st)
                say(epoch_line(params, st, len(train_x), improved), params.use_tqdm)
            # a signal during validation or saving is honoured here, at the epoch boundary last.pt holds
            if all_sum([float(bool(stop))], ctx, device)[0] > 0:
                raise run.interrupted(stop[0] if stop else signal.SIGTERM)
    barrier(ctx)  # best.pt is complete before any rank loads it
    return {"best_epoch": st["best_epoch"], "epochs_trained": st["epoch"], "train_seconds": st["train_seconds"],
            "best_val_loss": st["best_val_loss"], "history": st["history"], "steps": st["steps"]}
