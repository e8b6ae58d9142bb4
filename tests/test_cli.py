"""End-to-end quick_debug runs of main.py through the command line on real MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL, call_main, needs_mnist, quick, run_main

METRIC_KEYS = {"acc_1nn", "acc_head", "eer", "eer_threshold", "tar_at_far", "auc", "best_epoch", "epochs_trained",
               "train_seconds", "eval_seconds", "device", "n_query", "n_gallery", "n_pairs"}


def check_model_outputs(results: Path, name: str) -> dict:
    folder = results / name
    for f in ("params.json", "history.csv", "loss.png", "metrics.json", "far_frr.csv", "eval.npz", "failures.json"):
        assert (folder / f).is_file(), f
    m = json.loads((folder / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert set(m["tar_at_far"]) == {"1e-02", "1e-03", "1e-04", "1e-05"}
    assert m["n_pairs"] == m["n_query"] * m["n_gallery"] == 500 * 512
    assert 0.0 <= m["eer"] <= 1.0 and 0.0 <= m["acc_1nn"] <= 1.0
    header = (folder / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_loss,val_acc,val_angle_deg,lr,seconds"
    return m


@needs_mnist
def test_softmax_alone(tmp_path: Path) -> None:
    """`main.py softmax` on its own (arcface alone runs in test_experiment's resume test)."""
    r = call_main("softmax", *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = check_model_outputs(tmp_path / "results", "resnet18_softmax")
    # without the bar (logs, nohup): one line per epoch with rate and ETA, one per evaluation stage
    assert "epoch 1/1: train" in r.stdout and "img/s" in r.stdout and "ETA" in r.stdout
    assert "embed gallery: 512 img in" in r.stdout and "embed queries: 500 img in" in r.stdout
    # accuracies are exact fractions of counts, not float32 means
    for key, n in (("acc_1nn", m["n_query"]), ("acc_head", m["n_query"])):
        assert m[key] == round(m[key] * n) / n
    params = json.loads((tmp_path / "results" / "resnet18_softmax" / "params.json").read_text())
    assert not Path(params["data_root"]).is_absolute()
    assert (tmp_path / "results" / "DET.png").is_file()
    assert (tmp_path / "ckp" / "resnet18_softmax" / "best.pt").is_file()
    assert not (tmp_path / "results" / "resnet18_arcface").exists()


def test_compare_writes_both_models(compared: Path) -> None:
    for name in ("resnet18_arcface", "resnet18_softmax"):
        check_model_outputs(compared / "results", name)
        assert (compared / "ckp" / name / "best.pt").is_file() and (compared / "ckp" / name / "last.pt").is_file()
    assert (compared / "results" / "DET.png").is_file()


def test_test_command_reevaluates_saved_checkpoints(compared_copy: Path) -> None:
    tmp = compared_copy
    before = {n: json.loads((tmp / "results" / n / "metrics.json").read_text())
              for n in ("resnet18_arcface", "resnet18_softmax")}
    det = tmp / "results" / "DET.png"
    det.unlink()
    r = call_main("test", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert det.is_file() and "resnet18_arcface: 1-NN acc" in r.stdout and "resnet18_softmax" in r.stdout
    for n, m in before.items():
        again = check_model_outputs(tmp / "results", n)
        assert again["acc_1nn"] == pytest.approx(m["acc_1nn"]) and again["eer"] == pytest.approx(m["eer"], abs=1e-6)
        assert again["best_epoch"] == m["best_epoch"] and again["epochs_trained"] == m["epochs_trained"]
    # one named model (a seeds-study run, a recipe candidate): the class that trained it evaluates it alone
    r = call_main("test", "--model_name=resnet18_softmax", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 0 and "resnet18_softmax: 1-NN acc" in r.stdout and "resnet18_arcface" not in r.stdout, \
        r.stderr
    r = call_main("test", "--model_name=nothing_here", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 2 and "no best checkpoint found" in r.stderr


def test_help_lists_commands_and_fields(tmp_path: Path) -> None:
    r = run_main("--help", cwd=tmp_path)
    assert r.returncode == 0
    for word in ("arcface", "softmax", "compare", "test", "--margin=0.5", "--data_root", "original"):
        assert word in r.stdout


@pytest.mark.parametrize("args,match", [
    (["fly"], "unknown command 'fly'"),
    (["arcface", "--lrr=1"], "unknown field 'lrr'"),
    (["arcface", "--margin=4"], "margin=4.0 is out of range for arcface"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], match: str) -> None:
    r = run_main(*args, cwd=tmp_path)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()


def test_committed_results_hold_no_absolute_paths() -> None:
    """Results files in git must not carry the layout of the machine that made them."""
    from conftest import ROOT

    def strings(obj: object) -> list[str]:
        if isinstance(obj, dict):
            return [s for v in obj.values() for s in strings(v)]
        if isinstance(obj, list):
            return [s for v in obj for s in strings(v)]
        return [obj] if isinstance(obj, str) else []

    found = [(f.relative_to(ROOT), s) for f in sorted((ROOT / "results").rglob("*.json"))
             for s in strings(json.loads(f.read_text())) if s.startswith(("/", "~"))]
    assert not found, found[:5]


def test_production_code_has_no_test_hooks() -> None:
    """No environment switches or functions that exist only for the tests."""
    import re

    from conftest import ROOT

    files = [f for d in ("utils", "losses", "models", "bench") for f in (ROOT / d).glob("*.py")]
    files += [ROOT / "main.py", ROOT / "trainArcFace.py", ROOT / "trainResnet.py"]
    pattern = re.compile(r"for_test|_TEST_|TEST_[A-Z]+|if .*pytest")
    hits = [(f.name, line) for f in files for line in f.read_text().splitlines() if pattern.search(line)]
    assert not hits, hits


def test_help_explains_every_field_and_option(tmp_path: Path) -> None:
    from dataclasses import fields

    from utils.core.config import TrainParams

    for command in ("arcface", "softmax"):
        out = call_main(command, "--help", cwd=tmp_path).stdout
        for f in fields(TrainParams):  # each field: its default, then a meaning of more than a few characters
            line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"--{f.name}="))
            assert len(line.split(None, 1)[1]) > 15, line
    assert "additive angular margin" in call_main("arcface", "--help", cwd=tmp_path).stdout
    assert "used by sphereface, cosface, arcface, subcenter_arcface (not by softmax)" in \
        call_main("softmax", "--help", cwd=tmp_path).stdout
    out = call_main("verify", "--help", cwd=tmp_path).stdout
    assert "--far=1e-3" in out and "false acceptance rate" in out and "--json=false" in out


@pytest.mark.parametrize("command,own", [
    ("grid", ("--losses=", "--datasets=", "--seeds=3", "GRID_BUDGET")),
    ("figures", ("--models=", "--toy=true", "--reuse=false", "--data_root=")),
    ("compare", ("--seeds=", "--reuse=false", "--lr=0.001")),
    ("test", ("without training", "--ckpt_dir=")),
    ("wild", ("--per_font=3", "--model_name=resnet18_arcface")),
    ("export", ("--out=...", "--data_root=")),
])
def test_every_command_shows_its_own_page(tmp_path: Path, command: str, own: tuple[str, ...]) -> None:
    """One command table (main.COMMANDS): `COMMAND --help` is that command's page, not the overview."""
    import main

    page = main.usage(command)
    assert page.startswith(f"usage: python main.py {command} ")
    assert all(word in page for word in own), (command, [w for w in own if w not in page])
    assert "presets (--preset=NAME)" not in page  # the overview's section


def test_figures_refuses_the_fields_it_would_ignore(tmp_path: Path) -> None:
    r = run_main("figures", "--lr=0.1", "--toy=false", cwd=tmp_path)
    assert r.returncode == 2 and "figures does not use --lr" in r.stderr and "--data_root" in r.stderr
    assert not (tmp_path / "results").exists()
