"""Devices, precision and seeding: what a run needs to know about the machine it runs on.

Detected at run time, never assumed: CUDA when present, bf16 autocast only where the CPU computes
bf16 natively (AVX512-BF16 or AMX) or the GPU supports it (fp16 + GradScaler on older GPUs).
"""

from __future__ import annotations

import functools
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when available, else CPU (config.validate has refused CUDA where there is none)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    return device


# Data sets below this size are copied to the GPU once (MNIST: 47 MB); larger ones are pinned so
# that per-batch copies can overlap compute (non_blocking=True in prepare_batch).
GPU_RESIDENT_BYTES = 2 << 30


def data_placement(nbytes: int, device: torch.device) -> str:
    """Where the uint8 image tensors should live for `device`: 'device', 'pinned' or 'cpu'."""
    if device.type != "cuda":
        return "cpu"
    return "device" if nbytes <= GPU_RESIDENT_BYTES else "pinned"


def place(x: torch.Tensor, how: str, device: torch.device) -> torch.Tensor:
    return x.to(device) if how == "device" else x.pin_memory() if how == "pinned" else x


@functools.lru_cache(maxsize=1)
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


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["random"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
