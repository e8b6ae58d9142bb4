"""The learned reject score: its gradient, its stored form against a naive float64 reference, and what it
sees that the scores describing the digits alone cannot (utils/inference/learned_reject.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from utils.core.errors import CheckpointError
from utils.inference.learned_reject import fit_learned, learned_scores, loss_and_gradient
from utils.inference.reject import calibrate, fit_scorer, ink_band, load_reject, scores


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_gradient_is_the_loss_s_derivative() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), (rng.random(40) < 0.5).astype(np.float64)
    weight, hidden = np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum()), 3
    t = rng.normal(size=5 * hidden + 2 * hidden + 1)
    _, grad = loss_and_gradient(t, x, y, weight, hidden, 1e-2)
    for i in range(len(t)):
        step = np.zeros_like(t)
        step[i] = 1e-6
        numeric = (loss_and_gradient(t + step, x, y, weight, hidden, 1e-2)[0]
                   - loss_and_gradient(t - step, x, y, weight, hidden, 1e-2)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, abs=1e-7)


def digits_and_outliers(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes, each spread to four sides of its centre (+-e2 or +-e3), and outliers on the diagonals
    between those sides: as close to the class centre, and as far from the class mean in the covariance's
    terms, as the digits, so the scores that describe the digits by a centre or a covariance cannot tell
    them apart."""
    def around(n: int, sides: np.ndarray) -> np.ndarray:
        labels = np.arange(n) % 2
        return unit(np.eye(2, 6)[labels] * 2.0 + sides[np.arange(n) // 2 % 4] + rng.normal(0, 0.03, (n, 6)))

    axes = np.array([np.eye(6)[2], -np.eye(6)[2], np.eye(6)[3], -np.eye(6)[3]])
    diagonals = np.array([[0, 0, a, b, 0, 0] for a in (1, -1) for b in (1, -1)]) / np.sqrt(2)
    return around(600, axes).astype(np.float32), np.arange(600) % 2, around(300, diagonals).astype(np.float32)


def test_it_learns_what_a_description_of_the_digits_misses_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    digits, labels, outliers = digits_and_outliers(rng)
    entry = fit_learned(digits[:400], outliers[:200], hidden=8, l2=1e-5)
    assert entry == fit_learned(digits[:400], outliers[:200], hidden=8, l2=1e-5)  # seeded start, no randomness after
    scorer = {**fit_scorer(digits[:400], labels[:400]), "learned": entry}
    stroke = np.zeros((1, 28, 28), np.uint8)
    stroke[0, 7:21, 13:15] = 255
    images = np.repeat(stroke, 200, 0)  # every image in the band: the scores alone decide
    r = calibrate((images, digits[400:]), {"outliers": (images[:100], outliers[200:])}, scorer, ink_band(images))
    accepted = {k: c["nondigits_accepted"]["outliers"] for k, c in r["candidates"].items()}
    assert accepted["learned"] < 0.05 and accepted["mahalanobis"] > 0.5 and accepted["centre"] > 0.5
    assert accepted[r["score"]] == min(accepted.values())  # (knn, which needs no class shape, also sees them)


def test_stored_weights_give_a_naive_float64_reference_and_damage_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    digits, labels, outliers = digits_and_outliers(rng)
    scorer = {**fit_scorer(digits, labels), "learned": fit_learned(digits, outliers, hidden=4, l2=1e-4, iterations=50)}
    stored = json.loads(json.dumps({"score": "learned", "threshold": 0.0, "checkpoint_sha256": "abc", **scorer}))
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    loaded = load_reject(tmp_path, "abc")
    w = {k: np.frombuffer(base64.b64decode(loaded["learned"][k]["float16_b64"]), np.float16)
         for k in ("w1", "b1", "w2")}
    w1 = w["w1"].astype(np.float64).reshape(4, 6)
    for i, e in enumerate(outliers[:10].astype(np.float64)):
        hidden = [max(0.0, float(sum(w1[j, c] * e[c] for c in range(6))) + float(w["b1"][j])) for j in range(4)]
        naive = sum(h * float(v) for h, v in zip(hidden, w["w2"], strict=True)) + loaded["learned"]["b2"]
        assert scores(outliers, loaded, "learned")[i] == pytest.approx(naive, abs=1e-9)
    assert np.array_equal(learned_scores(outliers, loaded["learned"]), scores(outliers, loaded, "learned"))
    stored["learned"]["w1"]["shape"] = [5, 6]  # the bytes no longer fit the shape
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="damaged"):
        load_reject(tmp_path, "abc")
    del stored["learned"]  # the score named but its network missing
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="damaged"):
        load_reject(tmp_path, "abc")


def test_an_ensemble_of_one_fit_is_that_fit_and_two_average_their_scores() -> None:
    rng = np.random.default_rng(3)
    digits, labels, outliers = digits_and_outliers(rng)
    fits = [fit_learned(digits[:400], outliers[:200], hidden=4, l2=1e-4, iterations=30, seed=s) for s in (0, 1)]
    stroke = np.zeros((1, 28, 28), np.uint8)
    stroke[0, 7:21, 13:15] = 255
    images = np.repeat(stroke, 200, 0)
    band, val = ink_band(images), (images, digits[400:])
    non = {"outliers": (images[:100], outliers[200:]), "out of band": (np.zeros((5, 28, 28), np.uint8), outliers[:5])}
    scorer = fit_scorer(digits, labels)

    def accepted(entry: dict) -> dict:
        return calibrate(val, non, {**scorer, "learned": entry}, band)["candidates"]["learned"]["nondigits_accepted"]

    assert accepted({"members": fits[:1]}) == accepted(fits[0])
    assert accepted({"members": fits})["out of band"] == 0.0  # the band turns them away whatever the score
    mean = (learned_scores(outliers[200:], fits[0]) + learned_scores(outliers[200:], fits[1])) / 2
    thr = np.quantile((learned_scores(digits[400:], fits[0]) + learned_scores(digits[400:], fits[1])) / 2, 0.01,
                      method="lower")
    assert accepted({"members": fits})["outliers"] == pytest.approx(float((mean >= thr).mean()))
