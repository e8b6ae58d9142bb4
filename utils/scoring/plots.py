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
    """One style for every tick: a percentage written out (0.0001%, 0.1%, 20%), never 1e-06%."""
    return np.format_float_positional(p * 100, trim="-") + "%"


def det_figure(curves: Sequence[dict], title: str = "DET curve") -> Figure:
    """Each curve: {'label' (None: not in the legend), 'far', 'frr', 'eer', optional 'color', 'lw', 'alpha',
    'ls' and 'legend_eer' (False: the label already says the EER)}; FRR against FAR, probit axes.

    Each axis spans from the smallest non-zero rate a curve reaches inside the other axis's range (at
    least 1e-8; no empty decades) up to 50 %, or 95 % when some EER is above 20 %. The legend sits below
    the axes, where it covers no curve.
    """
    fig, ax = plt.subplots(figsize=(6.4, 6.6))
    hi = 0.5 if max(c["eer"] for c in curves) < 0.2 else 0.95
    lo_x = lo_y = 1e-3
    seen: dict[str | None, int] = {}  # curves of the same colour (same loss) get other line styles
    for c in curves:
        far, frr = np.asarray(c["far"]), np.asarray(c["frr"])
        shown_x, shown_y = far[(far > 0) & (frr <= hi)], frr[(frr > 0) & (far <= hi)]
        lo_x = min(lo_x, float(shown_x.min())) if len(shown_x) else lo_x
        lo_y = min(lo_y, float(shown_y.min())) if len(shown_y) else lo_y
        n = seen[c.get("color")] = seen.get(c.get("color"), -1) + 1
        label = None if c["label"] is None else c["label"] + (f" (EER {c['eer'] * 100:.3f}%)"
                                                             if c.get("legend_eer", True) else "")
        ax.plot(_probit(far), _probit(frr), color=c.get("color"), lw=c.get("lw", 1.6), alpha=c.get("alpha", 1.0),
                ls=c.get("ls") or ("-", "--", "-.", ":")[n % 4], label=label)
    for lo, set_ticks, set_lim in ((max(lo_x, 1e-8), ax.set_xticks, ax.set_xlim),
                                   (max(lo_y, 1e-8), ax.set_yticks, ax.set_ylim)):
        ticks = [t for t in TICKS if lo * 0.5 <= t <= hi]
        set_ticks(_probit(np.array(ticks)), [_label(t) for t in ticks])
        set_lim(*_probit(np.array([lo * 0.5, hi])))
    ax.tick_params(axis="x", labelrotation=35)
    lim = _probit(np.array([min(lo_x, lo_y) * 0.5, hi]))
    ax.plot(lim, lim, ls=":", color="grey", lw=0.8)  # FAR = FRR: the EER line
    ax.set_xlabel("False acceptance rate (FAR)")
    ax.set_ylabel("False rejection rate (FRR)")
    ax.set_title(title)
    ax.grid(True, ls="--", alpha=0.4)
    if any(c["label"] is not None for c in curves):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False)
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
