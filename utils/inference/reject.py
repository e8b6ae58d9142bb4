"""Is it a digit at all? A score of "digit-ness" on the embedding and a threshold calibrated on validation.

The verification thresholds say how often two digits of different classes score this high; they say
nothing about a sheet that holds no digit. Four scores are measured (numpy, on the unit embedding e, so
the checkpoint and the ONNX paths compute the same), each fitted on training-split embeddings that neither
the gallery nor the threshold uses (`fit_scorer`):

  centre       max_j cos(e, c_j), c_j the unit mean of class j: how close the image is to the nearest class;
  energy       T log sum_j exp(cos(e, c_j) / T), T = 1/16: the free energy of Liu et al. (NeurIPS 2020) over
               cosine logits at ArcFace's scale; it also counts closeness to the other classes;
  knn          the cosine to the k-th nearest of KNN_PER_CLASS reference embeddings per class (Sun et al.,
               ICML 2022: deep nearest neighbours, k = KNN_K), which needs no class shape at all;
  mahalanobis  -min_j (e - mu_j)^T S^-1 (e - mu_j) with one covariance S shared by the classes (Lee et al.,
               NeurIPS 2018), S kept as its MAHA_RANK leading directions plus the mean variance of the rest
               (probabilistic PCA): 22k numbers instead of the 262k of a full 512 x 512 inverse;
  learned      a small network on e fitted to tell training digits from generated outliers (learned_reject.py),
               present when the calibration was given outliers (`python main.py wild` makes them).
The reference embeddings and the covariance's directions are stored as float16 (base64, no pickle).

Embeddings alone let most non-digits through (measured: results/wild/), since an ArcFace embedding puts
nearly any input near some class centre. So a digit must also look like one in pixels: its ink statistics
(`ink_statistics`: share of ink, mean ink level, edges per ink, pieces) within a range that holds 99.5 %
of MNIST's training digits. The score's threshold then lets exactly 99 % of the MNIST validation digits pass
both tests; the score kept is the one that accepts fewer of the validation non-digits (Fashion-MNIST's
training file, the wild set's "val" letters, symbols, blank and noise sheets and scribbles:
utils/data/wild.py). A sheet in which no ink stands out from the paper is never a digit.
The calibration lives in ckp/<model>/reject.json beside the checkpoint (the checkpoint, whose hash
galleries record, stays untouched) and in an export's model.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utils.core.errors import CheckpointError, RunFailed
from utils.core.io import pack, unpack
from utils.data.regions import count_parts
from utils.inference.learned_reject import learned_scores
from utils.inference.pixel_reject import pixel_scores

SCORES = ("centre", "energy", "knn", "mahalanobis", "learned", "pixels")
FITTED = ("learned", "pixels")  # fitted on generated outliers: present only where `python main.py wild` fitted them
STORED = ("centres", "knn", "mahalanobis", *FITTED)  # a scorer's arrays (kept out of reports)
TEMPERATURE = 1 / 16
DIGIT_ACCEPT = 0.99  # the operating point: the share of validation digits accepted
POSITIVE_ACCEPT = 0.95  # a score must accept this share of every validation kind of genuine digit (issue 33)
KNN_K, KNN_PER_CLASS = 5, 100
MAHA_RANK = 32


def class_centres(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean embedding of each class 0 .. C-1."""
    c = np.stack([emb[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def fit_scorer(emb: np.ndarray, labels: np.ndarray) -> dict:
    """What every score needs, from unit training-split embeddings [N, D] and their classes: the class
    centres; KNN_PER_CLASS references per class (the first of each); the class means and the shared
    covariance's MAHA_RANK leading directions, their variances and the mean variance of the rest."""
    e, y = emb.astype(np.float64), labels
    classes = range(int(y.max()) + 1)
    ref = np.concatenate([e[y == k][:KNN_PER_CLASS] for k in classes])
    means = np.stack([e[y == k].mean(0) for k in classes])
    d = e - means[y]
    var, vec = np.linalg.eigh(d.T @ d / len(d))  # ascending
    r = min(MAHA_RANK, len(var) - 1)
    return {"centres": class_centres(emb, labels).tolist(), "knn": {"k": KNN_K, "reference": pack(ref)},
            "mahalanobis": {"means": pack(means), "directions": pack(vec[:, ::-1][:, :r].T),
                            "variances": var[::-1][:r].tolist(), "rest_variance": float(var[:-r].mean())}}


def available(scorer: dict) -> tuple[str, ...]:
    """The scores a fitted scorer (or a reject.json) can compute: "learned" and "pixels" only where fitted."""
    return tuple(k for k in SCORES if k not in FITTED or k in scorer)


def scores(emb: np.ndarray, scorer: dict, kind: str, x: np.ndarray | None = None) -> np.ndarray:
    """Digit-ness of unit embeddings [N, D] under `fit_scorer`'s dict (or a reject.json): higher = more digit-like.
    "pixels" reads the prepared images x (uint8 [N, S, S]) instead of the embeddings."""
    if kind == "pixels":
        return pixel_scores(x, scorer["pixels"])
    e = emb.astype(np.float64)
    if kind in ("centre", "energy"):
        cos = e @ np.asarray(scorer["centres"], np.float64).T
        if kind == "centre":
            return cos.max(1)
        top = cos.max(1, keepdims=True)  # log-sum-exp without overflow
        return top[:, 0] + TEMPERATURE * np.log(np.exp((cos - top) / TEMPERATURE).sum(1))
    if kind == "knn":
        cos = e @ unpack(scorer["knn"]["reference"]).T
        k = scorer["knn"]["k"]
        return -np.partition(-cos, k - 1, axis=1)[:, k - 1]  # the k-th largest cosine
    if kind == "learned":
        return learned_scores(e, scorer["learned"])
    m = scorer["mahalanobis"]
    means, u = unpack(m["means"]), unpack(m["directions"])
    lam, rest = np.asarray(m["variances"], np.float64), float(m["rest_variance"])
    # d = e - mu_j without forming [N, C, D]: its norm and its projections expand into products
    sq = (e ** 2).sum(1)[:, None] - 2 * e @ means.T + (means ** 2).sum(1)[None]  # |d|^2  [N, C]
    proj = (e @ u.T)[:, None, :] - (means @ u.T)[None]  # u d  [N, C, r]
    dist = ((proj ** 2) / lam).sum(2) + (sq - (proj ** 2).sum(2)) / rest
    return -dist.min(1)


INK = ("ink fraction", "mean ink", "edges per ink", "pieces")
BAND_KEEPS = 0.995  # the ink band holds this share of MNIST's training digits (all four statistics at once)


def ink_statistics(x: np.ndarray) -> np.ndarray:
    """[N, 4] statistics of uint8 network inputs [N, H, W] (light ink on dark, as MNIST): the share of
    pixels with ink, the mean level of those pixels, the edge length per unit of ink (total variation /
    ink mass: noise and texture are all edges, strokes are not) and the number of separate pieces."""
    a = x.astype(np.float32) / 255.0
    ink = a.reshape(len(a), -1)
    on = ink > 0.2
    edges = np.abs(np.diff(a, axis=1)).sum((1, 2)) + np.abs(np.diff(a, axis=2)).sum((1, 2))
    pieces = count_parts(a > 0.3)
    return np.stack([on.mean(1), ink.sum(1) / np.maximum(on.sum(1), 1), edges / np.maximum(ink.sum(1), 1e-6),
                     np.asarray(pieces, np.float64)], axis=1)


def ink_band(digit_images: np.ndarray, *others: np.ndarray) -> dict:
    """The range of each ink statistic over genuine digits: for each group of images (MNIST's digits, then
    other genuine digits: degraded copies, the validation fonts' sheets of one style) the same small share
    cut from both ends of every statistic, as much as leaves BAND_KEEPS of the group inside all four ranges;
    the band is the union of the groups' ranges, so softer or greyer ink of a real digit is not a reason to
    turn it away."""
    lows, highs, cuts = [], [], []
    for group in (digit_images, *others):
        s = ink_statistics(group)
        for cut in (0.0025, 0.002, 0.0015, 0.001, 0.0005, 0.00025, 0.0):
            low, high = np.quantile(s, cut, axis=0), np.quantile(s, 1 - cut, axis=0)
            if ((s >= low) & (s <= high)).all(1).mean() >= BAND_KEEPS:
                break
        lows.append(low)
        highs.append(high)
        cuts.append(cut)
    return {"names": list(INK), "low": np.min(lows, 0).tolist(), "high": np.max(highs, 0).tolist(),
            "cut": cuts[0] if len(cuts) == 1 else cuts}


def in_band(x: np.ndarray, band: dict) -> np.ndarray:
    s = ink_statistics(x)
    return ((s >= np.asarray(band["low"])) & (s <= np.asarray(band["high"]))).all(1)


def accepted_share(group: dict[str, tuple[np.ndarray, np.ndarray]], scorer: dict, kind: str, threshold: float,
                   band: dict) -> dict[str, float]:
    """Per kind of image in `group` ({kind: (images, unit embeddings)}): the share inside the band and scoring at
    or above the threshold."""
    return {k: float(((scores(e, scorer, kind, x) >= threshold) & in_band(x, band)).mean())
            for k, (x, e) in group.items()}


def calibrate(digits: tuple[np.ndarray, np.ndarray], nondigits: dict[str, tuple[np.ndarray, np.ndarray]],
              scorer: dict, band: dict, positives: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Each score's threshold and its acceptance of each kind of non-digit (and of each kind of genuine digit in
    `positives`), a digit being an image whose ink statistics lie in `band` and whose score reaches the
    threshold; the threshold makes exactly DIGIT_ACCEPT of the validation `digits` pass both. Chosen: the score
    that accepts the fewest non-digits (mean over the kinds) among those that accept POSITIVE_ACCEPT of every
    positive kind; if none does, the one whose worst positive kind is accepted most. (images uint8, unit
    embeddings) pairs."""
    cands = {}
    x, emb = digits
    ok = in_band(x, band)
    for kind in available(scorer):
        d = np.where(ok, scores(emb, scorer, kind, x), -np.inf)  # out of band: never accepted
        thr = float(np.quantile(d, 1 - DIGIT_ACCEPT, method="lower"))
        if not np.isfinite(thr):
            raise RunFailed(f"the ink band keeps only {ok.mean():.1%} of the validation digits, under "
                             f"{DIGIT_ACCEPT:.0%}: they are not drawn like the band's digits")
        per = accepted_share(nondigits, scorer, kind, thr, band)
        cands[kind] = {"threshold": thr, "digits_accepted": float((d >= thr).mean()), "nondigits_accepted": per,
                       "nondigits_accepted_mean": float(np.mean(list(per.values())))}
        if positives:
            cands[kind]["positives_accepted"] = accepted_share(positives, scorer, kind, thr, band)
    worst = {k: min(c.get("positives_accepted", {"": 1.0}).values()) for k, c in cands.items()}
    keep = [k for k in cands if worst[k] >= POSITIVE_ACCEPT]
    best = min(keep, key=lambda k: cands[k]["nondigits_accepted_mean"]) if keep else max(cands, key=worst.get)
    per_band = {k: float(in_band(xi, band).mean()) for k, (xi, _) in nondigits.items()}
    return {"score": best, "threshold": cands[best]["threshold"], "temperature": TEMPERATURE, **scorer,
            "band": band, "candidates": cands,
            "band_alone": {"digits_accepted": float(ok.mean()), "nondigits_accepted": per_band}}


def ink_ok(x: np.ndarray, reject: dict) -> np.ndarray:
    """The ink tests of network inputs (uint8 [N, H, W]), which turn an image away whatever its score: no ink
    standing out, or ink statistics outside the band (when calibrated with one)."""
    flat = x.reshape(len(x), -1)
    ok = flat.max(1) > flat.min(1)  # a sheet without ink is no digit
    return ok & in_band(x, reject["band"]) if "band" in reject else ok


def digit_scores(x: np.ndarray, emb: np.ndarray, reject: dict) -> np.ndarray:
    """The calibrated score of network inputs and their unit embeddings, -inf for those `ink_ok` turns away."""
    return np.where(ink_ok(x, reject), scores(emb, reject, reject["score"], x), -np.inf)


def is_digit(x: np.ndarray, emb: np.ndarray, reject: dict) -> tuple[np.ndarray, np.ndarray]:
    """(digit-ness scores, verdicts): ink, ink statistics within the band (when calibrated with one) and a
    score at or above the threshold."""
    s = scores(emb, reject, reject["score"], x)
    return s, np.where(ink_ok(x, reject), s, -np.inf) >= reject["threshold"]


def separation(digits: np.ndarray, nondigits: np.ndarray) -> dict:
    """Digits (positive) against one kind of non-digit, from `digit_scores` of each: AUROC (ties count
    half), the share of the kind accepted at 95 % of the digits accepted (FPR at 95 % TPR), and at 99 %,
    the thresholds set on these digits themselves: a measurement, never a choice."""
    from scipy.stats import rankdata

    d, n = np.asarray(digits, np.float64), np.asarray(nondigits, np.float64)
    ranks = rankdata(np.concatenate([d, n]))
    auroc = (ranks[:len(d)].sum() - len(d) * (len(d) + 1) / 2) / (len(d) * len(n))
    at = {f"accepted_at_{k}_digits": float((n >= np.quantile(d, 1 - k / 100, method="lower")).mean())
          for k in (95, 99)}
    return {"auroc": float(auroc), **at}


def kind_curve(digit_s: np.ndarray, non_s: np.ndarray, points: int = 400) -> dict:
    """Non-digits of one kind accepted (FAR) against digits rejected (FRR) over thresholds: DET points."""
    both = np.concatenate([digit_s, non_s])
    thr = np.unique(np.quantile(both[np.isfinite(both)], np.linspace(0, 1, points)))
    far, frr = np.array([(non_s >= t).mean() for t in thr]), np.array([(digit_s < t).mean() for t in thr])
    i = int(np.argmin(np.abs(far - frr)))
    return {"far": far.tolist(), "frr": frr.tolist(), "eer": float((far[i] + frr[i]) / 2)}


def det_curves(digits: tuple[np.ndarray, np.ndarray], nondigits: dict[str, tuple[np.ndarray, np.ndarray]],
               scorer: dict, band: dict) -> dict:
    """Per score (within the ink band): non-digits accepted (FAR) against digits rejected (FRR) over
    thresholds; (images, embeddings) pairs."""
    def banded(x: np.ndarray, e: np.ndarray, kind: str) -> np.ndarray:
        return np.where(in_band(x, band), scores(e, scorer, kind, x), -np.inf)

    return {kind: kind_curve(banded(*digits, kind), np.concatenate([banded(x, e, kind) for x, e in nondigits.values()]))
            for kind in available(scorer)}


def file_identity(path: Path) -> dict:
    """Size and modification time of a file: what a cold start compares before it hashes 180 MB."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def load_reject(folder: Path, checkpoint_sha256: str | Callable[[], str]) -> dict | None:
    """ckp/<model>/reject.json when present (None otherwise), refused when calibrated for other weights.
    A callable `checkpoint_sha256` is asked only when best.pt's size or modification time differ from those
    reject.json recorded (hashing a 183 MB checkpoint took 0.2-0.3 s of a cold `verify`'s 0.8 s above
    `import torch`); a retrained or copied checkpoint has another time, so it is hashed and compared."""
    path = folder / "reject.json"
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
        ok = r["score"] in available(r) and float(r["threshold"]) == float(r["threshold"]) and len(r["centres"]) > 1
        size = r["pixels"]["size"] if "pixels" in r else 1
        zeros = (np.zeros((1, len(r["centres"][0]))), np.zeros((1, size, size), np.uint8))
        ok = ok and scores(zeros[0], r, r["score"], zeros[1]).shape == (1,)  # the chosen score's arrays decode
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is damaged; calibrate again (python main.py wild) or delete it.")
    if callable(checkpoint_sha256):
        try:
            same_file = r.get("checkpoint_file") == file_identity(folder / "best.pt")
        except OSError:
            same_file = False
        want = r.get("checkpoint_sha256") if same_file else checkpoint_sha256()
    else:
        want = checkpoint_sha256
    if r.get("checkpoint_sha256") != want:
        raise CheckpointError(f"{path} was calibrated for other weights than {folder / 'best.pt'}; calibrate "
                              f"again (python main.py wild --model_name=...) or delete it.")
    return r
