"""Evaluation of a trained model: the original protocol, calibrated thresholds, and what figures need.

Gallery = the training split, queries = the test set (the original protocol): 1-NN accuracy,
the head's accuracy and verification over every pair. The validation split is scored against the
same gallery, and the decision thresholds are chosen there (`metrics.calibrate`), never on test.
One streamed pass per query set also keeps the score histograms (rebinned, for `figures`), the
nearest neighbour of every query and the most extreme genuine/impostor pairs (the failure cases).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from losses import registry
from utils.core.config import TrainParams
from utils.core.distributed import SINGLE, DistContext
from utils.core.io import atomic_write, save_figure, write_csv, write_json
from utils.data.loading import Splits
from utils.scoring import plots
from utils.scoring.metrics import (
    calibrate,
    class_centres,
    evaluate_embeddings,
    far_curve,
    fraction,
    metrics_from_histograms,
    rebin,
    score_statistics,
)
from utils.training.engine import embed

SAVED_BINS = 1 << 16  # histograms kept in eval.npz: 3e-5 wide in cosine, ~0.3 MB per model
EXTREMES = 24  # failure cases kept per kind


def evaluate(params: TrainParams, model: nn.Module, head: nn.Module, splits: Splits, device: torch.device,
             ctx: DistContext = SINGLE) -> dict | None:
    """Every rank embeds its shard of every image set (so every rank joins every collective); rank 0
    scores the pairs and returns {"metrics", "curve", "open_curve", "arrays", "failures", "calibration"}."""
    t0 = time.perf_counter()
    sets = {"gallery": splits.train_x, "queries": splits.test_x, "validation": splits.val_x}
    if splits.open_query_x is not None and len(splits.open_query_x):
        sets.update({"open gallery": splits.open_gallery_x, "open queries": splits.open_query_x})
    emb = {name: embed(model, x, params, device, desc=f"embed {name}", ctx=ctx) for name, x in sets.items()}
    if not ctx.is_main:
        return None
    gallery, gy = emb["gallery"], splits.train_y.to(device)
    head.eval()
    with torch.inference_mode():
        acc_head = fraction(head(emb["queries"]).argmax(1).cpu() == splits.test_y)
    test = score_statistics(emb["queries"], splits.test_y.to(device), gallery, gy, bins=params.hist_bins,
                            extremes=EXTREMES)
    val = score_statistics(emb["validation"], splits.val_y.to(device), gallery, gy, bins=params.hist_bins)
    m = evaluate_from(test, splits.test_y)
    calibration = {"thresholds": calibrate(val["genuine_hist"], val["impostor_hist"], test["genuine_hist"],
                                           test["impostor_hist"]),
                   "far_curve": far_curve(val["genuine_hist"], val["impostor_hist"])}
    n_class = int(splits.train_y.max()) + 1
    out = {"metrics": {**{k: m[k] for k in ("acc_1nn", "eer", "eer_threshold", "tar_at_far", "auc")},
                       "acc_head": acc_head, "val_acc_1nn": fraction(val["nn_labels"].cpu() == splits.val_y),
                       "n_pairs": m["n_genuine"] + m["n_impostor"]},
           "curve": m, "calibration": calibration, "failures": failures(test, splits),
           "sample": emb["queries"][:2000].cpu(),  # for the optional TensorBoard projector
           "arrays": {"test_genuine": rebin(test["genuine_hist"], SAVED_BINS).numpy(),
                      "test_impostor": rebin(test["impostor_hist"], SAVED_BINS).numpy(),
                      "val_genuine": rebin(val["genuine_hist"], SAVED_BINS).numpy(),
                      "val_impostor": rebin(val["impostor_hist"], SAVED_BINS).numpy(),
                      "centre_sums": class_centres(gallery, gy, n_class).cpu().numpy(),
                      "centre_counts": torch.bincount(splits.train_y, minlength=n_class).numpy()}}
    if "open queries" in emb:
        oy = splits.open_gallery_y.to(device)
        o = evaluate_embeddings(emb["open queries"], splits.open_query_y.to(device), emb["open gallery"], oy,
                                bins=params.hist_bins)
        out["open_curve"] = o
        out["metrics"]["open_set"] = {**{k: o[k] for k in ("acc_1nn", "eer", "eer_threshold", "tar_at_far", "auc")},
                                      "n_query": len(splits.open_query_y), "n_gallery": len(oy),
                                      "n_pairs": o["n_genuine"] + o["n_impostor"]}
    out["metrics"]["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def evaluate_from(stats: dict[str, torch.Tensor], labels: torch.Tensor) -> dict:
    """metrics_from_histograms plus the exact 1-NN accuracy of one streamed pass."""
    m = metrics_from_histograms(stats["genuine_hist"], stats["impostor_hist"])
    m["acc_1nn"] = fraction(stats["nn_labels"].cpu() == labels)
    return m


def failures(test: dict[str, torch.Tensor], splits: Splits) -> dict[str, list[dict]]:
    """The test digits 1-NN gets wrong (with their nearest gallery image), the lowest-scoring genuine and
    the highest-scoring impostor pairs. Indices: test set order and training-split order."""
    wrong = torch.nonzero(test["nn_labels"].cpu() != splits.test_y).flatten()
    nn_i, nn_s = test["nn_index"].cpu(), test["nn_score"].cpu()

    def pair(q: int, g: int, score: float) -> dict:
        return {"query": q, "gallery": g, "score": round(score, 6), "query_label": int(splits.test_y[q]),
                "gallery_label": int(splits.train_y[g])}

    return {"misidentified": [pair(int(q), int(nn_i[q]), float(nn_s[q])) for q in wrong],
            "low_genuine": [pair(int(r[1]), int(r[2]), float(r[0])) for r in test["low_genuine"]],
            "high_impostor": [pair(int(r[1]), int(r[2]), float(r[0])) for r in test["high_impostor"]]}


def write_results(out: Path, ev: dict, metrics: dict) -> None:
    """Curves, arrays and failure lists; metrics.json last (its presence marks a finished run)."""
    write_curve(out / "far_frr.csv", ev["curve"])
    if "open_curve" in ev:
        write_curve(out / "far_frr_open.csv", ev["open_curve"])
    with atomic_write(out / "eval.npz", "wb") as f:  # an open file: savez adds no suffix
        np.savez_compressed(f, **ev["arrays"])
    write_json(out / "failures.json", ev["failures"])
    write_json(out / "metrics.json", metrics)


def write_curve(path: Path, m: dict) -> None:
    curve = zip(m["thresholds"], m["far"], m["frr"], strict=True)
    write_csv(path, ["threshold", "far", "frr"], [[f"{t:.7f}", f"{a:.9g}", f"{r:.9g}"] for t, a, r in curve])


def read_curve(path: Path) -> tuple[np.ndarray, np.ndarray]:
    arr = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return arr[:, 1], arr[:, 2]


def draw_det(results_dir: Path) -> list[Path]:
    """Redraw results/DET.png (closed set) and, where models have one, DET_open.png (unknown classes)
    from every published model folder (hidden staging folders are skipped)."""
    drawn = []
    for csv_name, png, key, title in (
            ("far_frr.csv", "DET.png", None, "DET: test vs. train pairs"),
            ("far_frr_open.csv", "DET_open.png", "open_set", "DET, open set: classes unseen in training")):
        curves = []
        for mfile in sorted(results_dir.glob("[!.]*/metrics.json")):
            ff = mfile.parent / csv_name
            if not ff.is_file():
                continue
            met = json.loads(mfile.read_text())
            far, frr = read_curve(ff)
            eer = met[key]["eer"] if key else met["eer"]
            curves.append({"label": mfile.parent.name, "far": far, "frr": frr,
                           "eer": eer, "color": registry.color(met.get("loss_fuc_type", ""))})
        if curves:
            fig = plots.det_figure(curves, title)
            save_figure(fig, results_dir / png)
            plots.close(fig)
            drawn.append(results_dir / png)
    return drawn
