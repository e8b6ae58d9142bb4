"""Devices, precision and seeding: what a run needs to know about the machine it runs on.

Detected at run time, never assumed: CUDA when present, bf16 autocast only where the CPU computes
bf16 natively (AVX512-BF16 or AMX) or the GPU supports it (fp16 + GradScaler on older GPUs). On such a
CPU amp=auto also asks the training network's measured speed (utils/training/tuning.py, once per
machine): with oneDNN capped to AVX512-BF16 kernels (no AMX) an Intel Xeon ran the default step at 218
img/s in bf16 against 279 in fp32, so native bf16 alone does not make bf16 the faster.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
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
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX) and the kernels in use can: with
    ATEN_CPU_CAPABILITY=avx2 (the other kernel path, forced) bf16 is emulated and slower, as on AVX2 CPUs."""
    flags = _cpuinfo()
    kernels = torch.backends.cpu.get_cpu_capability().upper()
    return any(f in flags for f in ("avx512_bf16", "amx_bf16")) and kernels.startswith(("AVX512", "AMX"))


# the measurements of utils/training/tuning.py, per machine; read here so that amp=auto can follow them
TUNING_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arcface-mnist" / "tuning.json"


def _cpuinfo() -> str:
    """/proc/cpuinfo, or '' where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def machine_key() -> str:
    """What a measured choice depends on: the CPU's flags, the threads, torch and its kernel path."""
    flags = next((line for line in _cpuinfo().splitlines() if line.startswith("flags")), "")
    name = torch.backends.cpu.get_cpu_capability()
    return hashlib.sha256(f"{flags}|{torch.get_num_threads()}|{torch.__version__}|{name}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def measured_precision() -> str | None:
    """'bf16' or 'fp32', whichever ran the training network faster on this machine (measured once by
    utils/training/tuning.py for amp=auto where bf16 is native), or None when it was never measured."""
    try:
        return json.loads(TUNING_CACHE.read_text()).get(f"precision|{machine_key()}", {}).get("faster")
    except (OSError, ValueError, AttributeError):
        return None


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
    if not cpu_has_native_bf16():
        return None
    return None if measured_precision() == "fp32" else torch.bfloat16  # unmeasured: native bf16 is taken


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def uses_channels_last(mode: str, device: torch.device, amp: str) -> bool:
    """NHWC for 'true'. A training run resolves 'auto' by measuring both layouts on its machine
    (utils/training/tuning.py) before it starts; anything that meets 'auto' unresolved keeps NCHW."""
    return mode == "true"


def epoch_rng(seed: int, epoch: int, stream: str) -> np.random.Generator:
    """A random stream that depends on (seed, epoch, stream) only.

    numpy's SeedSequence hashes the whole tuple, so (seed 0, epoch 1) and (seed 1, epoch 0) get
    unrelated streams; `seed + epoch` (DistributedSampler's rule) gave them the same batch order.
    """
    return np.random.default_rng([seed, epoch, STREAMS[stream]])


STREAMS = {"order": 0, "augment": 1, "erode": 2}


# RNG states as tensors and plain numbers, so that checkpoints load with torch.load(weights_only=True).
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "random": {"version": version, "state": list(internal), "gauss": gauss_next},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    r = s["random"]
    random.setstate((r["version"], tuple(r["state"]), r["gauss"]))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
