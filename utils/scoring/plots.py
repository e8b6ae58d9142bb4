"""Figures: DET curves on normal-deviate axes and per-epoch loss curves (matplotlib only).

Nothing of the project is imported; callers pass arrays and get a matplotlib Figure back, which
they save atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers, SSH sessions
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.special import ndtri  # noqa: E402

TICKS = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95]
EPS = 1e-9  # rates of 0 are drawn at this floor (off the axes): the probit of 0 is -inf


def _probit(p: np.ndarray) -> np.ndarray:
    return ndtri(np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS))


def _label(p: float) -> str:
    return f"{p * 100:g}%"


def det_figure(curves: Sequence[dict], title: str = "DET curve") -> Figure:
    """Each curve: {'label' (None: not in the legend), 'far', 'frr', 'eer', optional 'color', 'lw', 'alpha',
    'ls' and 'legend_eer' (False: the label already says the EER)}; FRR against FAR, probit axes.

    The axes span from the smallest non-zero rate any curve reaches (at least 1e-8) up to 50 %,
    or 95 % when some EER is above 20 %.
    """
    fig, ax = plt.subplots(figsize=(6.4, 5.8))
    lo = 1e-4
    seen: dict[str | None, int] = {}  # curves of the same colour (same loss) get other line styles
    for c in curves:
        far, frr = np.asarray(c["far"]), np.asarray(c["frr"])
        for rate in (far, frr):
            nz = rate[rate > 0]
            if len(nz):
                lo = min(lo, float(nz.min()))
        n = seen[c.get("color")] = seen.get(c.get("color"), -1) + 1
        label = None if c["label"] is None else c["label"] + (f" (EER {c['eer'] * 100:.3f}%)"
                                                             if c.get("legend_eer", True) else "")
        ax.plot(_probit(far), _probit(frr), color=c.get("color"), lw=c.get("lw", 1.6), alpha=c.get("alpha", 1.0),
                ls=c.get("ls") or ("-", "--", "-.", ":")[n % 4], label=label)
    lo = max(lo, 1e-8)
    hi = 0.5 if max(c["eer"] for c in curves) < 0.2 else 0.95
    ticks = [t for t in TICKS if lo * 0.5 <= t <= hi]
    pos = _probit(np.array(ticks))
    ax.set_xticks(pos, [_label(t) for t in ticks], rotation=35, ha="right")
    ax.set_yticks(pos, [_label(t) for t in ticks])
    lim = _probit(np.array([lo * 0.5, hi]))
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.plot(lim, lim, ls=":", color="grey", lw=0.8)  # FAR = FRR: the EER line
    ax.set_xlabel("False acceptance rate (FAR)")
    ax.set_ylabel("False rejection rate (FRR)")
    ax.set_title(title)
    ax.grid(True, ls="--", alpha=0.4)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def loss_figure(history: Sequence[dict], title: str) -> Figure:
    """Train and validation loss per epoch (log scale) and, on the right axis, the mean angle between
    validation embeddings and their class centre (a margin pulls it down)."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3, label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", ms=3, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, ls="--", alpha=0.4)
    lines, labels = ax.get_legend_handles_labels()
    if all("val_angle_deg" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["val_angle_deg"] for h in history], color="tab:green", ls="--", marker="s", ms=3,
                 label="val angle to class centre")
        ax2.set_ylabel("degrees")
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, loc="upper right")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
