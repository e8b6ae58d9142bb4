"""bench.recipe: recipe candidates trained as main.py would, scored on validation only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import call_module, needs_mnist, quick


def recipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return call_module("bench.recipe", *args, cwd=cwd)


def test_bad_arguments_are_refused_before_training(tmp_path: Path) -> None:
    r = recipe("--lr=1e-3", cwd=tmp_path)
    assert r.returncode == 2 and "--name=: required" in r.stderr
    r = recipe("--name=x", "--losses=triplet", cwd=tmp_path)
    assert r.returncode == 2 and "--losses" in r.stderr
    r = recipe("--name=x", "--seeds=a", cwd=tmp_path)
    assert r.returncode == 2 and "--seeds=a" in r.stderr


@needs_mnist
def test_candidate_is_scored_on_validation_and_summarised(tmp_path: Path) -> None:
    r = recipe("--name=lowlr", "--losses=softmax", "--seeds=0", "--lr=5e-4", *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "results" / "bench" / "recipe" / "lowlr_softmax_s0.json").read_text())
    run = d["runs"][0]
    assert d["overrides"]["lr"] == 5e-4 and d["params"]["softmax"]["lr"] == 5e-4
    assert 0 <= run["val_acc_1nn"] <= 1 and 0 <= run["val_eer"] <= 1 and run["epochs_trained"] == 1
    assert not (tmp_path / "results" / "resnet18_softmax").exists()  # no test-set report is written
    r = recipe("--summary=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| lowlr | --lr=0.0005" in r.stdout and "| softmax | 1 | 1 | " in r.stdout
    assert "| lowlr | softmax | 0 | " in r.stdout  # the per-epoch table


@needs_mnist
def test_only_train_and_validation_images_are_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.recipe as br
    from trainResnet import TrainResnetParams
    from utils.core.config import resolve

    seen: dict = {}
    real_prepare, real_embed = br.prepare_run, br.embed

    def prepare(params, device, measure=True):
        out = real_prepare(params, device, measure)
        seen["splits"] = out[0]
        return out

    def embed(model, x, *a, **k):
        seen.setdefault("embedded", []).append(x)
        return real_embed(model, x, *a, **k)

    monkeypatch.setattr(br, "prepare_run", prepare)
    monkeypatch.setattr(br, "embed", embed)
    params = resolve(TrainResnetParams(), {"quick_debug": True, "img_size": 16, "use_tqdm": False,
                                           "ckpt_dir": str(tmp_path)})
    r = br.train_and_score(params, per_epoch=True)
    s = seen["splits"]
    # after the one quick_debug epoch, then the best checkpoint: validation queries against the train gallery
    assert [x is s.val_x or x is s.train_x for x in seen["embedded"]] == [True] * 4
    assert 0 <= r["val_acc_1nn"] <= 1
    assert [e["epoch"] for e in r["epochs"]] == [1] and 0 <= r["epochs"][0]["val_eer"] <= 1
    assert r["precision"] in ("fp32", "bf16") and r["machine"]["kernels"] and r["tiny_conv"] in ("true", "false")


@needs_mnist
def test_ema_probe_scores_raw_and_averaged_weights_on_validation(tmp_path: Path) -> None:
    r = call_module("bench.ema", "--loss=softmax", "--decays=0.9,0.99", "--knn_epochs=0", "--name=probe",
                    *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "results" / "bench" / "ema_softmax_probe.json").read_text())
    assert [row["decay"] for row in d["rows"]] == [0.0, 0.9, 0.99]
    assert all(0 <= row["val_acc_1nn"] <= 1 and row["val_loss"] > 0 for row in d["rows"])
    assert d["rows"][1]["val_loss"] != d["rows"][0]["val_loss"]  # the averaged weights differ from the raw ones
    for bad in ("--decays=1.5", "--name=../x"):
        r = call_module("bench.ema", bad, cwd=tmp_path)
        assert r.returncode == 2 and bad.split("=")[0] in r.stderr


@needs_mnist
def test_time_to_accuracy_reports_reached_and_given_up(tmp_path: Path) -> None:
    from bench.train import time_to_accuracy

    out = tmp_path / "tta.json"
    small = {"quick_debug": True, "img_size": 16, "ema_decay": 0.9, "ckpt_dir": str(tmp_path / "ckp")}
    time_to_accuracy(0.0, str(out), None, overrides=small)
    d = json.loads(out.read_text())
    assert d["reached"] and d["log"][0]["epochs"] == 0.5 and d["seconds"] == d["log"][0]["train_seconds"]
    time_to_accuracy(1.01, str(out), 3, max_minutes=0.0, overrides=small, evals_per_epoch=1)  # gives up at once
    d = json.loads(out.read_text())
    assert not d["reached"] and d["seconds"] is None and d["params"]["total_epochs"] == 3
    assert [r["epochs"] for r in d["log"]] == [1.0]


@needs_mnist
def test_toy_recipe_candidates_record_validation_accuracy_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "toy.json"
    args = ["--losses=softmax,arcface", "--epochs=2", "--train_images=512", "--widths=8", "--arcface=8:0.1,10:0.2",
            f"--out={out}"]
    r = call_module("bench.toy_recipe", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    c = report["candidates"]
    assert [(x["loss"], x.get("margin")) for x in c] == [("softmax", None), ("arcface", 0.1), ("arcface", 0.2)]
    assert all(len(x["val_acc"]) == 2 and all(0 <= a <= 1 for a in x["val_acc"]) for x in c)
    assert report["machine"]["kernels"] and all(x["made_by"] and x["kernels"] for x in c)
    args = ["--losses=normface", "--epochs=1", "--train_images=512", "--widths=8", "--avx2=true", f"--out={out}"]
    r = call_module("bench.toy_recipe", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    last = json.loads(out.read_text())["candidates"][-1]
    if last["kernels"] != "avx2":  # timed again on the AVX2 kernels, side by side
        assert set(last["seconds_on"]) == {last["kernels"], "avx2"} and last["slowdown_on_avx2_kernels"] > 0
    else:  # nothing faster to compare with
        assert "slowdown_on_avx2_kernels" not in last
    r = call_module("bench.toy_recipe", "--epochs=0", f"--out={out}", cwd=tmp_path)
    assert r.returncode == 2 and "--epochs" in r.stderr
