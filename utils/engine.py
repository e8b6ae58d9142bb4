"""The training engine shared by both trainers: devices, precision, one epoch, validation, fit.

`fit` is interruptible: SIGINT/SIGTERM set a flag that the step loop checks; the current state
(mid-epoch included) is then saved to `last.pt` and `TrainingInterrupted` is raised. Resuming
from it replays the same batches and augmentations, so an interrupted run ends where an
uninterrupted one would have (on CPU, same seed).
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.data import DataError, Splits, prepare_batch


class TrainingInterrupted(Exception):
    def __init__(self, path: Path, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; resumable checkpoint saved to {path}. "
                         f"Continue with --resume={path} (or --resume=auto).")
        self.path, self.signum = path, signum


class NonFiniteLoss(RuntimeError):
    pass


# ----------------------------------------------------------------------------- setup helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} but CUDA is not available here; use --device=cpu or auto.")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def amp_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """Autocast dtype for `mode` on `device`; None = fp32."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def make_optimizer(params: Any, model: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(model.parameters()) + list(head.parameters()),
                             lr=params.lr, weight_decay=params.weight_decay)


def make_scheduler(params: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
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
def stop_on_signals():
    """Yield a list that becomes non-empty (holding the signal number) on SIGINT/SIGTERM."""
    hit: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if hit:  # second Ctrl+C: the user really wants out
            raise KeyboardInterrupt
        hit.append(signum)

    for s in old:
        signal.signal(s, handler)
    try:
        yield hit
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and augmentation of epoch `epoch` depend only on (seed, epoch): resumable."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


# ----------------------------------------------------------------------------- train / eval
def train_one_epoch(model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    x: torch.Tensor, y: torch.Tensor, params: Any, device: torch.device, epoch: int,
                    resume: dict | None = None, stop: list[int] | None = None,
                    on_stop: Callable[[dict], None] | None = None) -> float:
    """One pass over (x, y) in shuffled batches; returns the mean training loss.

    `resume` = {'step', 'loss_sum', 'gen_state'} continues a partly done epoch. When `stop`
    becomes non-empty, `on_stop` is called with that same dict for the current position.
    """
    model.train()
    head.train()
    dtype = amp_dtype(device, params.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    gen = epoch_generator(params.seed, epoch)
    perm = torch.randperm(len(x), generator=gen)
    steps = len(x) // params.batch_size  # drop the ragged last batch: BatchNorm needs > 1 sample
    start, loss_sum = 0, 0.0
    if resume:
        start, loss_sum = resume["step"], resume["loss_sum"]
        gen.set_state(resume["gen_state"])
    bar = tqdm(total=steps * params.batch_size, initial=start * params.batch_size, unit="img",
               unit_scale=True, desc=f"epoch {epoch}", disable=not params.use_tqdm, leave=False)
    for step in range(start, steps):
        if stop:
            on_stop({"step": step, "loss_sum": loss_sum, "gen_state": gen.get_state()})
        idx = perm[step * params.batch_size:(step + 1) * params.batch_size]
        xb = prepare_batch(x[idx], params.img_size, 3 if params.pretrained else 1, device,
                           augment=params.augment, gen=gen)
        yb = y[idx].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(head(model(xb), yb), yb)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss became {value} at epoch {epoch}, step {step}; lower --lr, "
                                f"--scale or --margin (or use --amp=off) and train again.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if params.schedule != "step":
            scheduler.step()
        loss_sum += value
        bar.update(params.batch_size)
        bar.set_postfix(loss=f"{value:.4f}")
    bar.close()
    return loss_sum / max(1, steps)


@torch.inference_mode()
def embed(model: nn.Module, x: torch.Tensor, params: Any, device: torch.device,
          desc: str = "embed") -> torch.Tensor:
    """Embeddings of uint8 images x [N, H, W], in float32 on `device`, in eval mode."""
    model.eval()
    dtype = amp_dtype(device, params.amp)
    out = []
    bs = params.eval_batch_size
    for a in tqdm(range(0, len(x), bs), desc=desc, unit="batch", disable=not params.use_tqdm, leave=False):
        xb = prepare_batch(x[a:a + bs], params.img_size, 3 if params.pretrained else 1, device)
        with autocast(device, dtype):
            out.append(model(xb).float())
    return torch.cat(out)


@torch.inference_mode()
def validate(model: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Any,
             device: torch.device) -> tuple[float, float]:
    """Validation loss (the training objective, margin included) and the head's accuracy."""
    emb = embed(model, x, params, device, desc="validate")
    head.eval()
    yd = y.to(device)
    loss = F.cross_entropy(head(emb, yd), yd).item()
    acc = (head(emb).argmax(1) == yd).float().mean().item()
    return loss, acc


def fit(params: Any, model: nn.Module, head: nn.Module, splits: Splits, device: torch.device,
        ckpt_dir: Path, on_epoch: Callable[[list[dict]], None], resume_state: dict | None = None) -> dict:
    """Train with early stopping; keep `best.pt` (lowest val loss) and `last.pt` (resumable)."""
    optimizer = make_optimizer(params, model, head)
    steps = len(splits.train_x) // params.batch_size
    if steps == 0:
        raise DataError(f"batch_size={params.batch_size} exceeds the {len(splits.train_x)} training images.")
    scheduler = make_scheduler(params, optimizer, steps)
    st = {"epoch": 0, "best_val_loss": float("inf"), "best_epoch": -1, "epochs_no_improve": 0,
          "history": [], "train_seconds": 0.0, "partial": None}
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        st.update({k: resume_state[k] for k in st})
        restore_rng(resume_state["rng"])

    def snapshot(partial: dict | None) -> dict:
        return {"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "params": vars(params).copy(), "rng": rng_state(),
                **{k: v for k, v in st.items() if k != "partial"}, "partial": partial}

    from utils.io import save_checkpoint  # local: io imports torch only, keeps arrows one-way

    t0 = time.perf_counter() - st["train_seconds"]
    with stop_on_signals() as stop:
        def on_stop(partial: dict) -> None:
            st["train_seconds"] = time.perf_counter() - t0
            save_checkpoint(ckpt_dir / "last.pt", snapshot(partial))
            raise TrainingInterrupted(ckpt_dir / "last.pt", stop[0])

        while st["epoch"] < params.total_epochs and st["epochs_no_improve"] < params.early_stop_epochs:
            epoch, te = st["epoch"], time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_one_epoch(model, head, optimizer, scheduler, splits.train_x, splits.train_y,
                                         params, device, epoch, st["partial"], stop, on_stop)
            st["partial"] = None
            if params.schedule == "step":
                scheduler.step()
            val_loss, val_acc = validate(model, head, splits.val_x, splits.val_y, params, device)
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(f"validation loss became {val_loss} after epoch {epoch}; lower --lr, "
                                    f"--scale or --margin (or use --amp=off) and train again.")
            improved = val_loss < st["best_val_loss"]
            st["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - te})
            st["epoch"] = epoch + 1
            if improved:
                st.update(best_val_loss=val_loss, best_epoch=epoch, epochs_no_improve=0)
            else:
                st["epochs_no_improve"] += 1
            st["train_seconds"] = time.perf_counter() - t0
            state = snapshot(None)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", state)
            save_checkpoint(ckpt_dir / "last.pt", state)
            on_epoch(st["history"])
            if params.use_tqdm:
                tqdm.write(f"epoch {epoch}: train {train_loss:.4f}  val {val_loss:.4f}  val_acc {val_acc:.4%}"
                           f"  {'*best*' if improved else ''}")
    return {"best_epoch": st["best_epoch"], "epochs_trained": st["epoch"], "train_seconds": st["train_seconds"],
            "best_val_loss": st["best_val_loss"], "history": st["history"]}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["random"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
