"""Weight EMA: the update rule against a float64 recursion, and its place in fit (selection, resume)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import tiny_run

from trainArcFace import TrainArcFaceParams
from utils.core.config import ConfigError, resolve
from utils.run.experiment import load_weights
from utils.training import engine
from utils.training import fit as fit_mod
from utils.training.ema import WeightEMA


def test_update_matches_a_float64_recursion_with_warmup() -> None:
    torch.manual_seed(0)
    model, head = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)), torch.nn.Linear(4, 2)
    ema = WeightEMA(model, head, decay=0.9)
    ref = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for t in range(30):
        with torch.no_grad():  # stand-in for an optimiser step and a BatchNorm statistics update
            for p in [*model.parameters(), *model[1].buffers()]:
                if p.is_floating_point():
                    p.add_(torch.randn_like(p))
            model[1].num_batches_tracked += 1
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            if k in ref:
                ref[k] = d * ref[k] + (1 - d) * v.double()
    for k, v in ema.model.state_dict().items():
        if k in ref:
            torch.testing.assert_close(v.double(), ref[k], rtol=1e-5, atol=1e-6)
    assert ema.model[1].num_batches_tracked.item() == 30  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_bad_decay_is_refused() -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        resolve(TrainArcFaceParams(), {"ema_decay": 1.0})


def _tiny(ema_decay: float) -> tuple:
    return tiny_run(16, 48, 32, amp="off", ema_decay=ema_decay)


def test_ema_is_validated_and_saved_but_never_changes_training(tmp_path) -> None:
    runs = {}
    for decay in (0.0, 0.9):
        params, splits, model, head = _tiny(decay)
        fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / str(decay), lambda h: None)
        runs[decay] = torch.load(tmp_path / str(decay) / "last.pt", weights_only=True)
    off, on = runs[0.0], runs[0.9]
    assert off["ema"] is None and on["ema"]["updates"] == 2 * 4
    for k, v in off["model"].items():  # the raw trajectory is the same with and without the EMA
        assert torch.equal(v, on["model"][k]), k
    # the recorded validation loss is the EMA's, and evaluation loads the EMA weights
    params, splits, model, head = _tiny(0.9)
    load_weights(model, head, on)
    loss, _, _ = engine.validate(model, head, splits.val_x, splits.val_y, params, torch.device("cpu"))
    assert loss == pytest.approx(on["history"][-1]["val_loss"], rel=1e-6)
    load_weights(model, head, on, averaged=False)
    assert all(torch.equal(v, on["model"][k]) for k, v in model.state_dict().items())


def test_an_ema_handed_to_fit_is_the_one_updated_validated_and_saved(tmp_path) -> None:
    params, splits, model, head = _tiny(0.9)
    ema = WeightEMA(model, head, 0.9)
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "own", lambda h: None, ema=ema)
    state = torch.load(tmp_path / "own" / "last.pt", weights_only=True)
    assert ema.updates == 2 * 4  # once per step: fit does not add a second average of its own
    assert all(torch.equal(v, state["ema"]["model"][k]) for k, v in ema.model.state_dict().items())
    params, splits, model, head = _tiny(0.9)
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "fits", lambda h: None)
    ref = torch.load(tmp_path / "fits" / "last.pt", weights_only=True)
    assert all(torch.equal(v, ref["ema"]["model"][k]) for k, v in state["ema"]["model"].items())
    assert state["history"][-1]["val_loss"] == ref["history"][-1]["val_loss"]


def test_resume_mid_epoch_restores_the_ema(tmp_path) -> None:
    params, splits, model, head = _tiny(0.9)
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "full", lambda h: None)
    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)

    params, splits, model, head = _tiny(0.9)
    def kill_at_step(epoch: int, step: int, value: float) -> None:
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)  # fit's handler only flags the stop

    with pytest.raises(fit_mod.TrainingInterrupted):
        fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "cut", lambda h: None,
                   on_step=kill_at_step)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["partial"]["step"] == 3 and state["ema"]["updates"] == 4 + 3  # seen one step later
    params, splits, model, head = _tiny(0.9)
    load_weights(model, head, state, averaged=False)
    fit_mod.fit(params, model, head, splits, torch.device("cpu"), tmp_path / "cut", lambda h: None, state)
    resumed = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for part in ("model", "head"):
        for k, v in full["ema"][part].items():
            assert torch.equal(v, resumed["ema"][part][k]), (part, k)


def test_grid_runs_saved_before_the_ema_existed_are_still_reused(tmp_path) -> None:
    import dataclasses
    import json

    from utils.core.presets import GRID_BUDGET as BUDGET
    from utils.run.experiment import quick_debug_params
    from utils.run.reuse import finished

    p = resolve(TrainArcFaceParams(), {**BUDGET, "results_dir": str(tmp_path), "ema_decay": 0.0, "eval_amp": True})
    old = dataclasses.asdict(quick_debug_params(p))
    del old["ema_decay"], old["eval_amp"]  # a params.json written before the fields were added
    (tmp_path / p.model_name).mkdir()
    (tmp_path / p.model_name / "params.json").write_text(json.dumps(old))
    (tmp_path / p.model_name / "metrics.json").write_text(json.dumps({"acc_1nn": 0.5}))
    assert finished(p) == {"acc_1nn": 0.5}
    assert finished(dataclasses.replace(p, ema_decay=0.99)) is None  # a run with an EMA is not that run
    assert finished(dataclasses.replace(p, eval_amp=False)) is None  # nor one embedded in fp32
