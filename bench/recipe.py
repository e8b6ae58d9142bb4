"""Choose a training recipe on validation data: train ArcFace and softmax with one set of overrides,
then score the validation split against the train-split gallery (the test protocol, test set untouched).

    python -m bench.recipe --name=base [--losses=arcface,softmax] [--seeds=0,1] [--field=value ...]
    python -m bench.recipe --summary=true      # table of every candidate measured so far

Each (loss, seed) trains with the given overrides exactly as `python main.py` would (same engine, same
early stopping and best checkpoint), then reports validation 1-NN accuracy, EER and TAR@FAR=1e-3
against the 50k train-split embeddings, the head's validation accuracy and the training time; with
--per_epoch=true (the default) the same scores after every epoch, with the seconds trained so far.
Every file names its commit, machine, precision and layout choice.
Writes results/bench/recipe/<name>_<losses>_s<seeds>.json. Nothing here reads the test images, so its numbers may
choose the defaults; the test numbers in the readme come from `python main.py compare` afterwards.
Several candidates can run side by side on one GPU (one process each); on a 2-core CPU run them
one after another.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from trainArcFace import TrainArcFaceParams
from trainResnet import TrainResnetParams
from utils.core.config import ConfigError, TrainParams, parse_overrides, recorded, resolve
from utils.core.device import resolve_device
from utils.core.io import atomic_write, load_checkpoint, write_json
from utils.core.options import Option, comma_list, file_tag, run_script, split
from utils.core.provenance import code_identity, device_description, machine, precision
from utils.run.experiment import load_weights, prepare_run, quick_debug_params
from utils.scoring.metrics import evaluate_embeddings
from utils.training.ema import WeightEMA
from utils.training.engine import embed
from utils.training.fit import fit

DEFAULTS = {"arcface": TrainArcFaceParams, "softmax": TrainResnetParams}


OPTIONS = {"name": Option("", "tag of the output file (required)"),
           "losses": Option("arcface,softmax", "comma-separated: arcface, softmax"),
           "seeds": Option("0", "comma-separated seeds"),
           "per_epoch": Option("true", "also score validation 1-NN and EER after every epoch", bool)}


def parse_args(argv: list[str]) -> tuple[str, list[str], list[int], dict, bool]:
    opts, rest = split(argv, OPTIONS)
    overrides = parse_overrides(rest)
    name, seeds = file_tag(opts["name"], required=True), comma_list("seeds", opts["seeds"], int)
    losses = comma_list("losses", opts["losses"])
    bad = [x for x in losses if x not in DEFAULTS]
    if bad or not losses:
        raise ConfigError(f"--losses: {bad or 'empty'}; choose from {', '.join(DEFAULTS)}.")
    return name, losses, seeds, overrides, opts["per_epoch"]


def score(model: torch.nn.Module, splits, params: TrainParams, device: torch.device) -> dict:
    """Validation 1-NN, EER and TAR@1e-3 of `model`: validation images against the train-split gallery."""
    query = embed(model, splits.val_x, params, device, line=False)
    gallery = embed(model, splits.train_x, params, device, line=False)
    m = evaluate_embeddings(query, splits.val_y.to(device), gallery, splits.train_y.to(device), bins=params.hist_bins)
    return {"val_acc_1nn": m["acc_1nn"], "val_eer": m["eer"], "val_tar_1e-3": m["tar_at_far"]["1e-03"]}


def train_and_score(params: TrainParams, per_epoch: bool = False) -> dict:
    """Train one model from scratch, then score the best checkpoint on validation vs train gallery.
    per_epoch: also score the weights validation selects from (the EMA when kept) after every epoch."""
    params = quick_debug_params(params)
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    ckpt_dir = Path(params.ckpt_dir) / params.model_name
    ema = WeightEMA(model, head, params.ema_decay) if params.ema_decay > 0 else None
    epochs: list[dict] = []

    def on_epoch(st: dict) -> None:
        if per_epoch:
            h = st["history"][-1]
            epochs.append({"epoch": h["epoch"] + 1, "train_seconds": round(st["train_seconds"], 1),
                           "val_loss": h["val_loss"], **score(ema.model if ema else model, splits, params, device)})
            model.train()
            print(f"  after epoch {h['epoch'] + 1}: val 1-NN {epochs[-1]['val_acc_1nn']:.4%}  "
                  f"EER {epochs[-1]['val_eer']:.4%}", flush=True)

    summary = fit(params, model, head, splits, device, ckpt_dir, on_epoch, ema=ema)  # a line per epoch
    load_weights(model, head, load_checkpoint(ckpt_dir / "best.pt"))
    t0 = time.perf_counter()
    best = score(model, splits, params, device)
    return {**best, "val_acc_head": summary["history"][summary["best_epoch"]]["val_acc"],
            # counted from 0 like metrics.json's; the per-epoch list and the printed line count from 1
            "best_epoch": summary["best_epoch"], "best_epoch_counts_from": 0,
            "epochs_trained": summary["epochs_trained"],
            "train_seconds": round(summary["train_seconds"], 1), "eval_seconds": round(time.perf_counter() - t0, 1),
            "device": device_description(device), "machine": machine(device),
            "precision": precision(device, params.amp), "channels_last": params.channels_last,
            "tiny_conv": params.tiny_conv, "epochs": epochs}


def summary(folder: Path) -> str:
    """One row per (candidate, loss): means over every seed measured, from all files in `folder`."""
    rows: dict[tuple[str, str], list[dict]] = {}
    overrides: dict[str, dict] = {}
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        overrides[d["name"]] = d["overrides"]
        for r in d["runs"]:
            rows.setdefault((d["name"], r["loss"]), []).append(r)
    lines = ["| candidate | overrides | loss | seeds | epochs | precision | val 1-NN % | val EER % | val head acc % "
             "| train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, loss), rs in sorted(rows.items()):
        ov = " ".join(f"--{k}={v}" for k, v in overrides[name].items()) or "(defaults)"
        cells = [f"{statistics.mean(r[k] for r in rs) * 100:.3f}" for k in ("val_acc_1nn", "val_eer", "val_acc_head")]
        kept = ", ".join(sorted({str(r.get("precision") or f"unrecorded, {r.get('device', '?')}") for r in rs}))
        lines.append(f"| {name} | {ov} | {loss} | {len(rs)} | {max(r['epochs_trained'] for r in rs)} | {kept} | "
                     + " | ".join(cells) + f" | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def epochs_table(folder: Path) -> str:
    """Validation 1-NN % / EER % after every epoch, per (candidate, loss, seed) that logged them."""
    rows = []
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        for r in d["runs"]:
            if r.get("epochs"):
                cells = [f"{e['val_acc_1nn'] * 100:.2f} / {e['val_eer'] * 100:.3f}" for e in r["epochs"]]
                rows.append((d["name"], r["loss"], r["seed"], r.get("precision", "?"), cells,
                             r["epochs"][-1]["train_seconds"]))
    if not rows:
        return ""
    n = max(len(c) for *_, c, _ in rows)
    lines = ["| candidate | loss | seed | precision | " + " | ".join(f"epoch {i + 1}" for i in range(n))
             + " | train s |", "|---" * (n + 5) + "|"]
    lines += [f"| {a} | {b} | {c} | {p} | " + " | ".join(cells + [""] * (n - len(cells))) + f" | {t:.0f} |"
              for a, b, c, p, cells, t in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv and argv[0].startswith("--summary"):
        folder = Path("results/bench/recipe")
        table = summary(folder) + "\n\nValidation 1-NN % / EER % after each epoch:\n\n" + epochs_table(folder)
        with atomic_write(folder / "summary.md") as f:
            f.write(table + "\n")
        print(table)
        return
    name, losses, seeds, overrides, per_epoch = parse_args(argv)
    plans = []  # resolve everything first: a bad override fails before any training
    for loss in losses:
        for seed in seeds:
            values = {"use_tqdm": False, **overrides, "seed": seed,
                      "ckpt_dir": str(Path(overrides.get("ckpt_dir", "ckp")) / "recipe" / name)}
            p = resolve(DEFAULTS[loss](), values)
            plans.append(dataclasses.replace(p, model_name=f"{p.model_name}_s{seed}"))
    runs = []
    for p in plans:
        r = train_and_score(p, per_epoch)
        runs.append({"loss": p.loss_fuc_type, "seed": p.seed, **r})
        print(f"[{name}] {p.loss_fuc_type} seed {p.seed}: val 1-NN {r['val_acc_1nn']:.4%}  EER {r['val_eer']:.4%}  "
              f"head {r['val_acc_head']:.4%}  best epoch {r['best_epoch'] + 1} (from 1)  "
              f"train {r['train_seconds']:.0f} s",
              flush=True)
    mean = {loss: {k: statistics.mean(r[k] for r in runs if r["loss"] == loss)
                   for k in ("val_acc_1nn", "val_eer", "val_acc_head", "train_seconds")} for loss in losses}
    tag = f"{name}_{'-'.join(losses)}_s{'-'.join(map(str, seeds))}"
    out = Path(overrides.get("results_dir", "results")) / "bench" / "recipe" / f"{tag}.json"
    # the resolved params too: "defaults" change over time (ArcFace's scale did), overrides alone do not say
    write_json(out, {"name": name, "overrides": overrides, "seeds": seeds, "mean": mean, "runs": runs,
                     "torch": torch.__version__, **code_identity(),
                     "params": {p.loss_fuc_type: recorded(p) for p in plans}})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
