"""What made a result: the code (git commit, uncommitted changes), the machine and the precision.

Every run records these in metrics.json and its checkpoints, so that a summary can refuse to mix
runs of different code or precision (utils/cli/seeds.py). Nothing here ever fails a run: without git
(a zip download) or outside a repository the commit is recorded as unknown, with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from pathlib import Path

import torch

from utils.core import distributed
from utils.core.device import amp_dtype, cpu_has_native_bf16
from utils.core.distributed import DistContext

ROOT = Path(__file__).resolve().parents[2]  # utils/core/provenance.py -> the repository
PRECISION = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# environment that makes ATen and oneDNN take their AVX2 kernels on an AVX-512 CPU
FORCED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_identity() -> dict:
    """{"git_commit": sha or None, "git_dirty": bool or None, "git_note": why unknown (only then)}.

    Dirty = tracked files outside results/ differ from the commit: code or docs edited by hand. (Results
    are written by the runs themselves, so they do not count.) Cached: one answer per process, taken
    when the first run starts, so edits made while a long job trains do not change what it records."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        why = "git not installed" if _git("--version") is None else "not a git checkout (e.g. a zip download)"
        return {"git_commit": None, "git_dirty": None, "git_note": why}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (platform.processor() is empty on most Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def cpu_kind() -> str:
    """The CPU's class for speed: 'amx' (AVX-512 with AMX tiles), 'avx512_bf16' (AVX-512 with native bf16),
    'avx512', 'avx2' or 'other', read from the CPU's flags (what the kernels in use do is another matter:
    ATEN_CPU_CAPABILITY can force the AVX2 path on any of them)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    for kind, need in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if need in flags:
            return kind
    return "other"


def device_description(device: torch.device, ctx: DistContext = distributed.SINGLE) -> str:
    if device.type == "cuda":
        desc = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        desc = f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    return desc if not ctx.enabled else f"{ctx.world} x {desc} (DDP)"


def machine(device: torch.device) -> dict:
    """The hardware facts that move numbers: CPU kernels (AVX-512 and AVX2 round differently) and bf16."""
    out = {"cpu": cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability().lower(),
           "native_bf16": cpu_has_native_bf16(), "torch": str(torch.__version__)}  # str: no class in checkpoints
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def precision(device: torch.device, amp: str) -> str:
    """The precision `amp` resolves to on `device` ('auto' -> what ran): fp32, bf16 or fp16."""
    return PRECISION[amp_dtype(device, amp)]
