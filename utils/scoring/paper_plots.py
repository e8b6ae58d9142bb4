"""The papers' pictures (matplotlib only, nothing of the project imported): features on the circle and
the sphere, score and angle distributions, failure cases, a 2-D map of the embedding.

Each function takes arrays and returns a Figure; utils/cli/figures.py computes the arrays and saves both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from losses import registry
from utils.scoring.plots import plt

DIGITS = plt.get_cmap("tab10")


def features(panels: Sequence[dict], dim: int, columns: int | None = None) -> Figure:
    """One panel per run: {'title', 'x' [N, dim], 'y' [N], 'weights' [C, dim], 'normalised'}, `columns` a row
    (all in one row by default). Normalised features are drawn on the unit circle / sphere; each class
    weight's direction as a line."""
    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(3.3 * cols, 3.6 * rows))
    for i, p in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1, **({"projection": "3d"} if dim == 3 else {}))
        x, w = np.asarray(p["x"]), np.asarray(p["weights"], dtype=float)
        reach = 1.15 if p["normalised"] else float(np.percentile(np.linalg.norm(x, axis=1), 98)) * 1.1
        ends = w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-12) * reach
        if dim == 2:
            ax.scatter(x[:, 0], x[:, 1], c=p["y"], cmap=DIGITS, vmin=-0.5, vmax=9.5, s=2, alpha=0.6, linewidths=0)
            for c, e in enumerate(ends):
                ax.plot([0, e[0]], [0, e[1]], color=DIGITS(c), lw=1.2)
            ax.set_aspect("equal")
            ax.set_xlim(-reach, reach)
            ax.set_ylim(-reach, reach)
        else:
            ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=p["y"], cmap=DIGITS, vmin=-0.5, vmax=9.5, s=1, alpha=0.5,
                       linewidths=0)
            for c, e in enumerate(ends):
                ax.plot([0, e[0]], [0, e[1]], [0, e[2]], color=DIGITS(c), lw=1.2)
            ax.set_box_aspect((1, 1, 1))
            ax.view_init(elev=20, azim=35)
        ax.set_xticks([])
        ax.set_yticks([])
        if dim == 3:
            ax.set_zticks([])
        ax.set_title(p["title"], fontsize=9)
    fig.tight_layout()
    return fig


def scores(models: Sequence[dict], shown_bins: int = 512) -> Figure:
    """Genuine and impostor cosine-score densities per model (log y), with the EER and FAR = 1e-3 lines.
    Each: {'label', 'loss', 'genuine', 'impostor' (counts over equal bins on [-1, 1]), 'eer_threshold',
    'far_threshold'}; shown summed into `shown_bins` bins."""
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models, strict=True):
        lo, hi = 1.0, -1.0
        for key, color in (("genuine", registry.color(m["loss"])), ("impostor", "grey")):
            counts = np.asarray(m[key], dtype=float).reshape(shown_bins, -1).sum(1)
            edges = np.linspace(-1, 1, shown_bins + 1)
            nz = np.nonzero(counts)[0]
            lo, hi = min(lo, edges[nz[0]]), max(hi, edges[nz[-1] + 1])
            ax.stairs(counts / counts.sum() / (2 / shown_bins), edges, color=color, lw=1.2,
                      label=f"{key} ({int(counts.sum()):,} pairs)")
        ax.axvline(m["eer_threshold"], color="k", lw=0.8, ls=":", label=f"EER threshold {m['eer_threshold']:.3f}")
        ax.axvline(m["far_threshold"], color="grey", lw=0.8, ls="-.",
                   label=f"FAR 1e-3 threshold {m['far_threshold']:.3f}")
        ax.set_yscale("log")
        ax.set_xlim(lo - 0.02, min(1.0, hi + 0.02))
        ax.set_xlabel("cosine score (test x train pairs)")
        ax.set_title(m["label"])
        ax.grid(True, ls="--", alpha=0.4)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    return fig


def angles(models: Sequence[dict]) -> Figure:
    """Per model: histograms of each test embedding's angle to its own class centre and to the nearest
    other centre, in degrees. Each: {'label', 'loss', 'own', 'other'}."""
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False, sharey=True)
    top = max(float(np.percentile(np.concatenate([m["own"], m["other"]]), 99.9)) for m in models)
    edges = np.linspace(0, min(180.0, top * 1.1 + 1), 121)
    for ax, m in zip(axes[0], models, strict=True):
        ax.hist(m["own"], bins=edges, color=registry.color(m["loss"]), alpha=0.8, label="to its own class centre")
        ax.hist(m["other"], bins=edges, color="grey", alpha=0.6, label="to the nearest other centre")
        ax.set_yscale("log")
        ax.set_xlabel("angle (degrees)")
        ax.set_title(m["label"])
        ax.grid(True, ls="--", alpha=0.4)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test images")
    fig.tight_layout()
    return fig


def failures(rows: Sequence[dict], per_row: int = 8) -> Figure:
    """Rows of image pairs: {'title', 'pairs': [(query uint8, gallery uint8, caption), ...]}."""
    fig, axes = plt.subplots(len(rows), 2 * per_row, figsize=(1.05 * 2 * per_row, 1.45 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for k in range(per_row):
            for j in (0, 1):
                ax = axes[r][2 * k + j]
                ax.set_axis_off()
                if k < len(row["pairs"]):
                    q, g, caption = row["pairs"][k]
                    ax.imshow(q if j == 0 else g, cmap="gray", vmin=0, vmax=255)
                    if j == 0:
                        ax.set_title(caption, fontsize=6, loc="left")
        axes[r][0].text(-0.15, 0.5, row["title"], transform=axes[r][0].transAxes, rotation=90, va="center",
                        ha="right", fontsize=7)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.6)
    return fig


def embedding_map(models: Sequence[dict]) -> Figure:
    """A 2-D map per model: {'label', 'xy' [N, 2], 'y' [N]} (t-SNE: qualitative only)."""
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        xy = np.asarray(m["xy"])
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=m["y"], cmap=DIGITS, vmin=-0.5, vmax=9.5, s=2, linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(m["label"])
    fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), shrink=0.8, label="digit")
    return fig


def wild_sheets(columns: Sequence[dict], rows: Sequence[str]) -> Figure:
    """One column per style: {'title', 'images': [one image per row: the sheet (any size, grey or RGB(A)),
    then the network's inputs]}; `rows` names the rows (e.g. sheet, fit, mnist)."""
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.15 * len(columns), 1.25 * len(rows)), squeeze=False)
    for c, col in enumerate(columns):
        for r, im in enumerate(col["images"]):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(im, cmap="gray", vmin=0, vmax=255)
            if r == 0:
                ax.set_title(col["title"], fontsize=6)
            if c == 0:
                ax.set_ylabel(rows[r], fontsize=7)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.2)
    return fig


def paired_differences(rows: Sequence[dict], metrics: Sequence[tuple[str, str]]) -> Figure:
    """One panel per metric (key, axis label), one line per comparison. Each row: {'label', 'seeds',
    metric key: {'per_seed': [..], 'mean', 'ci95': [lo, hi] or None}, optional 'reference': {key: value,
    'label'}}: every seed a dot with its number, the mean a diamond on its 95 % t-interval, zero a line."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.9 + 0.75 * len(rows)), squeeze=False)
    for ax, (key, name) in zip(axes[0], metrics, strict=True):
        ax.axvline(0.0, color="0.6", lw=0.8)
        # the axis spans the seeds, means, zero and the references; an interval much wider (few seeds) runs off it
        xs = [0.0] + [x for r in rows for x in (*r[key]["per_seed"], r[key]["mean"])]
        xs += [r["reference"][key] for r in rows if key in r.get("reference", {})]
        low, high = min(xs), max(xs)
        span = (high - low) or 1.0
        cis = [c for r in rows if (c := r[key]["ci95"]) is not None]
        lo = min([low - 0.15 * span] + [c[0] for c in cis if c[0] > low - span])
        hi = max([high + 0.15 * span] + [c[1] for c in cis if c[1] < high + span])
        ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
        for y, row in enumerate(rows):
            d = row[key]
            ax.scatter(d["per_seed"], [y] * len(d["per_seed"]), s=16, color="0.35", zorder=3)
            for s, x in zip(row["seeds"], d["per_seed"], strict=True):
                ax.annotate(str(s), (x, y), xytext=(0, 5), textcoords="offset points", fontsize=6, ha="center")
            if d["ci95"] is not None:
                ax.plot(d["ci95"], [y, y], color="C3", lw=2.0, zorder=2)
                for edge, mark, off in ((lo, "<", d["ci95"][0] < lo), (hi, ">", d["ci95"][1] > hi)):
                    if off:  # the interval runs off the axis: an arrowhead at its edge
                        ax.scatter([edge], [y], marker=mark, s=30, color="C3", zorder=3, clip_on=False)
            ax.scatter([d["mean"]], [y], marker="D", s=36, color="C3", zorder=4)
            ref = row.get("reference")
            if ref is not None and key in ref:
                ax.scatter([ref[key]], [y], marker="*", s=70, facecolor="none", edgecolor="C0", zorder=4,
                           label=ref["label"])
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows] if ax is axes[0][0] else [], fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(name, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(plt.MaxNLocator(6))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("paired by seed: dots = seeds, diamond = mean, bar = 95 % t-interval (arrow: it runs off the axis)",
                 fontsize=8)
    fig.tight_layout(pad=0.4)
    return fig
