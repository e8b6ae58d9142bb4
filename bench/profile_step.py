"""Where a training step's time goes, on this CPU, in one precision and layout.

    python -m bench.profile_step [--amp=bf16|off] [--channels_last=false|true] [--tiny_conv=false|true] [--steps=6]

Three views of the default preset's step (ResNet18 at 28 px, the ArcFace head, AdamW, EMA, augmentation):
  * phases, timed one after another with a wall clock: data (index + copy), augmentation, forward,
    backward, optimiser, EMA;
  * operation classes from torch.profiler (self time): convolution forward, convolution backward (its
    data and weight halves split in proportion to the table below), batch norm, elementwise, matmul
    (the embedding's and the head's linear layers), optimiser, the rest;
  * every convolution of the network timed alone at the step's shapes: forward, backward-data and
    backward-weight, with the GFLOP/s each reaches against the matrix-product peak of the precision
    (a 2048^3 product measured in the same run).
The table also times each convolution as one matrix product (models/matmul_conv.py, forward and both
gradients) beside the library's three calls, and AdamW's three implementations (a loop per tensor, foreach,
fused) side by side on the same weights. Writes results/bench/profile/<cpu kind>_<precision>_<layout>.json,
naming the CPU, its kind (avx2, avx512, avx512_bf16, amx), the kernel path ATen uses and the thread count.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.train import matmul_peak
from models.matmul_conv import convertible, to_matmul
from trainArcFace import TrainArcFaceParams
from utils.core.config import resolve
from utils.core.device import amp_dtype, autocast
from utils.core.io import write_json
from utils.core.options import Option, refuse_rest, run_script, split
from utils.core.provenance import code_identity, cpu_kind, cpu_model
from utils.data.loading import augmentation_table, dataset_stats, load_idx_dataset
from utils.run.experiment import build_models
from utils.training import tuning
from utils.training.ema import WeightEMA
from utils.training.engine import TrainNet, model_input
from utils.training.fit import make_optimizer

CLASSES = (  # (class, substrings of aten op names), first match wins
    ("conv forward", ("mkldnn_convolution", "_convolution", "conv2d", "convolution")),
    ("conv backward", ("convolution_backward",)),
    ("batch norm", ("batch_norm",)),
    ("matmul (linear layers)", ("addmm", "mm", "linear", "matmul", "bmm")),
    ("optimiser", ("adamw", "_foreach", "_fused")),
    ("augmentation", ("grid_sampler", "affine_grid")),
    ("elementwise", ("relu", "threshold", "add", "mul", "div", "sub", "copy_", "to", "clone", "lerp", "fill",
                     "zero", "sum", "mean", "exp", "log", "norm", "where", "clamp", "sqrt", "cos", "acos", "sin",
                     "softmax", "nll", "cross_entropy", "max", "empty", "cat", "index", "gather", "scatter")),
)


def op_class(name: str) -> str:
    if name.startswith("aten::convolution_backward"):
        return "conv backward"
    for cls, keys in CLASSES:
        if any(k in name for k in keys):
            return cls
    return "other"


def conv_flops(x: torch.Size, conv: nn.Conv2d, out: torch.Size) -> float:
    """Multiply-adds x 2 of one convolution (forward; each backward half costs the same)."""
    kh, kw = conv.kernel_size
    return 2.0 * out[0] * out[1] * out[2] * out[3] * (x[1] // conv.groups) * kh * kw


def _best(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_table(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, channels_last: bool, reps: int) -> list[dict]:
    """Each Conv2d alone at the shapes the step gives it: seconds and GFLOP/s of forward, backward-data and
    backward-weight (aten's convolution_backward with one output at a time)."""
    shapes: list[tuple[str, nn.Conv2d, torch.Size, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.append((n, m, i[0].shape, o.shape)))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x.float())  # shapes only: the fp32 network, whatever the precision timed below
    for h in hooks:
        h.remove()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for name, conv, xs, out_shape in shapes:
        inp = torch.randn(xs, dtype=dtype).contiguous(memory_format=fmt)
        w = conv.weight.detach().to(dtype).contiguous(memory_format=fmt)
        g = torch.randn(out_shape, dtype=dtype).contiguous(memory_format=fmt)
        args = dict(bias_sizes=None, stride=list(conv.stride), padding=list(conv.padding),
                    dilation=list(conv.dilation), transposed=False, output_padding=[0, 0], groups=conv.groups)

        def fwd(inp=inp, w=w, conv=conv) -> None:
            F.conv2d(inp, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

        def bwd(mask: list[bool], g=g, inp=inp, w=w, args=args) -> None:
            torch.ops.aten.convolution_backward(g, inp, w, output_mask=mask, **args)

        def matmul(inp=inp, w=w, conv=conv, g=g) -> None:  # the same convolution as one product, both gradients
            mm = to_matmul(conv)
            xi, wi = inp.detach().requires_grad_(), w.detach().requires_grad_()
            mm.weight = nn.Parameter(wi)
            torch.autograd.grad(mm(xi), (xi, mm.weight), g)

        flops = conv_flops(xs, conv, out_shape)
        row = {"conv": name, "input": list(xs), "output": list(out_shape), "kernel": list(conv.kernel_size),
               "stride": list(conv.stride), "gflop": flops / 1e9}
        for part, fn in (("forward", fwd), ("backward_data", lambda: bwd([True, False, False])),
                         ("backward_weight", lambda: bwd([False, True, False]))):
            s = _best(fn, reps)
            row[f"{part}_ms"], row[f"{part}_gflops"] = s * 1e3, flops / s / 1e9
        if convertible(conv):
            row["matmul_all_ms"] = _best(matmul, reps) * 1e3  # forward + both gradients
            row["library_all_ms"] = row["forward_ms"] + row["backward_data_ms"] + row["backward_weight_ms"]
        rows.append(row)
    return rows


def phases(net: TrainNet, opt: torch.optim.Optimizer, ema: WeightEMA, data: dict, params, steps: int) -> dict:
    """Wall seconds per step of each phase, measured one after another (medians over `steps`)."""
    device, dtype = torch.device("cpu"), amp_dtype(torch.device("cpu"), params.amp)
    x, y, bs = data["train_x"], data["train_y"], params.batch_size
    aug = augmentation_table(len(x), params.seed, 0)
    out: dict[str, list[float]] = defaultdict(list)
    for s in range(steps + 1):
        idx = torch.arange(s * bs, (s + 1) * bs)
        t0 = time.perf_counter()
        model_input(x[idx], params, device, None)
        t1 = time.perf_counter()
        xb = model_input(x[idx], params, device, aug[idx])
        yb = y[idx]
        t2 = time.perf_counter()
        with autocast(device, dtype):
            loss = F.cross_entropy(net(xb, yb), yb)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        ema.update()
        t6 = time.perf_counter()
        if s == 0:
            continue  # warm-up
        for k, v in (("data", t1 - t0), ("augmentation", (t2 - t1) - (t1 - t0)), ("forward", t3 - t2),
                     ("backward", t4 - t3), ("optimiser", t5 - t4), ("ema", t6 - t5)):
            out[k].append(max(v, 0.0))
    return {k: statistics.median(v) for k, v in out.items()}


def op_classes(net: TrainNet, opt: torch.optim.Optimizer, ema: WeightEMA, data: dict, params, steps: int) -> dict:
    """Self CPU seconds per step by operation class, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    device, dtype = torch.device("cpu"), amp_dtype(torch.device("cpu"), params.amp)
    x, y, bs = data["train_x"], data["train_y"], params.batch_size
    aug = augmentation_table(len(x), params.seed, 0)

    def step(s: int) -> None:
        idx = torch.arange(s * bs, (s + 1) * bs)
        xb, yb = model_input(x[idx], params, device, aug[idx]), y[idx]
        with autocast(device, dtype):
            loss = F.cross_entropy(net(xb, yb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update()

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for s in range(1, steps + 1):
            step(s)
    totals: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        if e.key.startswith("aten::") or e.key.startswith("Optimizer"):
            totals[op_class(e.key)] += e.self_cpu_time_total / 1e6 / steps
    return dict(totals)


def optimiser_table(weights: list[torch.Tensor], params, steps: int) -> dict[str, float]:
    """Seconds per AdamW step over the network's weights (gradients set) for each of torch's implementations,
    timed side by side: one Python loop per tensor (torch's CPU default), foreach (grouped) and fused."""
    out = {}
    for name, kw in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        copies = [w.detach().clone().requires_grad_(True) for w in weights]
        for c, w in zip(copies, weights, strict=True):
            c.grad = w.grad.clone() if w.grad is not None else torch.zeros_like(w)
        opt = torch.optim.AdamW(copies, lr=params.lr, weight_decay=params.weight_decay, **kw)
        opt.step()  # warm-up: allocates the moments
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        out[name] = (time.perf_counter() - t0) / steps
    return out


OPTIONS = {"amp": Option("bf16", "precision: bf16 | off (fp32)"),
           "channels_last": Option("false", "NHWC layout: true | false"),
           "tiny_conv": Option("false", "small convolutions as one matrix product (training/tuning.py): true | false"),
           "steps": Option("6", "profiled steps (after one warm-up)", int),
           "batch_size": Option("128", "images per step", int),
           "reps": Option("5", "repetitions per convolution (the fastest counts)", int),
           "out": Option("", "JSON to write (default results/bench/profile/<kind>_<precision>_<layout>.json)")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.profile_step", rest, OPTIONS)
    params = resolve(TrainArcFaceParams(), {"use_tqdm": False, "amp": opts["amp"], "batch_size": opts["batch_size"],
                                            "channels_last": opts["channels_last"], "tiny_conv": opts["tiny_conv"]})
    data = load_idx_dataset(params.data_root, params.dataset_name)
    mean, std = dataset_stats(params.dataset_name, data["train_x"])
    params = dataclasses.replace(params, input_mean=mean, input_std=std)
    device = torch.device("cpu")
    dtype = amp_dtype(device, params.amp) or torch.float32
    nhwc = params.channels_last == "true"
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    layout = ("nhwc" if nhwc else "nchw") + ("_tinymm" if params.tiny_conv == "true" else "")
    peak = matmul_peak(dtype)
    torch.manual_seed(0)
    model, head = build_models(params, device)
    model = tuning.apply(model, params)
    net, opt, ema = TrainNet(model, head), make_optimizer(params, model, head), WeightEMA(model, head, 0.995)
    # a CPU can be made to run another kind's kernels (ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE_BF16, with
    # ATEN_CPU_CAPABILITY=avx2): such a profile is named for the path it ran, beside the CPU it ran on
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    kind = cpu_kind() + (f"-as-{cap.lower()}" if cap else "")
    print(f"{cpu_model()} ({kind}, ATen kernels {torch.backends.cpu.get_cpu_capability()}), "
          f"{torch.get_num_threads()} threads, {precision} {layout}; matmul peak {peak:.0f} GFLOP/s", flush=True)
    ph = phases(net, opt, ema, data, params, opts["steps"])
    step_s = sum(ph.values())
    print(f"step {step_s * 1e3:.0f} ms ({params.batch_size / step_s:.0f} img/s): " +
          ", ".join(f"{k} {v / step_s:.0%}" for k, v in ph.items()), flush=True)
    classes = op_classes(net, opt, ema, data, params, opts["steps"])
    optimisers = optimiser_table([*model.parameters(), *head.parameters()], params, 5 * opts["steps"])
    print("AdamW per step: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in optimisers.items()) +
          f" (fused {optimisers['loop'] / optimisers['fused']:.1f}x faster than the loop, "
          f"{(optimisers['loop'] - optimisers['fused']) / step_s:.0%} of this step)")
    x = model_input(data["train_x"][:params.batch_size], params, device, None).to(dtype)
    convs = conv_table(build_models(params, device)[0], x, dtype, nhwc, opts["reps"])  # the library's convolutions
    bd, bw = (sum(r[f"backward_{k}_ms"] for r in convs) for k in ("data", "weight"))
    back = classes.pop("conv backward", 0.0)
    classes["conv backward-data"], classes["conv backward-weight"] = back * bd / (bd + bw), back * bw / (bd + bw)
    total = sum(classes.values())
    print("op classes (self time): " + ", ".join(f"{k} {v / total:.0%}" for k, v in
                                                 sorted(classes.items(), key=lambda kv: -kv[1])))
    flops = 3 * sum(r["gflop"] for r in convs) * 1e9  # forward + two backward halves of every convolution
    print(f"{'convolution':28s} {'map':>7s} {'fwd':>14s} {'bwd-data':>14s} {'bwd-weight':>14s}   (GFLOP/s, % of peak)")
    for r in convs:
        cells = [f"{r[f'{k}_gflops']:6.0f} {r[f'{k}_gflops'] / peak:5.0%}" for k in
                 ("forward", "backward_data", "backward_weight")]
        mm = f"   matmul {r['library_all_ms'] / r['matmul_all_ms']:4.2f}x" if "matmul_all_ms" in r else ""
        print(f"{r['conv']:28s} {r['input'][2]:>3d}x{r['input'][3]:<3d} " + "  ".join(cells) + mm)
    step_gflops = flops * 1.0 / step_s / 1e9  # convolutions only: the step's other FLOPs are < 2 %
    print(f"the step reaches {step_gflops:.0f} GFLOP/s in its convolutions = {step_gflops / peak:.1%} of the "
          f"{precision} matmul peak")
    out = Path(opts["out"] or f"results/bench/profile/{kind}_{precision}_{layout}.json")
    write_json(out, {"cpu": cpu_model(), "cpu_kind": kind, "kernels": torch.backends.cpu.get_cpu_capability(),
                     "onednn_max_cpu_isa": cap or None,
                     "threads": torch.get_num_threads(), "torch": str(torch.__version__), "precision": precision,
                     "layout": layout, "batch_size": params.batch_size, "commit": code_identity()["git_commit"],
                     "matmul_peak_gflops": peak, "step_seconds": step_s, "images_per_s": params.batch_size / step_s,
                     "phases_seconds": ph, "op_class_seconds": classes,
                     "adamw_seconds": optimisers, "conv_gflop_per_step": flops / 1e9,
                     "fraction_of_peak": step_gflops / peak, "convolutions": convs})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
