"""The correctness review's defects, each pinned: SphereFace's annealing by progress, per-run fp16
scaler state, exact histogram bins at every allowed size, batch orders that seeds do not share."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run

from losses import SphereFace
from trainArcFace import TrainArcFaceParams
from utils.core.config import resolve
from utils.core.distributed import DistContext
from utils.data.loading import augmentation_table
from utils.scoring.metrics import score_statistics
from utils.training import engine
from utils.training import fit as fit_mod


def test_sphereface_lambda_follows_progress_and_validation_uses_the_final_objective() -> None:
    head = SphereFace(8, 4)
    head.set_total_steps(466)  # the margin-loss grid's 2 epochs
    head.train()
    cos = torch.zeros(3, 1)
    lams = []
    for _ in range(466):
        lams.append(head.lam)
        head.target_logit(cos)  # one training forward = one step
    assert lams[0] == 1000.0
    reach = math.ceil(0.059 * 466)  # the paper reaches lambda_min at 1,658 of 28,000 steps
    assert lams[reach + 1] == 5.0 and lams[reach // 2] > 5.0
    assert lams[-1] == 5.0  # counted in absolute steps (the old rule) it ended at 17.6
    assert all(a >= b for a, b in zip(lams, lams[1:], strict=False))
    head.t.zero_()
    head.eval()
    assert head.lam == 5.0  # validation losses of different epochs are comparable


def test_sphereface_without_a_known_length_counts_absolute_steps() -> None:
    head = SphereFace(8, 4).train()
    head.t.fill_(1658)
    assert head.lam == pytest.approx(5.0, rel=1e-3)


def tiny(**over: object) -> tuple:
    return tiny_run(8, 16, 8, **over)  # fp16 runs emulated on most CPUs: one step an epoch


def test_fp16_scaler_is_one_per_run_saved_and_resumed(tmp_path: Path) -> None:
    """fp16 autocast runs on CPUs too, so the GradScaler path is tested here (CUDA without bf16 uses it)."""
    params, splits, model, head = tiny(amp="fp16")
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "straight", lambda st: None)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)

    def stop_after_first_epoch(st: dict) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # fit's handler only flags it: the run stops at this epoch boundary

    params, splits, model, head = tiny(amp="fp16")
    with pytest.raises(fit_mod.TrainingInterrupted):
        fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "cut", stop_after_first_epoch)
    first = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and first["scaler"]["scale"] > 0
    _, splits, model, head = tiny(amp="fp16")
    model.load_state_dict(first["model"])
    head.load_state_dict(first["head"])
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "cut", lambda st: None, first)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert resumed["scaler"] == straight["scaler"]
    steps = len(splits.train_x) // params.batch_size
    if resumed["scaler"]["scale"] == first["scaler"]["scale"]:  # no overflow in epoch 2: the count goes on
        assert resumed["scaler"]["_growth_tracker"] == first["scaler"]["_growth_tracker"] + steps
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@pytest.mark.parametrize("bins", [1 << 10, 1 << 20, 1 << 24])
def test_histogram_bins_are_exact_and_duplicates_fit(bins: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 32, generator=g), dim=1)
    q, g_ = torch.cat([x, x[:2]]), torch.cat([x, x[:3]])  # exact duplicates: scores of 1 (or a hair above)
    ql, gl = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1]), torch.tensor([1, 0, 0, 1, 2, 2, 0, 0, 1])
    st = score_statistics(q, ql, g_, gl, bins=bins, chunk=3, identification=False)
    assert int(st["genuine_hist"].sum() + st["impostor_hist"].sum()) == len(q) * len(g_)
    s = F.normalize(q, dim=1) @ F.normalize(g_, dim=1).T  # float32, as the streamed pass computes them
    want = ((s.double() * (bins // 2)).floor() + bins // 2).clamp(0, bins - 1).long()
    genuine = ql[:, None] == gl[None, :]
    for hist, mask in ((st["genuine_hist"], genuine), (st["impostor_hist"], ~genuine)):
        ref = torch.bincount(want[mask], minlength=bins)
        # the product order may differ from the reference matmul by an ulp: compare at one-bin tolerance
        nz = torch.nonzero(hist).flatten()
        assert int(hist.sum()) == int(mask.sum())
        assert all(int(ref[max(0, b - 1):b + 2].sum()) >= 1 for b in nz.tolist())
    # the identical vectors of different labels are impostors at the top bin, never genuine ones
    assert int(st["impostor_hist"][bins - 1]) >= 2


def test_hist_bins_must_be_a_power_of_two() -> None:
    from utils.core.config import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        resolve(TrainArcFaceParams(), {"hist_bins": 3000})


def test_seeds_do_not_share_batch_orders_or_augmentations() -> None:
    one = DistContext(0, 1)
    a = engine.epoch_indices(1000, resolve(TrainArcFaceParams(), {"seed": 0}), epoch=1, ctx=one)
    b = engine.epoch_indices(1000, resolve(TrainArcFaceParams(), {"seed": 1}), epoch=0, ctx=one)
    assert not torch.equal(a, b)  # seed + epoch gave both the same order
    assert not torch.equal(augmentation_table(100, 0, 1), augmentation_table(100, 1, 0))
    again = engine.epoch_indices(1000, resolve(TrainArcFaceParams(), {"seed": 0}), epoch=1, ctx=one)
    assert torch.equal(a, again)
