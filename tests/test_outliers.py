"""Training with generated non-digits (issue 33): the images, the loss terms against a naive float64
reference, and a run that trains with them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import call_main, needs_mnist, quick

from trainArcFace import TrainArcFaceParams
from utils.core.config import ConfigError, resolve
from utils.core.errors import DataError
from utils.data.outliers import KINDS, make_outliers
from utils.training.outlier_loss import training_loss


def naive(logits: torch.Tensor, y: torch.Tensor, kind: str, w: float, m_in: float, m_out: float) -> float:
    """The formulas of utils/training/outlier_loss.py, row by row in float64."""
    z, ce, term_u, e_in, e_out = logits.double().tolist(), [], [], [], []
    for row, label in zip(z, y.tolist(), strict=True):
        lse = math.log(sum(math.exp(v) for v in row))
        if label >= 0:
            ce.append(lse - row[label])
            e_in.append(max(0.0, -lse - m_in) ** 2)
        else:
            term_u.append(sum(lse - v for v in row) / len(row))
            e_out.append(max(0.0, m_out + lse) ** 2)
    mean = lambda v: sum(v) / max(1, len(v))  # noqa: E731
    term = mean(term_u) if kind == "uniform" else mean(e_in) + mean(e_out)
    return mean(ce) + w * term


@pytest.mark.parametrize("kind", ["uniform", "energy"])
def test_outlier_terms_match_the_formulas(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 10, generator=g) * 8
    y = torch.tensor([3, -1, 0, 9, -1, -1, 4, 4, -1, 2, 7, -1])
    p = dataclasses.replace(TrainArcFaceParams(), outliers=kind, outlier_weight=0.7, energy_in=-9.0, energy_out=-3.0)
    assert training_loss(logits, y, p).item() == pytest.approx(naive(logits, y, kind, 0.7, -9.0, -3.0), rel=1e-5)
    only_known = y.clamp(min=0)  # a batch without outliers adds only the known half of the term
    assert training_loss(logits, only_known, p).item() == pytest.approx(
        naive(logits, only_known, kind, 0.7, -9.0, -3.0), rel=1e-5)


def test_without_outliers_the_loss_is_the_plain_cross_entropy() -> None:
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    p = dataclasses.replace(TrainArcFaceParams(), label_smoothing=0.1)
    assert torch.equal(training_loss(logits, y, p), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_bad_outlier_settings_are_refused() -> None:
    for over, match in (({"outliers": "ood"}, "outliers 'ood' unknown"),
                        ({"outlier_fraction": 0.0}, "outlier_fraction=0.0"),
                        ({"energy_in": -1.0, "energy_out": -2.0, "loss_fuc_type": "normface"}, "must be below")):
        with pytest.raises(ConfigError, match=match):
            resolve(TrainArcFaceParams(), over)
    # ArcFace's known images are scored with margin logits, its outliers with plain ones: any order is meaningful
    assert resolve(TrainArcFaceParams(), {"energy_in": -7.5, "energy_out": -12.9}).energy_in == -7.5


def test_generated_outliers_are_deterministic_prepared_and_of_every_kind() -> None:
    digits = np.zeros((4, 28, 28), np.uint8)
    digits[:, 6:22, 12:16] = 255  # a "1"
    fashion = np.full((3, 28, 28), 40, np.uint8)
    fashion[:, 4:24, 4:24] = 200  # a light garment on a dark ground, as Fashion-MNIST's
    a, kinds = make_outliers(60, 28, "light_on_dark", "mnist", digits, seed=1, fashion=fashion)
    b, _ = make_outliers(60, 28, "light_on_dark", "mnist", digits, seed=1, fashion=fashion)
    assert a.shape == (60, 28, 28) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert sorted(set(kinds.tolist())) == list(range(len(KINDS)))  # every kind, equal shares
    assert np.bincount(kinds).min() >= 60 // len(KINDS)
    inked = a[a.reshape(60, -1).max(1) > 0]
    assert len(inked) >= 50 and inked[:, 0, :].mean() < 30  # the model's polarity: light ink, dark border
    _, without = make_outliers(25, 28, "light_on_dark", "mnist", digits, seed=1)
    assert KINDS.index("fashion") not in without.tolist() and len(set(without.tolist())) == len(KINDS) - 1


@needs_mnist
def test_a_run_trains_with_outliers(tmp_path: Path) -> None:
    """End to end with the uniform term; the energy term takes the same path (TrainNet, with_outliers) and differs
    only in training_loss, which the float64 test above checks for both."""
    kind = "uniform"
    r = call_main("arcface", *quick(tmp_path), f"--outliers={kind}", "--amp=off", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "non-digits for training with outliers" in r.stdout + r.stderr
    m = json.loads((tmp_path / "results" / "resnet18_arcface" / "metrics.json").read_text())
    assert 0 < m["acc_1nn"] <= 1 and math.isfinite(m["eer"])
    assert json.loads((tmp_path / "results" / "resnet18_arcface" / "params.json").read_text())["outliers"] == kind


def test_outlier_kinds_choose_what_is_mixed_in_and_refuse_unknown_ones() -> None:
    digits = np.zeros((4, 28, 28), np.uint8)
    digits[:, 6:22, 12:16] = 255
    _, kinds = make_outliers(30, 28, "light_on_dark", "mnist", digits, seed=1, kinds=("symbols", "letters"))
    assert sorted(set(kinds.tolist())) == [KINDS.index("letters"), KINDS.index("symbols")]
    assert np.bincount(kinds)[[KINDS.index("letters"), KINDS.index("symbols")]].tolist() == [15, 15]
    with pytest.raises(DataError, match="no kind of outlier left"):
        make_outliers(5, 28, "light_on_dark", "mnist", digits, seed=1, kinds=("fashion",))
    assert resolve(TrainArcFaceParams(), {"outlier_kinds": "letters,scribble"}).outlier_kinds == "letters,scribble"
    for bad in ("letters,photos", "letters,letters", ""):
        with pytest.raises(ConfigError, match="outlier_kinds"):
            resolve(TrainArcFaceParams(), {"outlier_kinds": bad})
