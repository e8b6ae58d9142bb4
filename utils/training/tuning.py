"""How the network runs fastest on this machine, measured once and cached, never assumed from the CPU's name.

Two choices move a CPU training step by up to several times and depend on the CPU, the precision and
the thread count: the memory layout (NCHW or NHWC: NHWC was 1.11x faster in fp32 on an AMD AVX-512 EPYC,
1.26x on an AVX2 EPYC and 17 % slower on an Intel Xeon with AMX) and whether the convolutions on tiny
maps run as one matrix product (models/matmul_conv.py). `--channels_last=auto` and
`--tiny_conv=auto` time one forward + backward pass of the run's network at its precision and input size
under each combination and keep the fastest; a value set by hand is kept. Where the CPU has native bf16,
`--amp=auto` times the same pass in bf16 and in fp32 as well and means the faster one on this machine
from then on (bf16 lost, 218 to 279 img/s, on an AMX Xeon capped to AVX512-BF16 kernels, and won, 376 to
227, on a real AVX512-BF16 CPU without AMX: the imitation ranked them the wrong way). Each answer is cached per
machine (CPU model and flags, threads, torch, kernel path) in the user's cache folder, so every run of a
machine makes the same choice and computes the same numbers; metrics.json records it.

Not measured (a fixed NCHW, library choice): CUDA, where cuDNN's autotuner chooses, and torchrun
processes without a cached answer, which would time each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import torch
import torch.nn as nn

from models import get_model, input_channels
from models.matmul_conv import convertible, swap
from utils.core import device as devices
from utils.core.config import TrainParams
from utils.core.device import amp_dtype, autocast, machine_key
from utils.core.progress import say

# Which convolutions run as one matrix product: those whose output map is at most TINY_OUT x TINY_OUT
# (ResNet18's layer4 at 28 px) and the 1x1 stride-2 shortcuts. Measured one by one (bench.profile_step,
# results/bench/profile/amx_*.json: forward + both gradients, library time / matrix-product time) these
# run 1.2-3.6x faster as a product in bf16 and 1.0-1.7x in fp32, while the 3x3 convolutions on 4x4 maps
# (layer3) run at 0.43-0.54x: an input side of 4, the rule before, took those too.
TINY_OUT = 2
COMBOS = ((False, False), (True, False), (False, True), (True, True))  # (channels_last, tiny_conv)


def _small(conv: nn.Conv2d, out: torch.Tensor) -> bool:
    shortcut = conv.kernel_size == (1, 1) and conv.stride == (2, 2)
    return shortcut or max(out.shape[-2:]) <= TINY_OUT


def tiny_convs(model: nn.Module, params: TrainParams) -> set[str]:
    """Names of the convolutions that run faster as one matrix product at the run's input size: output
    map at most TINY_OUT x TINY_OUT, or a 1x1 stride-2 shortcut."""
    seen: set[str] = set()
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.add(n) if _small(m, o) else None)
             for n, m in model.named_modules() if convertible(m)]
    was = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, input_channels(params.pretrained), params.img_size, params.img_size))
    model.train(was)
    for h in hooks:
        h.remove()
    return seen


def apply(model: nn.Module, params: TrainParams) -> nn.Module:
    """The network laid out and computed as params say (channels_last / tiny_conv already resolved)."""
    if params.tiny_conv == "true":
        swap(model, tiny_convs(model, params))
    return model.to(memory_format=torch.channels_last) if params.channels_last == "true" else model


def _time(params: TrainParams, cl: bool, tiny: bool, batch: int, reps: int) -> float:
    p = dataclasses.replace(params, channels_last=str(cl).lower(), tiny_conv=str(tiny).lower())
    net = apply(get_model(p.backbone_type, p.embedding_dim, p.stem, p.pretrained), p).train()
    x = torch.randn(batch, input_channels(p.pretrained), p.img_size, p.img_size)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    dtype = amp_dtype(torch.device("cpu"), p.amp)
    best = float("inf")
    for i in range(reps + 1):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            out = net(x)
        out.float().square().mean().backward()
        if i:  # the first pass warms oneDNN's kernel caches
            best = min(best, time.perf_counter() - t0)
    return best


def _load() -> dict:
    try:
        return json.loads(devices.TUNING_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _save(entries: dict) -> None:
    """Add measurements to the cache (written whole under another name, then renamed into place)."""
    cache = {**_load(), **entries}
    devices.TUNING_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = devices.TUNING_CACHE.with_name(f"{devices.TUNING_CACHE.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    tmp.replace(devices.TUNING_CACHE)
    devices.measured_precision.cache_clear()


def _key(params: TrainParams, precision: str, batch: int) -> str:
    # out: the rule of tiny_convs, so a new rule is measured anew
    return (f"{machine_key()}|{precision}|{params.img_size}|{params.stem}|{params.embedding_dim}|{params.pretrained}"
            f"|out{TINY_OUT}|{batch}")


def _measure(params: TrainParams, precision: str, batch: int) -> dict[str, float]:
    """Seconds of one forward + backward pass for every (channels_last, tiny_conv) at `precision`, cached."""
    key = _key(params, precision, batch)
    if key not in _load():
        say(f"measuring the fastest layout and convolution path on this machine ({precision}, batch {batch}; once, "
            f"cached in {devices.TUNING_CACHE})", False)
        p = dataclasses.replace(params, amp="bf16" if precision == "bf16" else "off")
        with torch.random.fork_rng():  # the run's own random streams are not touched
            torch.manual_seed(0)
            _save({key: {f"{cl}|{tiny}": _time(p, cl, tiny, batch, 2) for cl, tiny in COMBOS}})
    return _load()[key]


def choose(params: TrainParams, device: torch.device, measure: bool = True) -> tuple[TrainParams, dict]:
    """params with channels_last and tiny_conv resolved to 'true'/'false', and how they were chosen. With
    amp=auto on a CPU with native bf16 the faster precision is measured too (once per machine); amp stays
    'auto' and means that precision here from then on (utils/core/device.py: amp_dtype)."""
    wanted = {"channels_last": params.channels_last, "tiny_conv": params.tiny_conv}
    cpu_resnet = device.type == "cpu" and params.backbone_type == "resnet18"
    batch = min(params.batch_size, 128)
    if cpu_resnet and measure and params.amp == "auto" and devices.cpu_has_native_bf16() \
            and f"precision|{machine_key()}" not in _load():
        # one answer per machine, so it is measured on the default preset's network (28 px, 512-d, batch
        # 128) whatever run comes first: a quick_debug run's small pass must not decide for real training
        ref = dataclasses.replace(params, img_size=28, stem="s2", embedding_dim=512, pretrained=False)
        best = {prec: min(_measure(ref, prec, 128).values()) for prec in ("bf16", "fp32")}
        _save({f"precision|{machine_key()}": {**best, "faster": min(best, key=best.get)}})
    if "auto" not in wanted.values():
        return params, {**wanted, "source": "set"}
    if not cpu_resnet:
        fixed = {k: "false" if v == "auto" else v for k, v in wanted.items()}
        return dataclasses.replace(params, **fixed), {**fixed, "source": "default (not measured here)"}
    precision = "bf16" if amp_dtype(device, params.amp) == torch.bfloat16 else "fp32"
    if _key(params, precision, batch) not in _load() and not measure:
        fixed = {k: "false" if v == "auto" else v for k, v in wanted.items()}
        return dataclasses.replace(params, **fixed), {**fixed, "source": "default (no cached measurement)"}
    seconds = _measure(params, precision, batch)
    allowed = {c: s for c, s in seconds.items() if all(
        wanted[k] == "auto" or wanted[k] == v.lower() for k, v in zip(("channels_last", "tiny_conv"), c.split("|"),
                                                                        strict=True))}
    cl, tiny = min(allowed, key=allowed.get).split("|")
    chosen = {"channels_last": cl.lower(), "tiny_conv": tiny.lower()}
    return dataclasses.replace(params, **chosen), {**chosen, "source": "measured", "seconds_per_pass": seconds}
