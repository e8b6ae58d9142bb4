"""The pixels reject score: its numpy forward pass against torch's layers in float64, what it learns, and damage to
its stored weights refused (utils/inference/pixel_reject.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.core.errors import CheckpointError
from utils.core.io import unpack
from utils.inference import pixel_reject
from utils.inference.pixel_reject import fit_pixels, pixel_scores


def strokes(rng: np.random.Generator, n: int, size: int, vertical: bool) -> np.ndarray:
    """Bright bars on black at random places: vertical ones play the digits, horizontal ones the outliers."""
    x = np.zeros((n, size, size), np.uint8)
    for img in x:
        a, b = rng.integers(2, size - 12, 2)
        (img[a:a + 10, b:b + 2] if vertical else img[a:a + 2, b:b + 10])[:] = rng.integers(150, 256)
    return x


@pytest.mark.parametrize("size", [28, 30])  # 30 -> 15 -> 7: the second pooling drops a row and a column
def test_numpy_scores_equal_torch_s_layers_in_float64_on_the_stored_weights(size: int) -> None:
    rng = np.random.default_rng(0)
    entry = fit_pixels([strokes(rng, 64, size, True)], strokes(rng, 64, size, False), epochs=1)
    net = pixel_reject._network(size).double().eval()
    stored = [unpack(entry[k]) for k in ("conv1", "b1", "conv2", "b2", "w3", "b3", "w4")] + [np.array([entry["b4"]])]
    with torch.no_grad():
        for t, w in zip(net.parameters(), stored, strict=True):
            t.copy_(torch.from_numpy(w))
        x = (rng.random((700, size, size)) * 256).astype(np.uint8)  # more than one SCORE_BATCH
        ref = net(torch.from_numpy(x).double()[:, None] / 255.0)[:, 0].numpy()
    assert np.allclose(pixel_scores(x, entry), ref, rtol=1e-4, atol=1e-4)  # numpy computes in float32
    assert pixel_scores(x[:0], entry).shape == (0,)


def test_it_learns_the_outliers_it_is_shown_and_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    digits, outliers = strokes(rng, 1500, 28, True), strokes(rng, 750, 28, False)
    monkeypatch.setattr(pixel_reject, "EPOCHS", 3)  # read at call time
    entry = fit_pixels([digits[:1000], digits[1000:1200]], outliers[:600])  # two groups of digits
    assert entry["fitted_on"]["epochs"] == 3 and entry["fitted_on"]["digit_groups"] == [1000, 200]
    assert entry == fit_pixels([digits[:1000], digits[1000:1200]], outliers[:600])
    d, o = pixel_scores(digits[1200:], entry), pixel_scores(outliers[600:], entry)
    assert (o < np.quantile(d, 0.01)).mean() > 0.95  # at 99 % of held-back digits, nearly every outlier is refused


def test_damaged_pixel_weights_are_refused(tmp_path: Path) -> None:
    from utils.inference.reject import fit_scorer, load_reject

    rng = np.random.default_rng(2)
    emb, labels = rng.normal(size=(200, 8)), np.arange(200) % 2
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    entry = fit_pixels([strokes(rng, 64, 28, True)], strokes(rng, 64, 28, False), epochs=1)
    stored = {"score": "pixels", "threshold": 0.0, "checkpoint_sha256": "abc", **fit_scorer(emb, labels),
              "pixels": entry}
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    assert load_reject(tmp_path, "abc")["pixels"]["size"] == 28
    stored["pixels"]["w3"]["shape"] = [64, 3137]  # the bytes no longer fit the shape
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="is damaged; calibrate again"):
        load_reject(tmp_path, "abc")
