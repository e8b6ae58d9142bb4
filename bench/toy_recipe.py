"""Candidate recipes for the toy figures (issue 27), measured on the validation split only.

    python -m bench.toy_recipe [--losses=softmax,arcface] [--dims=2] [--epochs=4] [--widths=16]
                               [--lrs=3e-3] [--batch_sizes=256] [--arcface=10:0.2,16:0.3] [--cosface=...]
                               [--sphereface=...] [--normface=10,16] [--out=results/bench/toy_recipe.json]

Each candidate trains the toy network (models/toy.py) with the project's engine on the full 50,000-image
train split (the figures' TOY_FIT: cosine schedule, AdamW, no augmentation, no EMA, fp32) with the
learning rate, batch size, width, scale and margin under test and records the validation accuracy of its
head after every epoch, the seconds and images per second, and the CPU kernel path, so that a recipe can
be chosen within the toy figures' time budget. Results are added to --out (one entry per candidate).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from models.toy import ToyNet
from utils.core.config import TrainParams, resolve
from utils.core.device import resolve_device
from utils.core.errors import ConfigError
from utils.core.io import write_json
from utils.core.options import Option, comma_list, run_script, split
from utils.core.presets import TOY_FIT
from utils.core.provenance import FORCED_AVX2, code_identity, machine
from utils.run.experiment import prepare_run
from utils.training.fit import fit

OPTIONS = {"losses": Option("softmax,arcface", "heads to try"), "dims": Option("2", "feature dimensions"),
           "epochs": Option("4", "epochs per candidate", int), "widths": Option("16", "first-stage channels"),
           "lrs": Option("3e-3", "peak learning rates"), "batch_sizes": Option("256", "batch sizes"),
           "arcface": Option("10:0.2", "scale:margin pairs"), "cosface": Option("10:0.1", "scale:margin pairs"),
           "sphereface": Option("10:2", "scale:margin pairs"), "normface": Option("10", "scales"),
           "train_images": Option("50000", "training images used (the first N of the train split)", int),
           "avx2": Option("false", "also time each candidate on this CPU's AVX2 kernels (a subprocess) and "
                           "print the ratio", bool),
           "out": Option("results/bench/toy_recipe.json", "where the measurements are added")}


def head_settings(loss: str, opts: dict) -> list[dict]:
    if loss == "softmax":
        return [{}]
    if loss == "normface":
        return [{"scale": float(s)} for s in comma_list("normface", opts["normface"])]
    return [{"scale": float(sm.split(":")[0]), "margin": float(sm.split(":")[1])}
            for sm in comma_list(loss, opts[loss])]


def one(loss: str, dim: int, width: int, lr: float, batch: int, epochs: int, head: dict, n_train: int) -> dict:
    params = resolve(TrainParams(), {**TOY_FIT, "loss_fuc_type": loss, "embedding_dim": dim, "lr": lr,
                                     "batch_size": batch, "total_epochs": epochs, "early_stop_epochs": epochs,
                                     "use_tqdm": False, "model_name": f"toy_{loss}_{dim}d", **head})
    device = resolve_device(params.device)
    splits, params, _, head_module = prepare_run(params, device)
    splits = dataclasses.replace(splits, train_x=splits.train_x[:n_train], train_y=splits.train_y[:n_train])
    model = ToyNet(dim, width=width).to(device)  # the width under test (get_model("toy") builds the default)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        history = fit(params, model, head_module, splits, device, Path(tmp), lambda st: None)["history"]
    seconds = time.perf_counter() - t0
    return {"loss": loss, "dim": dim, "width": width, "lr": lr, "batch_size": batch, "epochs": epochs, **head,
            "val_acc": [round(h["val_acc"], 4) for h in history], "seconds": round(seconds, 1),
            "train_images_per_s": round(epochs * len(splits.train_x) / seconds),
            "kernels": machine(device)["kernels"], "made_by": code_identity()["git_commit"]}


def on_avx2_kernels(r: dict, train_images: int) -> dict:
    """The same candidate again in a subprocess that runs AVX2 kernels: its seconds and the slowdown."""
    head = f"{r['scale']:g}" + (f":{r['margin']:g}" if "margin" in r else "") if "scale" in r else ""
    with tempfile.TemporaryDirectory() as tmp:
        args = [f"--losses={r['loss']}", f"--dims={r['dim']}", f"--widths={r['width']}", f"--lrs={r['lr']}",
                f"--batch_sizes={r['batch_size']}", f"--epochs={r['epochs']}", f"--train_images={train_images}",
                *([f"--{r['loss']}={head}"] if head else []), f"--out={Path(tmp) / 'avx2.json'}"]
        subprocess.run([sys.executable, "-m", "bench.toy_recipe", *args], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, **FORCED_AVX2}, cwd=Path(__file__).resolve().parents[1])
        other = json.loads((Path(tmp) / "avx2.json").read_text())["candidates"][0]
    return {"seconds_on": {r["kernels"]: r["seconds"], other["kernels"]: other["seconds"]},
            "slowdown_on_avx2_kernels": round(other["seconds"] / r["seconds"], 2)}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    if rest:
        raise ConfigError(f"unknown option {rest[0]} (python -m bench.toy_recipe --help lists them).")
    if opts["epochs"] < 1 or opts["train_images"] < 1:
        raise ConfigError("--epochs and --train_images must be >= 1.")
    out = Path(opts["out"])
    report = json.loads(out.read_text()) if out.is_file() else {"candidates": []}
    report["machine"] = machine(torch.device("cpu"))
    for loss in comma_list("losses", opts["losses"]):
        for dim in comma_list("dims", opts["dims"], int):
            for width in comma_list("widths", opts["widths"], int):
                for lr in comma_list("lrs", opts["lrs"], float):
                    for batch in comma_list("batch_sizes", opts["batch_sizes"], int):
                        for head in head_settings(loss, opts):
                            r = one(loss, dim, width, lr, batch, opts["epochs"], head, opts["train_images"])
                            if opts["avx2"] and r["kernels"] != "avx2":
                                r |= on_avx2_kernels(r, opts["train_images"])
                            print(json.dumps(r), flush=True)
                            report["candidates"].append(r)
                            write_json(out, report)


if __name__ == "__main__":
    run_script(main, OPTIONS)
