"""Identification and verification metrics on embeddings (torch/numpy; the CPU's counting in histogram.py).

The original protocol scores every query against every gallery image by cosine similarity:
10,000 x 50,000 = 5e8 pairs. Holding them (and sklearn's sort of them) needs tens of GiB, so here
the score matrix is produced one query chunk at a time and folded into
  * the 1-nearest-neighbour label of each query (identification), and
  * two histograms of scores, genuine (same label) and impostor, with `bins` equal bins on
    [-1, 1] (verification).
With the default 2**20 bins a bin is 1.9e-6 wide in cosine; FAR/FRR are exact at every bin
edge, and the EER is interpolated linearly between the two edges where FAR - FRR changes sign,
so it differs from the exact (all-scores) EER only by the pairs that fall inside that one bin.
Exact means: each float32 score s lands in bin floor((s + 1) * bins / 2), clamped to [0, bins - 1].
bins is a power of two, so the scaling by bins / 2 is exact in float32, floor() of a float is
exact, and the integer it gives (|x| <= 2**23) is exact too; adding bins / 2 happens in integers.
On a CPU one compiled pass per score does all of it (histogram.py); on CUDA torch's kernels do
(`count_torch`); both give the same bins, which the tests check against each other.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FAR_TARGETS = (1e-2, 1e-3, 1e-4, 1e-5)


def count_torch(s: torch.Tensor, idx: torch.Tensor, genuine: list[tuple[int, int, int, int]], bins: int,
                hist: torch.Tensor) -> None:
    """hist += the bins of scores `s` (in bin units; floored in place), genuine blocks (first row, rows,
    first column, end column) counted in the upper half; `idx` is an int32 buffer of s's shape."""
    idx.copy_(s.floor_())  # exact: floor of a float, then an integer of at most 2**23
    # + bins/2 in integers; float32 rounding can put |s| a hair above 1: clamp into the range
    idx.add_(bins // 2).clamp_(0, bins)
    for r0, cnt, c0, c1 in genuine:
        idx[r0:r0 + cnt, c0:c1] += bins + 1  # genuine pairs count in the upper half
    hist += torch.bincount(idx.view(-1), minlength=2 * (bins + 1))


class TorchCounter:
    """histogram.ChunkCounter's interface on torch's kernels (`count_torch`), for CUDA: chunks of at most
    `rows` x `cols` scores counted on `device`."""

    def __init__(self, bins: int, rows: int, cols: int, device: torch.device) -> None:
        self.bins = bins
        self.index = torch.empty(rows, cols, dtype=torch.int32, device=device)
        self.hist = torch.zeros(2 * (bins + 1), dtype=torch.int64, device=device)  # +1: a score of exactly 1

    def add(self, scores: torch.Tensor, genuine: list[tuple[int, int, int, int]],
            nearest: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if nearest is not None:  # before counting, which floors the scores in place
            torch.max(scores, dim=1, out=nearest)
        count_torch(scores, self.index[: len(scores)], genuine, self.bins, self.hist)

    def result(self) -> torch.Tensor:
        return self.hist.cpu()


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.no_grad()
def score_statistics(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                     gallery_labels: torch.Tensor, bins: int = 1 << 20, chunk: int = 1024,
                     identification: bool = True, verification: bool = True,
                     extremes: int = 0) -> dict[str, torch.Tensor]:
    """One streamed pass over all query x gallery cosine scores.

    Returns `nn_labels`, `nn_index`, `nn_score` (the nearest gallery item of each query: its label,
    index and cosine) and/or `genuine_hist`, `impostor_hist` (int64 counts per bin). With
    `extremes` = k > 0 also `low_genuine` and `high_impostor`: the k lowest-scoring genuine and the
    k highest-scoring impostor pairs as rows (cosine, query index, gallery index), kept per chunk
    and merged, so the failures need no second pass. Memory: one [chunk, n_gallery] float32 buffer
    of scores (on CUDA an int32 one beside it), reused for every chunk.

    Cost per score, next to the matrix product itself: one read on a CPU (histogram.py: binned, counted and,
    for 1-NN, its row's maximum found in one compiled pass per thread); on CUDA a row maximum, a floor, a
    float->int32 copy, a clamp and one bincount. The product is computed directly in bin units (queries
    pre-scaled by bins/2, exact for a power of two), and both sides are sorted by label so a query's genuine pairs
    are one contiguous column block: marking them touches 1/n_class of the scores instead of building a mask.
    """
    if bins & (bins - 1) or bins < 2:
        raise ValueError(f"bins must be a power of two, got {bins}")
    dev = query.device
    q_order = torch.argsort(query_labels.to(dev), stable=True)
    g_order = torch.argsort(gallery_labels.to(gallery.device), stable=True).to(dev)
    half = bins / 2.0
    q = F.normalize(query.float(), dim=1)[q_order] * half
    g = F.normalize(gallery.float().to(dev), dim=1)[g_order]
    ql, gl = query_labels.to(dev)[q_order], gallery_labels.to(dev)[g_order]
    classes, counts = torch.unique_consecutive(gl, return_counts=True)
    ends = torch.cumsum(counts, 0)
    block = {int(c): (int(e - n), int(e)) for c, n, e in zip(classes, counts, ends, strict=True)}
    n, m = len(q), len(g)
    size = min(chunk, n)
    scores = torch.empty(size, m, device=dev)
    if not verification:
        counter = None
    elif dev.type == "cpu":
        from utils.scoring.histogram import ChunkCounter  # numba loads only where a histogram is counted
        counter = ChunkCounter(bins, size, m)
    else:
        counter = TorchCounter(bins, size, m, dev)
    nn_score, nn_index = torch.empty(n, device=dev), torch.empty(n, dtype=torch.long, device=dev)
    found: dict[str, list[torch.Tensor]] = {"low_genuine": [], "high_impostor": []}
    gt = g.T
    # the CPU's compiled pass bins a NaN score as the lowest, torch.max makes it the maximum: it finds the
    # neighbours only when no embedding holds NaN or inf (one sum tells: the unit rows cannot overflow it)
    fused = identification and counter is not None and (dev.type != "cpu" or bool(torch.isfinite(q.sum() + g.sum())))
    for a, b in _chunks(n, size):
        s = torch.mm(q[a:b], gt, out=scores[: b - a])
        nearest = (nn_score[a:b], nn_index[a:b]) if identification else None
        if nearest is not None and not fused:
            torch.max(s, dim=1, out=nearest)
            nearest = None
        groups = _label_groups(ql[a:b], block)
        if extremes:
            for r0, cnt, c0, c1 in groups:
                rows = s[r0:r0 + cnt]
                _keep(found["low_genuine"], rows[:, c0:c1], extremes, largest=False, row0=a + r0, col0=c0)
                _keep(found["high_impostor"], rows[:, :c0], extremes, largest=True, row0=a + r0, col0=0)
                _keep(found["high_impostor"], rows[:, c1:], extremes, largest=True, row0=a + r0, col0=c1)
        if counter is not None:
            counter.add(s, groups, nearest)  # with the row maxima when 1-NN is asked for
    out: dict[str, torch.Tensor] = {}
    if identification:
        unsort = torch.empty_like(q_order)
        unsort[q_order] = torch.arange(n, device=dev)
        out["nn_index"] = g_order[nn_index][unsort]
        out["nn_labels"] = gl[nn_index][unsort]
        out["nn_score"] = (nn_score / half)[unsort]
    if verification:
        h = counter.result().view(2, bins + 1)
        h[:, bins - 1] += h[:, bins]  # fold score == 1 into the top bin
        out["impostor_hist"], out["genuine_hist"] = h[0, :bins].clone(), h[1, :bins].clone()
    if extremes:
        out.update({key: _merge_extremes(parts, key == "high_impostor", extremes, half, q_order, g_order)
                    for key, parts in found.items()})
    return out


def _label_groups(chunk_labels: torch.Tensor, block: dict[int, tuple[int, int]]) -> list[tuple[int, ...]]:
    """(first row, rows, first genuine column, end column) of each query label in a label-sorted chunk."""
    groups, r0 = [], 0
    labels, cnts = torch.unique_consecutive(chunk_labels, return_counts=True)
    for lab, cnt in zip(labels.tolist(), cnts.tolist(), strict=True):
        groups.append((r0, cnt, *block.get(lab, (0, 0))))
        r0 += cnt
    return groups


def _merge_extremes(parts: list[torch.Tensor], largest: bool, k: int, half: float, q_order: torch.Tensor,
                    g_order: torch.Tensor) -> torch.Tensor:
    """The k most extreme rows (cosine, query index, gallery index) of all chunks, in original indices."""
    rows = torch.cat(parts) if parts else torch.empty(0, 3, dtype=torch.float64)
    rows = rows[torch.argsort(rows[:, 0], descending=largest, stable=True)][:k]
    rows[:, 0] /= half
    rows[:, 1] = q_order.cpu()[rows[:, 1].long()].double()
    rows[:, 2] = g_order.cpu()[rows[:, 2].long()].double()
    return rows


def _keep(parts: list[torch.Tensor], block: torch.Tensor, k: int, largest: bool, row0: int, col0: int) -> None:
    """Append the k most extreme entries of `block` as rows (score, row, column) in sorted coordinates."""
    if block.numel() == 0:
        return
    vals, flat = torch.topk(block.reshape(-1), min(k, block.numel()), largest=largest)
    r, c = flat // block.shape[1], flat % block.shape[1]
    parts.append(torch.stack([vals.double(), (r + row0).double(), (c + col0).double()], 1).cpu())
    if len(parts) > 64:  # merge as we go: memory stays O(k)
        rows = torch.cat(parts)
        parts[:] = [rows[torch.argsort(rows[:, 0], descending=largest, stable=True)][:k]]


def class_centres(emb: torch.Tensor, y: torch.Tensor, n_class: int) -> torch.Tensor:
    """Sum of the unit embeddings of each class [n_class, D] (normalise it for the centre direction)."""
    return torch.zeros(n_class, emb.shape[1], device=emb.device).index_add_(0, y, F.normalize(emb, dim=1))


def identification_accuracy(query_emb: torch.Tensor, query_labels: torch.Tensor,
                            gallery_emb: torch.Tensor, gallery_labels: torch.Tensor,
                            chunk: int = 1024) -> float:
    """1-NN by cosine: fraction of queries whose most similar gallery item has the same label."""
    st = score_statistics(query_emb, query_labels, gallery_emb, gallery_labels, chunk=chunk,
                          verification=False)
    return fraction(st["nn_labels"] == query_labels.to(st["nn_labels"].device))


def fraction(hits: torch.Tensor) -> float:
    """count / total as the correctly rounded double (9953 of 10000 -> 0.9953, not a float32 mean)."""
    return int(hits.sum()) / hits.numel()


def rates_from_histograms(genuine_hist: torch.Tensor, impostor_hist: torch.Tensor
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR and FRR at every bin edge t_k = -1 + 2k/bins (accept when score >= t_k), k = 0..bins."""
    gen = genuine_hist.long().numpy()
    imp = impostor_hist.long().numpy()
    bins = len(gen)
    n_gen, n_imp = int(gen.sum()), int(imp.sum())
    if n_gen == 0 or n_imp == 0:
        raise ValueError("verification needs both genuine and impostor pairs")
    # counts first, one division each: every rate is the correctly rounded fraction of its counts
    frr = np.concatenate([[0], np.cumsum(gen)]) / n_gen  # scores below t_k are rejected
    far = (n_imp - np.concatenate([[0], np.cumsum(imp)])) / n_imp
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
    n_gen = int(genuine_hist.sum())
    for f in far_targets:
        j = int(np.argmax(far <= f))  # lowest threshold whose FAR is within the target
        tar[f"{f:.0e}"] = (n_gen - int(round(frr[j] * n_gen))) / n_gen
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
    out["acc_1nn"] = fraction(st["nn_labels"] == query_labels.to(st["nn_labels"].device))
    return out


THRESHOLD_TARGETS = (1e-2, 1e-3, 1e-4)
MIN_IMPOSTORS = 100  # a FAR target must rest on at least this many accepted validation impostors


def calibrate(val_genuine: torch.Tensor, val_impostor: torch.Tensor, test_genuine: torch.Tensor,
              test_impostor: torch.Tensor, targets: tuple[float, ...] = THRESHOLD_TARGETS) -> dict[str, dict]:
    """Decision thresholds chosen on validation pairs, with the test rates at the same thresholds.

    For FAR target f: the lowest bin edge whose validation FAR is <= f; for "eer": the first edge at
    which the validation FRR reaches the FAR. Each entry: threshold, far_val, tar_val, far_test, tar_test
    (drift between the two shows how well validation predicts test), n_impostor_val. Targets that fewer
    than MIN_IMPOSTORS validation impostor pairs would support are left out (recognizer.lookup says why).
    Both histogram pairs must have the same bins, so the test rates are exact at each threshold.
    """
    far_v, frr_v, thr = rates_from_histograms(val_genuine, val_impostor)
    far_t, frr_t, _ = rates_from_histograms(test_genuine, test_impostor)
    n_imp = int(val_impostor.sum())

    def entry(k: int) -> dict:
        return {"threshold": float(thr[k]), "far_val": float(far_v[k]), "tar_val": float(1 - frr_v[k]),
                "far_test": float(far_t[k]), "tar_test": float(1 - frr_t[k]), "n_impostor_val": n_imp}

    out = {f"{f:.0e}": entry(int(np.argmax(far_v <= f))) for f in targets if f * n_imp >= MIN_IMPOSTORS}
    out["eer"] = entry(int(np.argmax(frr_v >= far_v)))
    return out


def far_curve(val_genuine: torch.Tensor, val_impostor: torch.Tensor) -> dict[str, list[float]]:
    """A thinned (threshold, validation FAR) curve, log-spaced in FAR: recognizer.far_at reads it."""
    far, frr, thr = rates_from_histograms(val_genuine, val_impostor)
    keep = _thin_curve(far, frr, points=600)
    return {"threshold": [float(t) for t in thr[keep]], "far": [float(f) for f in far[keep]]}


def rebin(hist: torch.Tensor, bins: int) -> torch.Tensor:
    """Sum adjacent bins down to `bins` (a power of two): the coarse edges are fine edges, so rates at
    them stay exact."""
    return hist.view(bins, -1).sum(1)
