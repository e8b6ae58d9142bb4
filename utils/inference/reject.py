"""Is it a digit at all? A score of "digit-ness" on the embedding and a threshold calibrated on validation.

The verification thresholds say how often two digits of different classes score this high; they say
nothing about a sheet that holds no digit. Two scores are measured (numpy, on the unit embedding e, so
the checkpoint and the ONNX paths compute the same), against the class centres c_j (unit means of the
training split's embeddings of class j):

  centre  max_j cos(e, c_j): how close the image is to the nearest class as the model sees it;
  energy  T log sum_j exp(cos(e, c_j) / T), T = 1/16: the free energy of Liu et al. (NeurIPS 2020) over
          cosine logits at ArcFace's scale; it also counts closeness to the other classes.

A score's threshold is its 1st percentile on the MNIST validation digits (99 % of digits accepted); the
score kept is the one that accepts fewer of the validation non-digits (Fashion-MNIST's training file,
the wild set's "val" letters, symbols, blank and noise sheets and scribbles: utils/data/wild.py).
A sheet in which no ink stands out from the paper (`images.paper_and_ink` finds none) is never a digit.
The calibration lives in ckp/<model>/reject.json beside the checkpoint (the checkpoint, whose hash
galleries record, stays untouched) and in an export's model.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from utils.core.errors import CheckpointError

SCORES = ("centre", "energy")
TEMPERATURE = 1 / 16
DIGIT_ACCEPT = 0.99  # the operating point: the share of validation digits accepted


def scores(emb: np.ndarray, centres: np.ndarray, kind: str) -> np.ndarray:
    """Digit-ness of unit embeddings [N, D] against unit class centres [C, D]: higher = more digit-like."""
    cos = emb.astype(np.float64) @ centres.astype(np.float64).T
    if kind == "centre":
        return cos.max(1)
    top = cos.max(1, keepdims=True)  # log-sum-exp without overflow
    return (top[:, 0] + TEMPERATURE * np.log(np.exp((cos - top) / TEMPERATURE).sum(1)))


def class_centres(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean embedding of each class 0 .. C-1."""
    c = np.stack([emb[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
    return (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)


def calibrate(digits: np.ndarray, nondigits: dict[str, np.ndarray], centres: np.ndarray) -> dict:
    """Each score's threshold (99 % of `digits` accepted) and its acceptance of each kind of non-digit;
    the score that accepts the fewest non-digits (mean over the kinds) is chosen. Embeddings are unit rows."""
    cands = {}
    for kind in SCORES:
        d = scores(digits, centres, kind)
        thr = float(np.quantile(d, 1 - DIGIT_ACCEPT, method="lower"))
        per = {k: float((scores(v, centres, kind) >= thr).mean()) for k, v in nondigits.items()}
        cands[kind] = {"threshold": thr, "digits_accepted": float((d >= thr).mean()), "nondigits_accepted": per,
                       "nondigits_accepted_mean": float(np.mean(list(per.values())))}
    best = min(SCORES, key=lambda k: cands[k]["nondigits_accepted_mean"])
    return {"score": best, "threshold": cands[best]["threshold"], "temperature": TEMPERATURE,
            "centres": centres.tolist(), "candidates": cands}


def is_digit(emb: np.ndarray, empty: np.ndarray, reject: dict) -> tuple[np.ndarray, np.ndarray]:
    """(digit-ness scores, verdicts) of unit embeddings; `empty` marks inputs with no ink at all."""
    s = scores(emb, np.asarray(reject["centres"], np.float32), reject["score"])
    return s, (s >= reject["threshold"]) & ~empty


def load_reject(folder: Path, checkpoint_sha256: str) -> dict | None:
    """ckp/<model>/reject.json when present (None otherwise), refused when calibrated for other weights."""
    path = folder / "reject.json"
    if not path.is_file():
        return None
    try:
        r = json.loads(path.read_text())
        ok = r["score"] in SCORES and float(r["threshold"]) == float(r["threshold"]) and len(r["centres"]) > 1
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is damaged; calibrate again (python main.py wild) or delete it.")
    if r.get("checkpoint_sha256") != checkpoint_sha256:
        raise CheckpointError(f"{path} was calibrated for other weights than {folder / 'best.pt'}; calibrate "
                              f"again (python main.py wild --model_name=...) or delete it.")
    return r
