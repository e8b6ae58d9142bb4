"""Training-step benchmark: images/s and achieved FLOP rate against this machine's matmul peak.

    python -m bench.train [--steps=8]
    python -m bench.train --to_accuracy=0.995     # wall time until test 1-NN accuracy >= 99.5 %

Side by side in one run:
  * naive baseline: torchvision's MNIST dataset with per-sample PIL transforms through a
    DataLoader, fp32, NCHW, the default preset's model;
  * the engine's `train_one_epoch` (in-memory uint8 tensors, batched tensor augmentation) for the
    default CPU preset under each lever (bf16 autocast, channels_last, torch.compile) and for the
    `original` preset (128 px, 7x7 stem, fp32; random init and 1-channel input since the weights
    cannot be downloaded here: conv1 is under 1% of the FLOPs);
  * the measured peak of a 2048^3 matrix product in fp32 and bf16.
FLOPs per image come from torch.utils.flop_counter (forward + backward). Writes
results/bench/train.json.

--to_accuracy=T trains the default ArcFace configuration on full MNIST and, every half epoch
(the held schedule; --evals_per_epoch), pauses the clock to compute the test 1-NN accuracy against
the training split (with the EMA weights when the configuration keeps an EMA, as evaluation
would); it reports the training wall time at which the accuracy first reaches T (a benchmark of speed only: nothing
is selected on the test set). --max_minutes=M gives up once an epoch ends past M minutes.
Writes results/bench/time_to_accuracy.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import input_channels
from trainArcFace import TrainArcFaceParams
from utils.core.config import TrainParams, recorded, resolve
from utils.core.device import amp_dtype, cpu_has_native_bf16
from utils.core.io import write_json
from utils.core.options import Option, refuse_rest, run_script, split
from utils.core.provenance import code_identity, cpu_kind, cpu_model
from utils.data.loading import dataset_stats, load_idx_dataset
from utils.run.experiment import build_models
from utils.training import tuning
from utils.training.engine import Stepper, TrainNet, train_one_epoch
from utils.training.fit import make_optimizer, make_scheduler


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096),
                seconds: float = 0.4) -> float:
    """GFLOP/s of the fastest square matrix product of `dtype` here: the best single product over a few sizes,
    each repeated for `seconds` after a warm-up. One short burst of 2048^3 products read 1,392 GFLOP/s in bf16
    on an AMX Xeon in one run and 2,063 in another, below what its convolutions then reached: clocks and AMX
    settle over the first products, and the library's best blocking depends on the size."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            a @ b
            t1 = time.perf_counter()
            best = max(best, 2 * n**3 / (t1 - t0) / 1e9)
            if t1 > end:
                break
    return best


def flops_per_image(params: TrainParams, device: torch.device) -> float:
    model, head = build_models(params, device)
    x = torch.zeros(8, input_channels(params.pretrained), params.img_size, params.img_size)
    y = torch.zeros(8, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(head(model(x), y), y).backward()
    return fc.get_total_flops() / 8


def time_engine(params: TrainParams, data: dict, steps: int, compile_net: bool = False) -> float:
    """images/s of the engine's training loop over `steps` batches (after 2 warm-up batches)."""
    device = torch.device("cpu")
    model, head = build_models(params, device)
    model = tuning.apply(model, params)
    net = TrainNet(model, head)
    if compile_net:
        net = torch.compile(net)
    opt = make_optimizer(params, model, head)
    stepper = Stepper(net, opt, make_scheduler(params, opt, steps))
    x, y = data["train_x"], data["train_y"]
    warm = 2 * params.batch_size
    train_one_epoch(stepper, x[:warm], y[:warm], params, device, 0)
    n = steps * params.batch_size
    t0 = time.perf_counter()
    train_one_epoch(stepper, x[warm:warm + n], y[warm:warm + n], params, device, 1)
    return n / (time.perf_counter() - t0)


def time_naive(params: TrainParams, steps: int) -> float:
    """The textbook pipeline: PIL transforms per sample, DataLoader, fp32, NCHW."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST

    tf = T.Compose([T.RandomAffine(10, (0.1, 0.1), (0.9, 1.1)), T.Resize(params.img_size), T.ToTensor(),
                    T.Normalize((0.1307,), (0.3081,))])
    ds = MNIST(params.data_root, train=True, download=True, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=params.batch_size, shuffle=True, num_workers=0)
    model, head = build_models(params, torch.device("cpu"))
    opt = make_optimizer(params, model, head)
    it = iter(loader)
    t0 = None
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        xb, yb = next(it)
        loss = F.cross_entropy(head(model(xb), yb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * params.batch_size / (time.perf_counter() - t0)


class _Reached(Exception):
    """Raised from the per-epoch hook once the target accuracy is reached: ends `fit` early."""


def time_to_accuracy(target: float, out: str, max_epochs: int | None, max_minutes: float | None = None,
                     overrides: dict | None = None, evals_per_epoch: int = 2) -> None:
    import copy
    import tempfile

    from utils.run.experiment import prepare_run, quick_debug_params
    from utils.scoring.metrics import identification_accuracy
    from utils.training.ema import WeightEMA
    from utils.training.engine import embed
    from utils.training.fit import fit

    params = quick_debug_params(resolve(TrainArcFaceParams(), {"use_tqdm": False, **(overrides or {})}))
    if max_epochs:
        params = dataclasses.replace(params, total_epochs=max_epochs)
    device = torch.device("cpu")
    splits, params, model, head = prepare_run(params, device)
    # what evaluation would score: the engine's EMA (handed to fit, so it is updated once per step), else
    # the raw weights (copied, so that embedding them mid-epoch cannot leave the training model in eval mode)
    ema = WeightEMA(model, head, params.ema_decay) if params.ema_decay > 0 else None
    steps = len(splits.train_x) // params.batch_size
    marks = {round(steps * k / evals_per_epoch) for k in range(1, evals_per_epoch)}  # mid-epoch checks
    log: list[dict] = []
    clock = {"start": 0.0, "paused": 0.0}  # training time = wall time minus the checks below

    def check(epochs_done: float) -> None:
        t = time.perf_counter()
        train_s = t - clock["start"] - clock["paused"]
        scored = ema.model if ema is not None else copy.deepcopy(model)
        gallery = embed(scored, splits.train_x, params, device)
        acc = identification_accuracy(embed(scored, splits.test_x, params, device), splits.test_y,
                                      gallery, splits.train_y)
        log.append({"epochs": epochs_done, "train_seconds": train_s, "acc_1nn": acc})
        print(f"{epochs_done:5.2f} epochs: {train_s:7.1f} s of training, test 1-NN {acc:.4%}", flush=True)
        clock["paused"] += time.perf_counter() - t
        if acc >= target or (max_minutes is not None and train_s > 60 * max_minutes):
            raise _Reached  # reached, or past the time budget: the rest would not change the verdict

    def on_step(epoch: int, step: int, value: float) -> None:
        if step + 1 in marks:
            check(epoch + (step + 1) / steps)

    tmp = Path(tempfile.mkdtemp(prefix="to_accuracy_"))
    try:
        clock["start"] = time.perf_counter()
        with contextlib.suppress(_Reached):
            fit(params, model, head, splits, device, tmp, lambda st: check(st["history"][-1]["epoch"] + 1.0),
                on_step=on_step, ema=ema)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hit = next((r for r in log if r["acc_1nn"] >= target), None)
    msg = (f"reached {target:.2%} after {hit['train_seconds']:.0f} s ({hit['train_seconds'] / 60:.1f} min), "
           f"{hit['epochs']:.2f} epochs" if hit else f"did not reach {target:.2%} in {log[-1]['epochs'] if log else 0}"
           f" epochs ({log[-1]['train_seconds'] / 60 if log else 0:.1f} min)")
    print(msg)
    write_json(Path(out), {"target": target, "threads": torch.get_num_threads(), "reached": hit is not None,
                           "seconds": hit["train_seconds"] if hit else None, "max_minutes": max_minutes,
                           "evals_per_epoch": evals_per_epoch, "log": log, "params": recorded(params)})
    print(f"wrote {out}")


OPTIONS = {"to_accuracy": Option("0", "time the default ArcFace run until test 1-NN accuracy >= this (0: off)",
                                 float),
           "max_epochs": Option("0", "with --to_accuracy: override total_epochs (0: keep)", int),
           "evals_per_epoch": Option("2", "with --to_accuracy: checks per epoch", int),
           "max_minutes": Option("0", "with --to_accuracy: give up after the first epoch past this training time "
                                 "(0: never)", float),
           "steps": Option("8", "timed steps per configuration", int),
           "original_steps": Option("3", "timed steps of the original recipe", int),
           "compile": Option("true", "also time the torch.compile lever", bool),
           "batch_size": Option("128", "images per step (the default preset's)", int),
           "out": Option("", "JSON to write (default results/bench/train.json, or time_to_accuracy.json)")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.train", rest, OPTIONS)
    a = SimpleNamespace(**{k: v or None for k, v in opts.items()})
    if a.to_accuracy:
        return time_to_accuracy(a.to_accuracy, a.out or "results/bench/time_to_accuracy.json", a.max_epochs,
                                a.max_minutes, evals_per_epoch=a.evals_per_epoch)
    out = Path(a.out or "results/bench/train.json")
    base = resolve(TrainArcFaceParams(), {"use_tqdm": False, "batch_size": a.batch_size})
    data = load_idx_dataset(base.data_root, base.dataset_name)
    mean, std = dataset_stats(base.dataset_name, data["train_x"])
    base = dataclasses.replace(base, input_mean=mean, input_std=std)
    device = torch.device("cpu")
    native_bf16 = cpu_has_native_bf16()
    # the bf16 peak only where bf16 is computed natively: emulated (an AVX2 CPU, or the AVX2 kernel path
    # forced) a 2048^3 bf16 product takes minutes and no bf16 row is timed there anyway
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16) if native_bf16 else None
    print(f"{torch.get_num_threads()} threads; matmul peak fp32 {peak32:.0f} GFLOP/s, bf16 "
          f"{f'{peak16:.0f} GFLOP/s' if peak16 else 'not measured'} (native bf16: {native_bf16}); "
          f"default amp resolves to {amp_dtype(device, base.amp)}")

    configs = [("naive: PIL + DataLoader, fp32, NCHW", dataclasses.replace(base, amp="off"), "naive")]
    # bf16 rows only where the CPU computes bf16 natively: emulated bf16 is several times slower than fp32
    amps = ("fp32", "bf16") if native_bf16 else ("fp32",)
    configs += [(f"engine default preset, {amp}, {'NHWC' if cl else 'NCHW'}{', tiny maps as matmul' if tiny else ''}",
                 dataclasses.replace(base, amp="bf16" if amp == "bf16" else "off", channels_last=str(cl).lower(),
                                     tiny_conv=str(tiny).lower()),
                 "engine") for amp in amps for cl in (False, True) for tiny in (False, True)]
    if not native_bf16:
        print("no native bf16 on this CPU: bf16 rows skipped (amp=auto trains in fp32 here)")
    if opts["compile"]:  # inductor fuses batch norm and the elementwise work; tiny-map products stay eager
        configs += [(f"engine default preset, {amp}, NHWC, torch.compile",
                     dataclasses.replace(base, amp="bf16" if amp == "bf16" else "off", channels_last="true",
                                         tiny_conv="false"),
                     "compile") for amp in amps]
    # ImageNet weights cannot be fetched offline: random init, 1-channel stem (conv1 is <1% of the FLOPs)
    orig = resolve(TrainArcFaceParams(), {"preset": "original", "pretrained": False, "use_tqdm": False,
                                          "batch_size": a.batch_size,
                                          "input_mean": mean, "input_std": std, "channels_last": "false",
                                          "tiny_conv": "false"})
    configs.append(("engine original preset (128 px, 7x7 stem, fp32)", orig, "original"))

    rows = []
    baseline = None
    for name, p, kind in configs:
        steps = a.original_steps if kind == "original" else a.steps
        try:
            if kind == "naive":
                ips = time_naive(p, steps)
            else:
                ips = time_engine(p, data, steps, compile_net=kind == "compile")
        except Exception as e:  # torch.compile needs a C++ toolchain; report, do not die
            print(f"{name}: skipped ({type(e).__name__}: {str(e)[:120]})")
            continue
        fpi = flops_per_image(p, device)
        gflops = ips * fpi / 1e9
        peak = peak16 if p.amp == "bf16" else peak32
        baseline = baseline or ips
        rows.append({"config": name, "images_per_s": ips, "speedup_vs_naive": ips / baseline,
                     "gflop_per_image": fpi / 1e9, "gflop_per_s": gflops, "peak_gflop_per_s": peak,
                     "fraction_of_peak": gflops / peak})
        print(f"{name:55s} {ips:8.0f} img/s  x{ips / baseline:5.2f}  {gflops:7.0f} GFLOP/s = {gflops / peak:5.1%} "
              f"of {'bf16' if p.amp == 'bf16' else 'fp32'} peak", flush=True)
    write_json(out, {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "kernel_path": torch.backends.cpu.get_cpu_capability(),
                     "made_by": code_identity(), "batch_size": a.batch_size, "threads": torch.get_num_threads(),
                     "matmul_peak_gflops": {"fp32": peak32, "bf16": peak16},
                             "native_bf16": native_bf16, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
