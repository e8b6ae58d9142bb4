"""Identification and verification metrics on embeddings (pure torch/numpy, no project imports).

The original protocol scores every query against every gallery image by cosine similarity:
10,000 x 50,000 = 5e8 pairs. Holding them (and sklearn's sort of them) needs tens of GiB, so here
the score matrix is produced one query chunk at a time and folded into
  * the 1-nearest-neighbour label of each query (identification), and
  * two histograms of scores, genuine (same label) and impostor, with `bins` equal bins on
    [-1, 1] (verification).
With the default 2**20 bins a bin is 1.9e-6 wide in cosine; FAR/FRR are exact at every bin
edge, and the EER is interpolated linearly between the two edges where FAR - FRR changes sign,
so it differs from the exact (all-scores) EER only by the pairs that fall inside that one bin.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FAR_TARGETS = (1e-2, 1e-3, 1e-4, 1e-5)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.no_grad()
def score_statistics(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                     gallery_labels: torch.Tensor, bins: int = 1 << 20, chunk: int = 1024,
                     identification: bool = True, verification: bool = True) -> dict[str, torch.Tensor]:
    """One streamed pass over all query x gallery cosine scores.

    Returns `nn_labels` (label of each query's nearest gallery item) and/or `genuine_hist`,
    `impostor_hist` (int64 counts per bin). Memory: two [chunk, n_gallery] buffers (float32 and
    int32), reused for every chunk.

    Cost per score, next to the matrix product itself: one add, one float->int32 copy and one
    bincount. The product is computed directly in bin units (queries pre-scaled by bins/2), and
    both sides are sorted by label so a query's genuine pairs are one contiguous column block:
    marking them touches 1/n_class of the scores instead of building a mask.
    """
    dev = query.device
    q_order = torch.argsort(query_labels.to(dev), stable=True)
    g_order = torch.argsort(gallery_labels.to(gallery.device), stable=True)
    half = bins / 2.0
    q = F.normalize(query.float(), dim=1)[q_order] * half
    g = F.normalize(gallery.float(), dim=1)[g_order]
    ql, gl = query_labels.to(dev)[q_order], gallery_labels.to(dev)[g_order]
    classes, counts = torch.unique_consecutive(gl, return_counts=True)
    ends = torch.cumsum(counts, 0)
    block = {int(c): (int(e - n), int(e)) for c, n, e in zip(classes, counts, ends, strict=True)}
    n, m = len(q), len(g)
    size = min(chunk, n)
    scores = torch.empty(size, m, device=dev)
    index = torch.empty(size, m, dtype=torch.int32, device=dev)
    hist = torch.zeros(2 * (bins + 1), dtype=torch.int64, device=dev)  # +1: a score of exactly 1
    nn_sorted = torch.empty_like(ql)
    gt = g.T
    for a, b in _chunks(n, size):
        s = torch.mm(q[a:b], gt, out=scores[: b - a])
        if identification:
            nn_sorted[a:b] = gl[s.argmax(dim=1)]
        if verification:
            idx = index[: b - a]
            idx.copy_(s.add_(half))  # float -> int truncates; scores >= -1 give indices >= 0
            labels, starts = torch.unique_consecutive(ql[a:b], return_counts=True)
            r0 = 0
            for lab, cnt in zip(labels.tolist(), starts.tolist(), strict=True):
                if lab in block:
                    c0, c1 = block[lab]
                    idx[r0:r0 + cnt, c0:c1] += bins + 1  # genuine pairs count in the upper half
                r0 += cnt
            hist += torch.bincount(idx.view(-1), minlength=2 * (bins + 1))
    out: dict[str, torch.Tensor] = {}
    if identification:
        nn_labels = torch.empty_like(nn_sorted)
        nn_labels[q_order] = nn_sorted
        out["nn_labels"] = nn_labels
    if verification:
        h = hist.view(2, bins + 1).cpu()
        h[:, bins - 1] += h[:, bins]  # fold score == 1 into the top bin
        out["impostor_hist"], out["genuine_hist"] = h[0, :bins].clone(), h[1, :bins].clone()
    return out


def identification_accuracy(query_emb: torch.Tensor, query_labels: torch.Tensor,
                            gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                            chunk: int = 1024) -> float:
    """1-NN by cosine: fraction of queries whose most similar gallery item has the same label."""
    st = score_statistics(query_emb, query_labels, gallery_emb, gallery_labels, chunk=chunk,
                          verification=False)
    return float((st["nn_labels"] == query_labels.to(st["nn_labels"].device)).float().mean())


def rates_from_histograms(genuine_hist: torch.Tensor, impostor_hist: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR and FRR at every bin edge t_k = -1 + 2k/bins (accept when score >= t_k), k = 0..bins."""
    gen = genuine_hist.double().numpy()
    imp = impostor_hist.double().numpy()
    bins = len(gen)
    n_gen, n_imp = gen.sum(), imp.sum()
    if n_gen == 0 or n_imp == 0:
        raise ValueError("verification needs both genuine and impostor pairs")
    frr = np.concatenate([[0.0], np.cumsum(gen)]) / n_gen  # scores below t_k are rejected
    far = 1.0 - np.concatenate([[0.0], np.cumsum(imp)]) / n_imp
    far = np.clip(far, 0.0, 1.0)
    thresholds = -1.0 + 2.0 * np.arange(bins + 1) / bins
    return far, frr, thresholds


def _thin_curve(far: np.ndarray, frr: np.ndarray, points: int = 1500) -> np.ndarray:
    """Indices of a DET curve worth keeping: log-spaced in FAR and in FRR, plus the ends."""
    keep = {0, len(far) - 1}
    for rate, decreasing in ((far, True), (frr, False)):
        levels = np.logspace(-8, 0, points)
        seq = -rate if decreasing else rate  # make it non-decreasing for searchsorted
        targets = -levels if decreasing else levels
        keep.update(np.clip(np.searchsorted(seq, targets), 0, len(far) - 1).tolist())
    return np.array(sorted(keep))


def metrics_from_histograms(genuine_hist: torch.Tensor, impostor_hist: torch.Tensor,
                            far_targets: tuple[float, ...] = FAR_TARGETS) -> dict:
    far, frr, thr = rates_from_histograms(genuine_hist, impostor_hist)
    diff = far - frr  # non-increasing from +1 to -1
    k = int(np.argmax(diff <= 0))  # first edge where FRR >= FAR
    if k == 0:
        eer, eer_t = float(far[0]), float(thr[0])
    else:
        d0, d1 = diff[k - 1], diff[k]
        w = d0 / (d0 - d1) if d0 != d1 else 0.0
        eer = float(far[k - 1] + w * (far[k] - far[k - 1]))
        eer_t = float(thr[k - 1] + w * (thr[k] - thr[k - 1]))
    tar = {}
    for f in far_targets:
        j = int(np.argmax(far <= f))  # lowest threshold whose FAR is within the target
        tar[f"{f:.0e}"] = float(1.0 - frr[j])
    tpr = 1.0 - frr
    auc = float(np.trapezoid(tpr[::-1], far[::-1]))
    keep = _thin_curve(far, frr)
    return {"eer": eer, "eer_threshold": eer_t, "tar_at_far": tar, "auc": auc,
            "far": far[keep], "frr": frr[keep], "thresholds": thr[keep],
            "n_genuine": int(genuine_hist.sum()), "n_impostor": int(impostor_hist.sum())}


def verification_metrics(query_emb: torch.Tensor, query_labels: torch.Tensor,
                         gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                         bins: int = 1 << 20, chunk: int = 1024) -> dict:
    """EER, its threshold, TAR at FAR 1e-2..1e-5, ROC AUC and a thinned FAR/FRR curve over ALL
    query x gallery pairs (genuine when labels match), streamed through score histograms."""
    st = score_statistics(query_emb, query_labels, gallery_emb, gallery_labels, bins=bins,
                          chunk=chunk, identification=False)
    return metrics_from_histograms(st["genuine_hist"], st["impostor_hist"])


def evaluate_embeddings(query_emb: torch.Tensor, query_labels: torch.Tensor,
                        gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                        bins: int = 1 << 20, chunk: int = 1024) -> dict:
    """Identification and verification from one shared pass over the score matrix."""
    st = score_statistics(query_emb, query_labels, gallery_emb, gallery_labels, bins=bins, chunk=chunk)
    out = metrics_from_histograms(st["genuine_hist"], st["impostor_hist"])
    out["acc_1nn"] = float((st["nn_labels"] == query_labels.to(st["nn_labels"].device)).float().mean())
    return out


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
