"""A digit-ness score learnt from generated outliers on the frozen embedding (the reject score "learned").

The other scores of utils/inference/reject.py only describe where the digits lie (their centres, neighbours,
covariance) and call the rest "not a digit". This one is shown what a non-digit looks like: a small network
on the unit embedding e is fitted to tell training-split digits (and degraded copies of them, so that soft
or blurred strokes are not learnt as "not a digit") from the generated outliers of utils/data/outliers.py
(letters and symbols of the validation fonts, scribbles, noise, digit pieces, Fashion-MNIST's training file).
It is outlier exposure (Hendrycks et al., ICLR 2019) applied after training, to a one-hidden-layer
discriminator instead of the backbone, so the digit model, its accuracy and its EER stay exactly as they were:

    s(e) = w2 . relu(W1 e + b1) + b2,   W1: [HIDDEN, D]

fitted by minimising the class-balanced logistic loss

    L = -1/2 mean_digits log sigma(s) - 1/2 mean_outliers log(1 - sigma(s)) + L2 (|W1|^2 + |w2|^2)

with L-BFGS from a seeded start (deterministic). The weights are stored as float16 like the other scores' arrays
(no pickle), and the score is computed from the stored weights, so calibration, the checkpoint path and an
ONNX export give the same numbers. HIDDEN and L2 were read off validation, over three fits from seeded starts
(docs/en/wild.md, round seven).
"""

from __future__ import annotations

import numpy as np

from utils.core.io import pack, unpack

HIDDEN, L2, ITERATIONS = 32, 1e-6, 500


def _unflatten(t: np.ndarray, d: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    w1 = t[:d * h].reshape(h, d)
    return w1, t[d * h:d * h + h], t[d * h + h:d * h + 2 * h], float(t[-1])


def loss_and_gradient(t: np.ndarray, x: np.ndarray, y: np.ndarray, weight: np.ndarray, hidden: int,
                      l2: float) -> tuple[float, np.ndarray]:
    """The fitted loss at flat parameters t = [W1, b1, w2, b2] and its gradient (float64)."""
    w1, b1, w2, b2 = _unflatten(t, x.shape[1], hidden)
    z = x @ w1.T + b1
    h = np.maximum(z, 0.0)
    s = h @ w2 + b2
    # log sigma(s) and log(1 - sigma(s)) without overflow
    loss = float((weight * (y * np.logaddexp(0, -s) + (1 - y) * np.logaddexp(0, s))).sum())
    loss += l2 * float((w1 ** 2).sum() + (w2 ** 2).sum())
    with np.errstate(over="ignore"):  # exp(-s) = inf for a very negative s gives sigma = 0, as it should
        g = weight * (1 / (1 + np.exp(-s)) - y)  # dL/ds
    gh = np.outer(g, w2) * (z > 0)
    grad = np.concatenate([(gh.T @ x + 2 * l2 * w1).ravel(), gh.sum(0), h.T @ g + 2 * l2 * w2, [g.sum()]])
    return loss, grad


def fit_learned(digits: np.ndarray, outliers: np.ndarray, hidden: int = HIDDEN, l2: float = L2,
                iterations: int = ITERATIONS, seed: int = 0) -> dict:
    """The discriminator of unit embeddings of digits [N, D] against outliers [M, D], as stored in reject.json."""
    from scipy.optimize import minimize  # fitting only: scoring needs numpy alone

    x = np.concatenate([digits, outliers]).astype(np.float64)
    y = np.r_[np.ones(len(digits)), np.zeros(len(outliers))]
    weight = np.where(y == 1, 0.5 / len(digits), 0.5 / len(outliers))  # each side counts half, whatever its size
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    t0 = np.concatenate([rng.normal(0, d ** -0.5, hidden * d), np.zeros(hidden), rng.normal(0, hidden ** -0.5, hidden),
                         [0.0]])
    r = minimize(loss_and_gradient, t0, args=(x, y, weight, hidden, l2), jac=True, method="L-BFGS-B",
                 options={"maxiter": iterations})
    w1, b1, w2, b2 = _unflatten(r.x, d, hidden)
    return {"w1": pack(w1), "b1": pack(b1), "w2": pack(w2), "b2": b2, "fitted_on": {
        "digits": len(digits), "outliers": len(outliers), "hidden": hidden, "l2": l2, "iterations": int(r.nit),
        "loss": float(r.fun)}}


def learned_scores(emb: np.ndarray, entry: dict) -> np.ndarray:
    """s(e) of unit embeddings [N, D] under a stored `fit_learned` entry, or the mean over an ensemble's
    {"members": [entries]} (bench.learned_reject compares them): higher = more digit-like."""
    if "members" in entry:
        return np.mean([learned_scores(emb, m) for m in entry["members"]], axis=0)
    w1, b1, w2 = unpack(entry["w1"]), unpack(entry["b1"]), unpack(entry["w2"])
    return np.maximum(emb.astype(np.float64) @ w1.T + b1, 0.0) @ w2 + float(entry["b2"])
