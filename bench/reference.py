"""Exact references for checking the streamed metrics (tests and benchmarks; memory grows with the pairs)."""

from __future__ import annotations

import numpy as np


def exact_eer(scores: np.ndarray, genuine: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Reference: EER from sklearn's exact ROC over all given scores (memory grows with them).

    Interpolated linearly where FAR - FRR changes sign, as `metrics_from_histograms` does.
    Returns (eer, fpr, tpr). Used by tests and benchmarks to check the streamed version.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(genuine, scores)
    fnr = 1 - tpr
    i = int(np.argmax(fpr >= fnr))
    if i == 0:
        return float(fpr[0]), fpr, tpr
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    return float(fpr[i - 1] + d0 / (d0 - d1) * (fpr[i] - fpr[i - 1])), fpr, tpr
