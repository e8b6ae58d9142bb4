"""The pictures of `python main.py figures`: their numbers on synthetic inputs, the command on the quick models,
its bad inputs, and the optional TensorBoard log."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import call_main, needs_mnist, quick

from utils.scoring.angles import angle_stats
from utils.scoring.metrics import metrics_from_histograms, rebin, score_statistics


def test_angles_of_known_vectors() -> None:
    deg = math.radians
    # two classes on the plane: centres at 0 and 90 degrees, weights at 10 and 80 degrees
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([[math.cos(deg(10)), math.sin(deg(10))], [math.cos(deg(80)), math.sin(deg(80))]])
    emb = torch.tensor([[math.cos(deg(20)), math.sin(deg(20))], [math.cos(deg(60)), math.sin(deg(60))]]) * 3
    y = torch.tensor([0, 1])
    s = angle_stats(emb, y, centres * 5, weights)
    torch.testing.assert_close(s["own"], torch.tensor([20.0, 30.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(s["other"], torch.tensor([70.0, 60.0]), atol=1e-4, rtol=0)
    t = s["table3"]
    assert t["W-EC"] == pytest.approx((10 + 20) / 2, abs=1e-4)  # 20-10 and 80-60 degrees
    assert t["W-Inter"] == pytest.approx(70, abs=1e-4) and t["Inter"] == pytest.approx(90, abs=1e-4)
    assert t["Intra"] == pytest.approx(25, abs=1e-4)


def test_failure_lists_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g)
    qy, gy = torch.randint(0, 4, (70,), generator=g), torch.randint(0, 4, (150,), generator=g)
    q = centres[qy] + 1.5 * torch.randn(70, 8, generator=g)
    gal = centres[gy] + 1.5 * torch.randn(150, 8, generator=g)
    k = 7
    st = score_statistics(q, qy, gal, gy, bins=1 << 12, chunk=16, extremes=k)
    s = F.normalize(q, dim=1) @ F.normalize(gal, dim=1).T
    genuine = qy[:, None] == gy[None, :]
    low = torch.sort(s[genuine])[0][:k]
    high = torch.sort(s[~genuine], descending=True)[0][:k]
    torch.testing.assert_close(st["low_genuine"][:, 0].float(), low, atol=1e-5, rtol=0)
    torch.testing.assert_close(st["high_impostor"][:, 0].float(), high, atol=1e-5, rtol=0)
    for row, want_genuine in ((st["low_genuine"][0], True), (st["high_impostor"][0], False)):
        qi, gi = int(row[1]), int(row[2])  # indices point at the pair that has that score
        assert float(s[qi, gi]) == pytest.approx(float(row[0]), abs=1e-5) and bool(genuine[qi, gi]) == want_genuine
    nn = s.argmax(1)
    assert torch.equal(st["nn_index"], nn) and torch.equal(st["nn_labels"], gy[nn])


def test_saved_histograms_give_the_evaluation_eer() -> None:
    g = torch.Generator().manual_seed(1)
    gen = torch.bincount(torch.randint(600, 1024, (5000,), generator=g), minlength=1 << 10)
    imp = torch.bincount(torch.randint(0, 700, (50000,), generator=g), minlength=1 << 10)
    full, coarse = metrics_from_histograms(gen, imp), metrics_from_histograms(rebin(gen, 256), rebin(imp, 256))
    assert int(rebin(gen, 256).sum()) == 5000 and int(rebin(imp, 256).sum()) == 50000
    # coarse edges are fine edges: the EER moves by at most the pairs in one coarse bin around it
    assert abs(full["eer"] - coarse["eer"]) <= 4 * (int(gen[600:704].max()) + int(imp[600:704].max())) / 5000


@needs_mnist
def test_figures_command_on_the_quick_models(compared_copy: Path) -> None:
    tmp = compared_copy
    r = call_main("figures", "--toy=false", f"--results_dir={tmp / 'results'}", f"--ckpt_dir={tmp / 'ckp'}", cwd=tmp)
    assert r.returncode == 0, r.stderr
    out = tmp / "results" / "figures"
    for name in ("scores", "angles", "failures", "embeddings_2d"):
        assert (out / f"{name}.png").is_file() and (out / f"{name}.json").is_file(), name
    angles = json.loads((out / "angles.json").read_text())
    assert set(angles) == {"resnet18_arcface", "resnet18_softmax"}
    assert set(angles["resnet18_arcface"]["table3_deg"]) == {"W-EC", "W-Inter", "Intra", "Inter"}
    metrics = json.loads((tmp / "results" / "resnet18_arcface" / "metrics.json").read_text())
    with np.load(tmp / "results" / "resnet18_arcface" / "eval.npz", allow_pickle=False) as z:
        saved = metrics_from_histograms(torch.from_numpy(z["test_genuine"]), torch.from_numpy(z["test_impostor"]))
        assert int(z["test_genuine"].sum() + z["test_impostor"].sum()) == metrics["n_pairs"]
    assert saved["eer"] == pytest.approx(metrics["eer"], abs=1e-12)  # quick runs keep all 2**16 bins
    fails = json.loads((tmp / "results" / "resnet18_arcface" / "failures.json").read_text())
    assert len(fails["misidentified"]) == round((1 - metrics["acc_1nn"]) * metrics["n_query"])


@needs_mnist
def test_figures_says_what_to_run_first(tmp_path: Path, compared_copy: Path) -> None:
    r = call_main("figures", f"--results_dir={tmp_path / 'none'}", f"--ckpt_dir={tmp_path / 'none'}")
    assert r.returncode == 2 and "train it first (python main.py compare)" in r.stderr
    (compared_copy / "results" / "resnet18_softmax" / "eval.npz").unlink()
    r = call_main("figures", f"--results_dir={compared_copy / 'results'}", f"--ckpt_dir={compared_copy / 'ckp'}")
    assert r.returncode == 2 and "lacks eval.npz" in r.stderr
    assert "python main.py test --model_name=resnet18_softmax" in r.stderr
    # a checkpoint beside another run's evaluation (issue 34: an IndexError) is refused in one line
    for f in ("metrics.json", "eval.npz", "failures.json"):
        shutil.copy(compared_copy / "results" / "resnet18_arcface" / f, compared_copy / "results" / "resnet18_softmax")
    r = call_main("figures", "--toy=false", f"--results_dir={compared_copy / 'results'}",
                  f"--ckpt_dir={compared_copy / 'ckp'}")
    assert r.returncode == 2 and "come from different runs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (compared_copy / "ckp" / "resnet18_arcface" / "best.pt").write_bytes(b"foreign")
    r = call_main("figures", f"--results_dir={compared_copy / 'results'}", f"--ckpt_dir={compared_copy / 'ckp'}")
    assert r.returncode == 2 and "unreadable" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_tensorboard_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainArcFace import TrainArcFaceParams
    from utils.core.config import ConfigError, resolve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        resolve(TrainArcFaceParams(), {"tensorboard": True})


@needs_mnist
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is optional")
def test_tensorboard_log(tmp_path: Path) -> None:
    r = call_main("arcface", *quick(tmp_path), "--tensorboard=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tb = tmp_path / "results" / "resnet18_arcface" / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*")) and (tb / "projector_config.pbtxt").is_file()


@needs_mnist
def test_toy_runs_use_the_toy_recipe_record_validation_accuracy_and_reuse_only_matching_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import utils.cli.figures as figs
    import utils.run.toy as toy
    from models.toy import ToyNet
    from trainArcFace import TrainArcFaceParams
    from utils.core.config import resolve

    # one loss on a few images: the same code path as the committed ten runs, in seconds
    monkeypatch.setattr(toy, "toys", lambda: {"arcface": {"scale": 10.0, "margin": 0.2}})
    monkeypatch.setattr(toy, "TOY_TRAIN", 128)
    monkeypatch.setattr(toy, "TOY_VAL", 64)
    monkeypatch.setattr(toy, "TOY_POINTS", 32)
    monkeypatch.setattr(toy, "TOY_EPOCHS", {2: 2, 3: 1})
    monkeypatch.setattr(toy, "STRIP_EPOCHS", (1,))
    monkeypatch.setattr(toy, "TOY_FIT", {**toy.TOY_FIT, "batch_size": 32})  # 128 images: four steps an epoch
    seen, real_fit = [], toy.fit

    def spy_fit(params, model, *a, **k):  # noqa: ANN001, ANN202 - records what each toy run trained with
        seen.append((type(model), params.lr, params.batch_size, params.warmup_epochs, params.total_epochs,
                     params.ema_decay, params.amp, params.augment, params.scale, params.margin))
        return real_fit(params, model, *a, **k)

    monkeypatch.setattr(toy, "fit", spy_fit)
    base = resolve(TrainArcFaceParams(), {"data_root": os.environ["DATA_ROOT"], "device": "cpu", "use_tqdm": False,
                                          "scale": 16.0, "margin": 0.5})
    out = tmp_path / "figures"
    summary = figs.toy_figures(base, out, reuse=False)
    fit_opts = toy.TOY_FIT
    assert seen == [(ToyNet, fit_opts["lr"], fit_opts["batch_size"], fit_opts["warmup_epochs"], epochs, 0.0, "off",
                     False, 10.0, 0.2) for epochs in (2, 1)]  # the toy's scale and margin, not the base run's
    saved = json.loads((out / "features.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["fit"] == fit_opts
    for key, epochs, snaps in (("2d_arcface", 2, [1]), ("3d_arcface", 1, [])):
        with np.load(out / "toy" / f"{key}.npz", allow_pickle=False) as z:
            assert saved["runs"][key]["val_acc"] == round(float(z["val_acc"]), 4)
            assert len(saved["runs"][key]["val_acc_epochs"]) == epochs
            made_by = saved["runs"][key]["made_by"]
            assert made_by["precision"] == "fp32" and "git_commit" in made_by and "kernels" in made_by
            assert saved["runs"][key]["val_acc_epochs"][-1] == saved["runs"][key]["val_acc"]
            # 64 validation images: the accuracy is a multiple of 1/64
            assert float(z["val_acc"]) * 64 == pytest.approx(round(float(z["val_acc"]) * 64), abs=1e-6)
            assert z["snap_epochs"].tolist() == snaps and z["snap_x"].shape == (len(snaps), 32, int(key[0]))
            assert z["x"].shape == (32, int(key[0])) and np.allclose(np.linalg.norm(z["x"], axis=1), 1, atol=1e-5)
    for name in ("features_2d.png", "features_3d.png", "features_2d_epochs.png"):
        assert (out / name).stat().st_size > 10_000

    retrained, kept = [], tmp_path / "kept"
    shutil.copytree(out / "toy", kept)

    def spy_train(loss: str, dim: int, *a: object) -> dict:  # the saved run stands in for a new one
        retrained.append((loss, dim))
        with np.load(kept / f"{dim}d_{loss}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    monkeypatch.setattr(toy, "train_toy", spy_train)
    assert figs.toy_figures(base, out, reuse=True) == summary and retrained == []  # redrawn without training
    (out / "toy" / "3d_arcface.npz").write_bytes(b"not an npz")  # damaged: trained again, not a crash
    figs.toy_figures(base, out, reuse=True)
    assert retrained == [("arcface", 3)]
    retrained.clear()
    monkeypatch.setattr(toy, "TOY_FIT", {**fit_opts, "lr": fit_opts["lr"] / 2})
    figs.toy_figures(base, out, reuse=True)  # saved under another recipe: trained again, not passed off as new
    assert retrained == [("arcface", 2), ("arcface", 3)]


def test_det_axes_have_one_tick_style_no_empty_decade_and_a_legend_off_the_curves() -> None:
    from utils.scoring import plots

    far = np.logspace(-5, 0, 50)  # FRR falls to ~1.4e-4 where FAR reaches 50 %: nothing lives below it
    frr = np.clip(1e-4 / np.sqrt(far), 0, 1)
    fig = plots.det_figure([{"label": "a", "far": far, "frr": frr, "eer": 0.01}])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert labels and all(t.endswith("%") and "e" not in t for t in labels)
    lo_y = plots._probit(np.array([frr[far <= 0.5].min() * 0.5]))[0]
    assert ax.get_ylim()[0] == pytest.approx(lo_y)  # the y axis starts where the curve does
    assert ax.get_xlim()[0] < plots._probit(np.array([1e-4]))[0]  # the x axis holds the curve's left end
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y0 < ax.get_window_extent().y0  # below the axes
    plots.close(fig)
