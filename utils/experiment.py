"""One experiment end to end: params -> data -> model -> fit -> evaluate best -> results files.

Both original trainers (`trainArcFaceMain`, `trainResnetSoftmaxMain`) are thin calls of `run`.
Results of model M go to results/M/{params.json, history.csv, loss.png, metrics.json, far_frr.csv}
and results/DET.png is redrawn from every model found under the results folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from losses import build_head
from models import get_model
from utils import distributed, plots
from utils.config import parse_classes
from utils.data import DataError, Splits, dataset_stats, load_dataset, make_splits
from utils.device import resolve_device, seed_everything
from utils.distributed import SINGLE, DistContext
from utils.engine import embed, fit
from utils.io import check_writable, load_checkpoint, save_figure, write_csv, write_json
from utils.metrics import evaluate_embeddings

# params that must agree between a checkpoint and the run that loads it
CKPT_KEYS = ("model_name", "loss_fuc_type", "n_class", "embedding_dim", "stem", "img_size", "pretrained",
             "dataset_name", "known_classes")


def train_classes(params: Any) -> int:
    """Classes the head is trained on: the known ones, or all n_class."""
    return len(parse_classes(params.known_classes)) or params.n_class


def build_models(params: Any, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = get_model(params.backbone_type, params.embedding_dim, params.stem, params.pretrained)
    head = build_head(params.loss_fuc_type, params.embedding_dim, train_classes(params), scale=params.scale,
                      margin=params.margin, m1=params.m1, m2=params.m2, m3=params.m3, subcenters=params.subcenters)
    return model.to(device), head.to(device)


def load_splits(params: Any) -> tuple[Splits, Any]:
    """Load the data set and split it; returns the splits and params with the pixel statistics set."""
    data = load_dataset(params)
    n_found = int(max(data["train_y"].max(), data["test_y"].max())) + 1
    if n_found != params.n_class:
        raise DataError(f"n_class={params.n_class} but {params.dataset_name} has {n_found} classes; "
                        f"set --n_class={n_found}.")
    if params.input_std <= 0:
        mean, std = dataset_stats(params.dataset_name, data["train_x"])
        params = dataclasses.replace(params, input_mean=mean, input_std=std)
    val_size = 256 if params.quick_debug else params.val_size
    if params.dataset_name == "folder":  # small folders: keep 4/5 of the images for training
        val_size = min(val_size, len(data["train_x"]) // 5)
    splits = make_splits(data, val_size, params.split_seed, params.quick_debug, parse_classes(params.known_classes))
    return splits, params


def prepare_run(params: Any, device: torch.device) -> tuple[Splits, Any, torch.nn.Module, torch.nn.Module]:
    """Seed, load and split the data, build model and head: the start every training run shares.

    Returns params with the data set's pixel statistics filled in."""
    seed_everything(params.seed)
    splits, params = load_splits(params)
    model, head = build_models(params, device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return splits, params, model, head


def load_weights(model: torch.nn.Module, head: torch.nn.Module, state: dict, averaged: bool = True) -> None:
    """Put a checkpoint's model and head weights into `model` and `head`: the EMA weights when the
    run kept them and `averaged` (evaluation), else the raw training weights (resuming)."""
    src = state["ema"] if averaged and state.get("ema") is not None else state
    model.load_state_dict(src["model"])
    head.load_state_dict(src["head"])


def quick_debug_params(params: Any) -> Any:
    """quick_debug: one short epoch on a few hundred images, same code path everywhere else."""
    if not params.quick_debug:
        return params
    return dataclasses.replace(params, total_epochs=1, batch_size=min(params.batch_size, 64),
                               img_size=min(params.img_size, 32), pretrained=False,
                               hist_bins=min(params.hist_bins, 1 << 16), eval_batch_size=256)


def paths(params: Any) -> tuple[Path, Path]:
    return Path(params.results_dir) / params.model_name, Path(params.ckpt_dir) / params.model_name


def resume_path(params: Any) -> Path | None:
    if not params.resume:
        return None
    if params.resume == "auto":
        return paths(params)[1] / "last.pt"
    return Path(params.resume)


def write_history(out: Path, params: Any, history: list[dict]) -> None:
    cols = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"]
    write_csv(out / "history.csv", cols, [[h[c] for c in cols] for h in history])
    fig = plots.loss_figure([h["epoch"] for h in history], [h["train_loss"] for h in history],
                            [h["val_loss"] for h in history], f"{params.model_name} ({params.loss_fuc_type})")
    save_figure(fig, out / "loss.png")
    plots.close(fig)


def evaluate(params: Any, model: torch.nn.Module, head: torch.nn.Module, splits: Splits,
             device: torch.device, ctx: DistContext = SINGLE) -> dict | None:
    """Gallery = training split, queries = test set: 1-NN accuracy, head accuracy, verification.

    Every rank embeds its shard; rank 0 scores all pairs and returns the metrics (others: None).
    """
    t0 = time.perf_counter()
    gallery = embed(model, splits.train_x, params, device, desc="embed gallery", ctx=ctx)
    query = embed(model, splits.test_x, params, device, desc="embed queries", ctx=ctx)
    if not ctx.is_main:
        return None
    head.eval()
    with torch.inference_mode():
        acc_head = (head(query).argmax(1).cpu() == splits.test_y).float().mean().item()
    m = evaluate_embeddings(query, splits.test_y.to(device), gallery, splits.train_y.to(device),
                            bins=params.hist_bins)
    m["acc_head"] = acc_head
    if splits.open_query_x is not None and len(splits.open_query_x):
        # open set: classes never seen in training, enrolled from their training-split images
        og = embed(model, splits.open_gallery_x, params, device, desc="embed open gallery", ctx=ctx)
        oq = embed(model, splits.open_query_x, params, device, desc="embed open queries", ctx=ctx)
        m["open"] = evaluate_embeddings(oq, splits.open_query_y.to(device), og, splits.open_gallery_y.to(device),
                                        bins=params.hist_bins)
        m["open"].update(n_query=len(oq), n_gallery=len(og))
    m["eval_seconds"] = time.perf_counter() - t0
    return m


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (platform.processor() is empty on most Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def device_description(device: torch.device, ctx: DistContext = SINGLE) -> str:
    if device.type == "cuda":
        desc = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        desc = f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"
    return desc if not ctx.enabled else f"{ctx.world} x {desc} (DDP)"


def run(params: Any, train: bool = True) -> dict:
    """Train (unless train=False) and evaluate the best checkpoint; returns metrics.json's dict.

    Under torchrun every rank trains and embeds its shard; only rank 0 writes files, and the other
    ranks return {}.
    """
    params = quick_debug_params(params)
    ctx, device_name = distributed.setup(params.device)
    try:
        return _run(params, train, ctx, resolve_device(device_name))
    finally:
        distributed.cleanup()


def _run(params: Any, train: bool, ctx: DistContext, device: torch.device) -> dict:
    out, ckpt_dir = paths(params)
    if ctx.is_main:
        check_writable(out)
        check_writable(ckpt_dir)
    expect = {k: getattr(params, k) for k in CKPT_KEYS}
    resume_state = None
    if train and resume_path(params) is not None:
        resume_state = load_checkpoint(resume_path(params), expect)
    if not train:
        best_state = load_checkpoint(ckpt_dir / "best.pt", expect)  # fail before loading data
    if params.scale_lr and ctx.enabled:
        params = dataclasses.replace(params, lr=params.lr * ctx.world)
    distributed.maybe_fail_for_test(ctx)
    splits, params, model, head = prepare_run(params, device)
    if train:
        steps_log: list[list] = []
        if ctx.is_main:
            write_json(out / "params.json", {**dataclasses.asdict(params), "world_size": ctx.world})
        if resume_state is not None:
            load_weights(model, head, resume_state, averaged=False)
        on_step = (lambda e, s, v: steps_log.append([e, s, f"{v:.8f}"])) if params.log_steps else None
        summary = fit(params, model, head, splits, device, ckpt_dir,
                      lambda hist: write_history(out, params, hist), resume_state, ctx, on_step)
        if steps_log and ctx.is_main:
            write_csv(out / "train_steps.csv", ["epoch", "step", "loss"], steps_log)
        best_state = load_checkpoint(ckpt_dir / "best.pt", expect)
    else:
        last = ckpt_dir / "last.pt"
        src = load_checkpoint(last, expect) if last.is_file() else best_state
        summary = {"best_epoch": best_state["best_epoch"], "epochs_trained": src["epoch"],
                   "train_seconds": src["train_seconds"]}
    load_weights(model, head, best_state)
    m = evaluate(params, model, head, splits, device, ctx)
    if m is None:
        return {}
    metrics = {
        "model_name": params.model_name, "loss_fuc_type": params.loss_fuc_type,
        "acc_1nn": m["acc_1nn"], "acc_head": m["acc_head"], "eer": m["eer"],
        "eer_threshold": m["eer_threshold"], "tar_at_far": m["tar_at_far"], "auc": m["auc"],
        "best_epoch": summary["best_epoch"], "epochs_trained": summary["epochs_trained"],
        "train_seconds": round(summary["train_seconds"], 1), "eval_seconds": round(m["eval_seconds"], 1),
        "device": device_description(device, ctx), "n_query": len(splits.test_y),
        "n_gallery": len(splits.train_y), "n_pairs": m["n_genuine"] + m["n_impostor"],
        "hist_bins": params.hist_bins, "quick_debug": params.quick_debug,
    }
    if "open" in m:
        o = m["open"]
        metrics["known_classes"] = params.known_classes
        metrics["open_set"] = {"acc_1nn": o["acc_1nn"], "eer": o["eer"], "eer_threshold": o["eer_threshold"],
                               "tar_at_far": o["tar_at_far"], "auc": o["auc"], "n_query": o["n_query"],
                               "n_gallery": o["n_gallery"], "n_pairs": o["n_genuine"] + o["n_impostor"]}
        write_curve(out / "far_frr_open.csv", o)
    write_json(out / "metrics.json", metrics)
    write_curve(out / "far_frr.csv", m)
    draw_det(Path(params.results_dir))
    return metrics


def write_curve(path: Path, m: dict) -> None:
    curve = zip(m["thresholds"], m["far"], m["frr"], strict=True)
    write_csv(path, ["threshold", "far", "frr"], [[f"{t:.7f}", f"{a:.9g}", f"{r:.9g}"] for t, a, r in curve])


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arr = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return arr[:, 1], arr[:, 2]


def draw_det(results_dir: Path) -> list[Path]:
    """Redraw results/DET.png (closed set) and, where models have one, DET_open.png (unknown classes)."""
    drawn = []
    for csv_name, png, key, title in (
            ("far_frr.csv", "DET.png", None, "DET: test vs. train pairs"),
            ("far_frr_open.csv", "DET_open.png", "open_set", "DET, open set: classes unseen in training")):
        curves = []
        for mfile in sorted(results_dir.glob("*/metrics.json")):
            ff = mfile.parent / csv_name
            if not ff.is_file():
                continue
            met = json.loads(mfile.read_text())
            far, frr = read_curve(ff)
            eer = met[key]["eer"] if key else met["eer"]
            curves.append({"label": mfile.parent.name, "far": far, "frr": frr,
                           "eer": eer, "color": plots.COLORS.get(met.get("loss_fuc_type", ""))})
        if curves:
            fig = plots.det_figure(curves, title)
            save_figure(fig, results_dir / png)
            plots.close(fig)
            drawn.append(results_dir / png)
    return drawn
