"""The seeds study (`compare --seeds`): its statistics by hand, McNemar against known tables, which runs
it reuses, what every run records, and a two-seed study end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, call_main, needs_mnist, quick

from utils.cli import seeds as study
from utils.run import reuse
from utils.scoring.stats import mcnemar, paired, spread

A, B = "a" * 40, "b" * 40


def test_spread_and_paired_difference_by_hand() -> None:
    s = spread([0.99, 0.995, 0.992])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.992333333333)
    # sample std: deviations -0.002333, 0.002667, -0.000333 -> sum of squares 1.26667e-5 / (n - 1)
    assert s["std"] == pytest.approx(math.sqrt(1.266666667e-5 / 2))
    d = paired([0.99, 0.995, 0.992], [0.991, 0.993, 0.990])  # differences -0.001, 0.002, 0.002
    assert d["mean"] == pytest.approx(0.001) and d["std"] == pytest.approx(math.sqrt(3e-6))
    half = 4.302652729911275 * math.sqrt(3e-6) / math.sqrt(3)  # t(0.975, 2 dof) * s / sqrt(n)
    assert d["ci95"] == pytest.approx([0.001 - half, 0.001 + half])
    one = paired([0.5], [0.25])
    assert one["mean"] == 0.25 and one["std"] is None and one["ci95"] is None
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])


def test_mcnemar_against_known_tables() -> None:
    exact = mcnemar(1, 9)  # two-sided binomial: 2 * (C(10,0) + C(10,1)) / 2^10
    assert exact["method"] == "exact binomial" and exact["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar(3, 3)["p_value"] == 1.0 and mcnemar(0, 0)["p_value"] == 1.0
    big = mcnemar(25, 5)  # (|25 - 5| - 1)^2 / 30, chi-square with 1 dof: p = erfc(sqrt(x / 2))
    assert big["statistic"] == pytest.approx(361 / 30)
    assert big["p_value"] == pytest.approx(math.erfc(math.sqrt(361 / 60)))
    assert mcnemar(5, 25)["p_value"] == big["p_value"]


def test_code_mismatch_names_why_a_run_is_not_reused() -> None:
    clean_a = {"git_commit": A, "git_dirty": False}
    assert reuse.code_mismatch({"git_commit": A, "git_dirty": False}, clean_a, []) is None
    assert "records no commit" in reuse.code_mismatch({"acc_1nn": 0.9}, clean_a, [])
    assert "uncommitted" in reuse.code_mismatch({"git_commit": A, "git_dirty": True}, clean_a, [])
    assert "not a clean commit" in reuse.code_mismatch({"git_commit": A}, {"git_commit": A, "git_dirty": True}, [])
    other = reuse.code_mismatch({"git_commit": B, "git_dirty": False}, clean_a, [{A}])
    assert "trained by commit bbbbbbbbbb" in other and "--vouch" in other
    assert reuse.code_mismatch({"git_commit": B, "git_dirty": False}, clean_a, [{A, B}]) is None


def test_commits_vouched_against_different_references_are_not_equal(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-pinned golden reference (a change that moved the numbers) splits the vouched commits in two."""
    C = "c" * 40
    old, new = {"checks": [{"reference": "1" * 40}]}, {"checks": [{"reference": "2" * 40}]}
    (tmp_path / "numerics.json").write_text(json.dumps({"commits": {A: old, B: old, C: new}}))
    monkeypatch.setattr(reuse, "VOUCHED", tmp_path / "numerics.json")
    equal = reuse.vouched()
    assert sorted(map(sorted, equal)) == [[A, B], [C]]
    assert reuse.same_numbers({A, B}, equal) and not reuse.same_numbers({A, C}, equal)
    assert "--vouch" in reuse.code_mismatch({"git_commit": C, "git_dirty": False}, {"git_commit": A}, equal)
    (tmp_path / "numerics.json").write_text("{not json")
    assert reuse.vouched() == []


def test_seeds_option_is_checked_before_anything_trains(tmp_path: Path) -> None:
    for bad in ("--seeds=0", "--seeds=abc", "--seeds=1,1", "--seeds=-1,2", "--seeds=101"):
        r = call_main("compare", bad, cwd=tmp_path)
        assert r.returncode == 2 and "--seeds=" in r.stderr, (bad, r.stderr)
    r = call_main("compare", "--seeds=2", "--seed=4", cwd=tmp_path)
    assert r.returncode == 2 and "set by the seeds study" in r.stderr
    r = call_main("compare", "--seeds=2", "--reuse=maybe", cwd=tmp_path)
    assert r.returncode == 2 and "--reuse=maybe: expected true or false" in r.stderr
    assert not (tmp_path / "results").exists()


def test_shared_arm_is_softmax_with_arcface_settings_the_head_alone_differing() -> None:
    """--shared=true: per seed a third run, softmax with the ArcFace model's optimiser, schedule and
    augmentation; fields given on the command line still reach every arm."""
    from dataclasses import fields

    from losses import registry
    from trainArcFace import TrainArcFaceParams
    from trainResnet import TrainResnetParams

    runs = study.plan([0, 3], {"total_epochs": 2}, (TrainArcFaceParams, TrainResnetParams), shared=True)
    assert [(r.model_name, study.arm(r)) for r in runs] == [
        ("resnet18_arcface_s0", "arcface"), ("resnet18_softmax_s0", "softmax"),
        ("resnet18_softmax_shared_s0", "softmax_shared"), ("resnet18_arcface_s3", "arcface"),
        ("resnet18_softmax_s3", "softmax"), ("resnet18_softmax_shared_s3", "softmax_shared")]
    arc, own, same = runs[:3]
    assert own.lr != arc.lr and own.weight_decay != arc.weight_decay  # the default pair's own settings differ
    head = {"model_name", "loss_fuc_type", *registry.hyper_fields()}
    differ = {f.name for f in fields(arc) if getattr(arc, f.name) != getattr(same, f.name)}
    assert same.loss_fuc_type == "softmax" and differ and differ <= head, differ
    assert {r.total_epochs for r in runs} == {2}
    lr = study.plan([0], {"lr": 3e-3}, (TrainArcFaceParams, TrainResnetParams), shared=True)
    assert [r.lr for r in lr] == [3e-3] * 3


def test_summary_compares_both_ways_paired_by_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The shared comparison is paired over the seeds both its arms ran, with McNemar from the failures."""
    def row(name: str, seed: int, acc: float, wrong: set[int]) -> dict:
        return {"arm": name, "seed": seed, "acc_1nn": acc, "eer": 1 - acc, "best_epoch": 0, "git_commit": A,
                "tar_at_far": {"1e-03": acc, "1e-04": acc}, "_wrong": wrong, "n_query": 10_000,
                "tar_at_val_threshold": {t: {"tar": acc - 0.001, "far": 8e-4} for t in ("1e-03", "1e-04")}}
    rows = [row("arcface", 0, 0.990, {1, 2}), row("arcface", 1, 0.992, {3}), row("arcface", 2, 0.994, set()),
            row("softmax", 0, 0.991, {1}), row("softmax", 1, 0.990, {4, 5}), row("softmax", 2, 0.993, {6}),
            row("softmax_shared", 0, 0.985, {1, 7, 8}), row("softmax_shared", 1, 0.989, {3, 9})]
    out = study.summarise(rows)
    assert out["seeds"] == [0, 1, 2] and out["difference_shared"]["seeds"] == [0, 1]
    assert out["difference_shared"]["acc_1nn"]["mean"] == pytest.approx(((0.990 - 0.985) + (0.992 - 0.989)) / 2)
    assert out["difference"]["acc_1nn"]["mean"] == pytest.approx((-0.001 + 0.002 + 0.001) / 3)
    assert out["softmax_shared"]["acc_1nn"]["n"] == 2
    m0 = out["difference_shared"]["mcnemar"][0]  # arcface wrong {1, 2}, shared wrong {1, 7, 8}
    assert (m0["arcface_only_right"], m0["softmax_shared_only_right"]) == (2, 1)
    text = study.markdown(rows, out)
    assert "| arcface - softmax_shared | 0 | 2 | 1 |" in text and "| ArcFace - softmax, paired |" in text
    assert study.summarise(rows[:6]).keys() >= {"difference"} and "difference_shared" not in study.summarise(rows[:6])
    # TAR both ways, each labelled: at the test pairs' own threshold and at the validation-calibrated one
    assert out["arcface"]["tar_at_val_threshold_1e-03"]["mean"] == pytest.approx(0.991)
    assert "| TAR % at the validation threshold for FAR 1e-03 |" in text and "test-set threshold |" in text
    assert "| arcface | 0 | 99.00 | 1.000 | 99.00 / 99.00 | 98.90 (8.0e-04) / 98.90 (8.0e-04) | 1 |" in text
    # paired.png: per-seed differences in test images and EER points, the original's mark on its own comparison
    drawn = {}
    monkeypatch.setattr(study.paper_plots, "paired_differences", lambda lines, metrics: drawn.setdefault("l", lines)
                        and study.plots.plt.figure())
    study.draw_paired(rows, out, tmp_path / "paired.png")
    own, shared = drawn["l"]
    assert own["acc_1nn"]["per_seed"] == pytest.approx([-10, 20, 10]) and own["seeds"] == [0, 1, 2]
    assert own["acc_1nn"]["mean"] == pytest.approx(20 / 3)
    assert own["eer"]["per_seed"] == pytest.approx([0.1, -0.2, -0.1])
    assert shared["acc_1nn"]["per_seed"] == pytest.approx([50, 30]) and "reference" not in shared
    assert own["reference"]["acc_1nn"] == pytest.approx(-8) and own["reference"]["eer"] == pytest.approx(0.04)
    assert (tmp_path / "paired.png").is_file()
    rows[0]["tar_at_val_threshold"] = None  # a run from before the calibration: the summary leaves them out
    assert "tar_at_val_threshold_1e-03" not in study.summarise(rows)["arcface"]


@pytest.fixture
def fake_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The code identity runs record, set by the test (the working tree may have edits); no vouched commits."""
    current = {"git_commit": A, "git_dirty": False}
    monkeypatch.setattr(study, "code_identity", lambda: dict(current))
    monkeypatch.setattr("utils.run.experiment.code_identity", lambda: dict(current))
    monkeypatch.setattr(reuse, "VOUCHED", tmp_path / "numerics.json")
    return current


def _metrics(tmp: Path) -> dict[str, dict]:
    files = sorted((tmp / "results" / "seeds").glob("*/metrics.json"))
    return {f.parent.name: json.loads(f.read_text()) for f in files}


@needs_mnist
def test_two_seed_study_end_to_end_and_its_reuse(tmp_path: Path, fake_code: dict) -> None:
    tmp = tmp_path
    r = call_main("compare", "--seeds=2", *quick(tmp), cwd=tmp)
    assert r.returncode == 0, r.stderr
    runs = _metrics(tmp)
    assert sorted(runs) == ["resnet18_arcface_s0", "resnet18_arcface_s1", "resnet18_softmax_s0", "resnet18_softmax_s1"]
    for name, m in runs.items():  # every run names its code, machine and the precision that ran
        assert m["git_commit"] == A and m["git_dirty"] is False and m["amp"] == "fp32", name
        assert m["machine"]["kernels"] and m["machine"]["cpu"]
        ck = torch.load(tmp / "ckp" / "seeds" / name / "best.pt", weights_only=True)
        assert ck["code"]["git_commit"] == A and ck["provenance"]["amp"] == "fp32"
        params = json.loads((tmp / "results" / "seeds" / name / "params.json").read_text())
        assert params["seed"] == int(name[-1]) and params["amp"] == "off"
    out = json.loads((tmp / "results" / "seeds" / "seeds.json").read_text())
    assert {(r["loss_fuc_type"], r["seed"]) for r in out["runs"]} == {(l, s) for l in ("arcface", "softmax")
                                                                       for s in (0, 1)}
    for loss in ("arcface", "softmax"):  # the summary recomputes from the runs' own metrics.json
        accs = [runs[f"resnet18_{loss}_s{s}"]["acc_1nn"] for s in (0, 1)]
        assert out["summary"][loss]["acc_1nn"]["mean"] == pytest.approx(sum(accs) / 2)
        assert out["summary"][loss]["acc_1nn"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    for s, mc in zip((0, 1), out["summary"]["difference"]["mcnemar"], strict=True):
        wrong = {loss: {f["query"] for f in json.loads((tmp / "results" / "seeds" / f"resnet18_{loss}_s{s}" /
                                                         "failures.json").read_text())["misidentified"]}
                 for loss in ("arcface", "softmax")}
        assert mc["seed"] == s and mc["arcface_only_right"] == len(wrong["softmax"] - wrong["arcface"])
        assert mc["softmax_only_right"] == len(wrong["arcface"] - wrong["softmax"])
    eer_diff = [runs[f"resnet18_arcface_s{s}"]["eer"] - runs[f"resnet18_softmax_s{s}"]["eer"] for s in (0, 1)]
    assert out["summary"]["difference"]["eer"]["mean"] == pytest.approx(sum(eer_diff) / 2)
    assert out["commits"] == [A] and out["amp"] == "fp32"
    assert (tmp / "results" / "seeds" / "DET_seeds.png").stat().st_size > 10_000
    # the headline picture is the study's, drawn from the same runs
    assert (tmp / "results" / "DET.png").stat().st_size > 10_000
    assert (tmp / "results" / "seeds" / "paired.png").stat().st_size > 10_000
    assert "McNemar" in (tmp / "results" / "seeds" / "seeds.md").read_text()

    stamp = {n: (tmp / "results" / "seeds" / n / "metrics.json").stat().st_mtime_ns for n in runs}
    table = (tmp / "results" / "seeds" / "seeds.md").read_text()
    (tmp / "results" / "seeds" / "seeds.md").unlink()
    fake_code["git_commit"] = B  # --summary_only: the summary again from the finished runs, whatever code runs it
    r = call_main("compare", "--seeds=3", "--summary_only=true", *quick(tmp), cwd=tmp)
    assert r.returncode == 0 and "4 finished runs of 6 planned; nothing trains" in r.stdout, r.stderr
    assert (tmp / "results" / "seeds" / "seeds.md").read_text() == table  # seed 2 never ran: left out
    assert {n: (tmp / "results" / "seeds" / n / "metrics.json").stat().st_mtime_ns for n in runs} == stamp
    fake_code["git_commit"] = A
    r = call_main("compare", "--seeds=2", "--reuse=true", *quick(tmp), cwd=tmp)  # same code, same params
    assert r.returncode == 0 and "not reused" not in r.stderr + r.stdout, r.stderr
    assert {n: (tmp / "results" / "seeds" / n / "metrics.json").stat().st_mtime_ns for n in runs} == stamp

    fake_code["git_commit"] = B  # other code: refused, trained again and recorded as such (seed 0 only: time)
    r = call_main("compare", "--seeds=1", "--reuse=true", *quick(tmp), cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "resnet18_arcface_s0: not reused: it was trained by commit aaaaaaaaaa" in r.stdout + r.stderr
    assert {n: m["git_commit"] for n, m in _metrics(tmp).items()} == {
        "resnet18_arcface_s0": B, "resnet18_softmax_s0": B, "resnet18_arcface_s1": A, "resnet18_softmax_s1": A}

    # commits vouched as computing the same numbers are reused; other params are not
    check = {"checks": [{"reference": "r" * 40}]}
    (tmp / "numerics.json").write_text(json.dumps({"commits": {A: check, B: check}}))
    fake_code["git_commit"] = A
    r = call_main("compare", "--seeds=1", "--reuse=true", *quick(tmp), cwd=tmp)
    assert r.returncode == 0 and _metrics(tmp)["resnet18_arcface_s0"]["git_commit"] == B
    # --shared=true: the pair is reused, only softmax under ArcFace's settings trains; both comparisons
    r = call_main("compare", "--seeds=1", "--reuse=true", "--shared=true", *quick(tmp), cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert _metrics(tmp)["resnet18_arcface_s0"]["git_commit"] == B  # reused, not retrained
    arc, same = (json.loads((tmp / "results" / "seeds" / n / "params.json").read_text())
                 for n in ("resnet18_arcface_s0", "resnet18_softmax_shared_s0"))
    assert same["loss_fuc_type"] == "softmax" and (same["lr"], same["weight_decay"]) == (arc["lr"], arc["weight_decay"])
    out = json.loads((tmp / "results" / "seeds" / "seeds.json").read_text())["summary"]
    assert out["difference_shared"]["seeds"] == [0] and out["difference"]["seeds"] == [0]
    assert "arcface - softmax_shared" in (tmp / "results" / "seeds" / "seeds.md").read_text()
    r = call_main("compare", "--seeds=1", "--reuse=true", "--weight_decay=0.01", *quick(tmp), cwd=tmp)
    assert r.returncode == 0 and _metrics(tmp)["resnet18_arcface_s0"]["git_commit"] == A


def test_summary_refuses_to_mix_precisions_layouts_or_unvouched_commits() -> None:
    nhwc, nchw = "channels_last=true, tiny_conv=false", "channels_last=false, tiny_conv=false"
    rows = [{"amp": "fp32", "git_commit": A, "layout": nhwc}, {"amp": "bf16", "git_commit": A, "layout": nhwc}]
    with pytest.raises(study.ConfigError, match="different precisions"):
        study.check_combinable(rows, [])
    rows = [{"amp": "fp32", "git_commit": A, "layout": nhwc}, {"amp": "fp32", "git_commit": B, "layout": nhwc}]
    with pytest.raises(study.ConfigError, match="--vouch"):
        study.check_combinable(rows, [{A}])
    study.check_combinable(rows, [{A, B}])
    rows[1]["layout"] = nchw  # vouched commits, but the golden check pins the layout: not combinable
    with pytest.raises(study.ConfigError, match="different layouts"):
        study.check_combinable(rows, [{A, B}])


def test_runs_record_the_commit_of_this_checkout() -> None:
    from utils.core.provenance import code_identity

    code = code_identity()
    if not (ROOT / ".git").exists():
        assert code["git_commit"] is None and code["git_note"]
        return
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert code["git_commit"] == head and isinstance(code["git_dirty"], bool)


def test_without_git_the_commit_is_unknown_and_nothing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.core import provenance

    def no_git(*args: object, **kw: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    provenance.code_identity.cache_clear()
    try:
        code = provenance.code_identity()
    finally:
        provenance.code_identity.cache_clear()
    assert code == {"git_commit": None, "git_dirty": None, "git_note": "git not installed"}


def test_series_eta_from_trained_runs_then_reused_ones_never_a_false_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.core.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    clock = progress.SeriesClock(4)
    assert clock.add({"train_seconds": 3000.0, "eval_seconds": 120.0}, reused=True).endswith(
        "ETA 156 min at the reused runs' pace)")  # 3 left at 52 min each, before anything trains here
    now[0] += 600.0
    assert clock.add({}, reused=False) == "(10.0 min so far, ETA 20 min)"  # this call's own pace wins
    assert clock.reused == 1 and clock.elapsed() == 600.0
    clock.add({}, reused=False)
    assert clock.add({}, reused=False).endswith("ETA 0 min)")
    assert progress.SeriesClock(2).add({}, reused=False).endswith("ETA 0 min)")  # trained in no time
    assert progress.SeriesClock(2).add({"train_seconds": 0}, reused=True).endswith("0 min at the reused runs' pace)")


def test_paired_figure_keeps_the_seeds_readable_when_two_seeds_give_a_huge_interval() -> None:
    from utils.scoring import paper_plots, plots

    row = {"label": "a - b", "seeds": [0, 1], "reference": {"x": -8.0, "label": "original"},
           "x": {"per_seed": [15.0, -19.0], "mean": -2.0, "ci95": [-218.0, 214.0]}}  # t(0.975, 1) = 12.7
    three = {"label": "c - d", "seeds": [0, 1, 2], "x": {"per_seed": [-6.0, -14.0, -20.0], "mean": -13.3,
                                                        "ci95": [-31.0, 4.3]}}
    fig = paper_plots.paired_differences([row], [("x", "images")])
    lo, hi = fig.axes[0].get_xlim()
    assert -30 < lo < -19 and 15 < hi < 30  # the interval runs off the axis, the seeds stay apart
    plots.close(fig)
    fig = paper_plots.paired_differences([three], [("x", "images")])
    lo, hi = fig.axes[0].get_xlim()
    assert lo < -31 and hi > 4.3  # an interval of the data's own size is drawn whole
    plots.close(fig)
