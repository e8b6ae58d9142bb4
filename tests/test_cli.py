"""End-to-end quick_debug runs of main.py through the command line on real MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, needs_mnist

METRIC_KEYS = {"acc_1nn", "acc_head", "eer", "eer_threshold", "tar_at_far", "auc", "best_epoch", "epochs_trained",
               "train_seconds", "eval_seconds", "device", "n_query", "n_gallery", "n_pairs"}


def run_main(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def quick(tmp: Path) -> list[str]:
    return ["--quick_debug=true", "--use_tqdm=false", f"--results_dir={tmp / 'results'}", f"--ckpt_dir={tmp / 'ckp'}"]


def check_model_outputs(results: Path, name: str) -> dict:
    folder = results / name
    for f in ("params.json", "history.csv", "loss.png", "metrics.json", "far_frr.csv"):
        assert (folder / f).is_file(), f
    m = json.loads((folder / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert set(m["tar_at_far"]) == {"1e-02", "1e-03", "1e-04", "1e-05"}
    assert m["n_pairs"] == m["n_query"] * m["n_gallery"] == 500 * 512
    assert 0.0 <= m["eer"] <= 1.0 and 0.0 <= m["acc_1nn"] <= 1.0
    header = (folder / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_loss,val_acc,lr,seconds"
    return m


@needs_mnist
@pytest.mark.parametrize("command,name", [("arcface", "resnet18_arcface"), ("softmax", "resnet18_softmax")])
def test_single_model(tmp_path: Path, command: str, name: str) -> None:
    r = run_main(command, *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    check_model_outputs(tmp_path / "results", name)
    assert (tmp_path / "results" / "DET.png").is_file()
    assert (tmp_path / "ckp" / name / "best.pt").is_file()


@needs_mnist
def test_compare_then_test(tmp_path: Path) -> None:
    r = run_main("compare", *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = {n: check_model_outputs(tmp_path / "results", n) for n in ("resnet18_arcface", "resnet18_softmax")}
    det = tmp_path / "results" / "DET.png"
    det.unlink()
    r = run_main("test", *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert det.is_file() and "resnet18_arcface: 1-NN acc" in r.stdout and "resnet18_softmax" in r.stdout
    for n, m in before.items():
        again = check_model_outputs(tmp_path / "results", n)
        assert again["acc_1nn"] == pytest.approx(m["acc_1nn"]) and again["eer"] == pytest.approx(m["eer"], abs=1e-6)


def test_help_lists_commands_and_fields(tmp_path: Path) -> None:
    r = run_main("--help", cwd=tmp_path)
    assert r.returncode == 0
    for word in ("arcface", "softmax", "compare", "test", "--margin=0.5", "--data_root", "original"):
        assert word in r.stdout


@pytest.mark.parametrize("args,match", [
    (["fly"], "unknown command 'fly'"),
    (["arcface", "--lrr=1"], "unknown field 'lrr'"),
    (["arcface", "--margin=4"], "margin=4.0 out of range"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], match: str) -> None:
    r = run_main(*args, cwd=tmp_path)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()
