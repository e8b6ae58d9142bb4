"""Every timing bench imports and runs on a tiny input (issue 32): a bench that no longer runs is caught
here, not when someone needs its numbers. Nothing asserts a time; only that each row is there and sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import needs_mnist


def test_eval_bench_on_a_tiny_synthetic_set(tmp_path: Path) -> None:
    from bench import eval as bench_eval

    out = tmp_path / "eval.json"
    bench_eval.main(["--queries=64", "--gallery=256", "--dim=16", "--repeats=1", "--threads=1,2", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert [r["threads"] for r in doc["by_threads"]] == [1, 2]
    assert all(r["ours_seconds"] > 0 and r["floor_seconds"] > 0 for r in doc["by_threads"])
    assert doc["eer_abs_diff"] < 1e-5 and doc["cpu_kind"] in ("amx", "avx512_bf16", "avx512", "avx2", "other")
    assert set(doc["passes_ms_per_chunk"]) >= {"product", "bin + count, one pass"}
    assert all(v > 0 for v in doc["passes_ms_per_chunk"].values())


@needs_mnist
def test_train_bench_runs_every_baseline(tmp_path: Path) -> None:
    from bench import train as bench_train

    out = tmp_path / "train.json"
    bench_train.main(["--steps=1", "--original_steps=1", "--batch_size=8", "--compile=false", f"--out={out}"])
    doc = json.loads(out.read_text())
    names = [r["config"] for r in doc["rows"]]
    assert names[0].startswith("naive") and any("original preset" in n for n in names)
    assert any("tiny maps as matmul" in n for n in names) and any("NHWC" in n for n in names)
    assert all(r["images_per_s"] > 0 and 0 < r["fraction_of_peak"] for r in doc["rows"])
    assert doc["made_by"]["git_commit"] is None or len(doc["made_by"]["git_commit"]) == 40
    assert doc["cpu_kind"] in ("amx", "avx512_bf16", "avx512", "avx2", "other")


@needs_mnist
@pytest.mark.parametrize("tiny", ["false", "true"])
def test_profile_bench_splits_the_step_and_every_convolution(tmp_path: Path, tiny: str) -> None:
    from bench import profile_step

    out = tmp_path / "profile.json"
    profile_step.main(["--amp=off", f"--tiny_conv={tiny}", "--steps=1", "--batch_size=8", "--reps=1", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert set(doc["phases_seconds"]) >= {"forward", "backward", "optimiser"}
    assert {"conv backward-data", "conv backward-weight"} <= set(doc["op_class_seconds"])
    assert len(doc["convolutions"]) == 20  # ResNet18's convolutions, stem and downsampling included
    assert all(r["forward_gflops"] > 0 for r in doc["convolutions"])
    assert doc["precision"] == "fp32" and doc["layout"] == ("nchw_tinymm" if tiny == "true" else "nchw")


@needs_mnist
def test_infer_bench_times_import_torch_beside_a_cold_verify(compared: Path, tmp_path: Path) -> None:
    from bench import infer

    out = tmp_path / "infer.json"
    infer.main([f"--ckpt_dir={compared / 'ckp'}", "--repeats=1", "--images=64", "--gallery=500", "--large=2000",
                f"--out={out}"])
    doc = json.loads(out.read_text())
    cold = doc["cold_verify_seconds"]
    assert cold["import_torch"] > 0 and cold["checkpoint"] > 0  # both measured in one run, side by side
    assert cold["checkpoint_scipy_ndimage_imported"] > 0  # the import reading images no longer needs
    assert {len(t) for t in doc["cold_start_runs_seconds"].values()} == {1}
    assert doc["exact_search_large"]["gallery"] == 2000 and doc["embed_images_per_s"]["torch"] > 0


def test_tta_shift_moves_pixels_and_fills_the_border_with_background() -> None:
    import torch

    from bench.tta import VIEW_SETS, shifted

    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 4, 4)
    assert torch.equal(shifted(x, 0, 0), x)
    right = shifted(x, 0, 1)
    assert torch.equal(right[0, :, 1:], x[0, :, :-1]) and not right[0, :, 0].any()
    up = shifted(x, -1, 0)
    assert torch.equal(up[0, :-1], x[0, 1:]) and not up[0, -1].any()
    assert torch.equal(shifted(shifted(x, 1, 1), -1, -1)[0, :3, :3], x[0, :3, :3])
    assert [len(v) for v in VIEW_SETS.values()] == [1, 5, 9] and VIEW_SETS["none"] == [(0, 0)]


@needs_mnist
def test_tta_bench_scores_every_view_set_on_validation(compared: Path, tmp_path: Path) -> None:
    from bench import tta

    out = tmp_path / "tta.json"
    tta.main([f"--ckpt={compared / 'ckp' / 'resnet18_arcface' / 'best.pt'}", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert list(doc["results"]) == ["none", "cross", "grid"] and doc["loss"] == "arcface"
    assert all(0 < r["val_acc_1nn"] <= 1 and 0 <= r["val_eer"] <= 1 for r in doc["results"].values())
    assert doc["machine"]["cpu"] and doc["precision"]


def test_matmul_conv_order_bench_times_both_orders_of_the_same_convolution(tmp_path: Path) -> None:
    from bench import matmul_conv_order

    out = tmp_path / "order.json"
    matmul_conv_order.main(["--amp=off", "--reps=1", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert [r["conv"] for r in doc["rows"]] == ["512->512 3x3 stride 1", "256->512 3x3 stride 2"]
    assert all(r["unfold_order_ms"] > 0 and r["weight_order_ms"] > 0 for r in doc["rows"])
    assert doc["precision"] == "fp32" and doc["cpu_kind"] in ("amx", "avx512_bf16", "avx512", "avx2", "other")


def test_thin_pen_bench_counts_what_the_wild_sets_thin_pen_leaves(tmp_path: Path) -> None:
    """The same sheets as make_wild_set (the bench checks each against digit_sheet), counted per part."""
    from bench import thin_pen

    out = tmp_path / "thin.json"
    thin_pen.main(["--per_font=1", f"--out={out}"])
    doc = json.loads(out.read_text())
    for part in ("val", "test"):
        r = doc["parts"][part]
        assert r["sheets"] == 10 * len(r["fonts"]) and 0 < r["ink_kept_median"] < 1
        assert r["under_20pct_ink"] <= r["under_50pct_ink"] <= r["sheets"]
        assert max(r["strokes_broken"], r["under_20pct_ink"]) <= r["broken_or_under_20pct"] <= r["sheets"]


@needs_mnist
def test_energy_bounds_bench_reads_the_rule_from_validation_energies(compared: Path, tmp_path: Path) -> None:
    import numpy as np

    from bench import energy_bounds

    out = tmp_path / "bounds.json"
    energy_bounds.main([f"--ckpt={compared / 'ckp' / 'resnet18_arcface' / 'best.pt'}", "--outliers=12", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert doc["energy_in"] == doc["digits_margin"]["p95"] and doc["energy_out"] == doc["digits_plain"]["p99"]
    assert set(doc["nondigits"]) <= set(energy_bounds.KINDS) and doc["n_nondigits"] == 12
    # the margin lowers the target's logit: every quantile of the known images' energy rises
    assert all(doc["digits_margin"][q] > doc["digits_plain"][q] for q in doc["digits_plain"])
    assert energy_bounds.mean_hinge(np.array([-3.0, -1.0]), -2.0, above=True) == 0.5
    assert energy_bounds.mean_hinge(np.array([-3.0, -1.0]), -2.0, above=False) == 0.5


@needs_mnist
def test_pen_nib_bench_reads_every_nib_under_every_normalisation(compared: Path, tmp_path: Path) -> None:
    from bench import pen_nib
    from utils.core.config import ConfigError
    from utils.data.images import NORMALISE_MODES

    out = tmp_path / "pen_nib.json"
    pen_nib.main([f"--ckpt_dir={compared / 'ckp'}", "--model_name=resnet18_arcface", "--per_digit=1",
                  "--nibs=0.02,0.08", f"--out={out}"])
    doc = json.loads(out.read_text())
    assert [r["nib"] for r in doc["rows"]] == [0.02, 0.08] and doc["machine"]["kernels"]
    for r in doc["rows"]:
        assert r["sheets"] == 10 and set(r["top1"]) == set(NORMALISE_MODES)
        assert all(a * 10 == round(a * 10) and 0 <= a <= 1 for a in r["top1"].values())  # whole sheets of ten
    assert (tmp_path / "pen_nib.png").stat().st_size > 10_000  # the picture beside the numbers
    thin = doc["thin_style_test"]  # the held-out thin sheets, split by whether the pen broke their strokes
    assert thin["broken"]["sheets"] > 0 and thin["whole"]["sheets"] > 0
    for key in ("thin_style_val", "thin_style_test", "thick_style_val", "thick_style_test"):
        for r in doc[key].values():  # every misread sheet is listed, and only those
            miss = r["sheets"] * (1 - r["top1"]["mnist_stroke"]) if r["sheets"] else 0
            assert len(r["misread"]) == round(miss) and all(d != p for _, d, p in r["misread"])
    assert all(set(r["top1"]) == set(NORMALISE_MODES) for r in thin.values())
    thick = doc["thick_style_test"]  # and the thick ones, by whether the pen squeezed their loops
    assert thick["squeezed"]["sheets"] + thick["open"]["sheets"] == thin["broken"]["sheets"] + thin["whole"]["sheets"]
    for bad in ("abc", "0.5", "", "0.02,0"):
        with pytest.raises(ConfigError, match="--nibs"):
            pen_nib.parse_nibs(bad)


def test_pen_nib_measures_a_glyphs_loops_and_when_a_pen_squeezes_them() -> None:
    import numpy as np

    from bench.pen_nib import loop_area, loops_squeezed

    yy, xx = np.mgrid[:60, :40]
    def ring(cy: int, inner: float = 7) -> np.ndarray:
        r = np.hypot(yy - cy, xx - 20)
        return ((r > inner) & (r < 11)).astype(np.float32)
    disk = (np.hypot(yy - 30, xx - 20) < 11).astype(np.float32)
    eight = np.maximum(ring(19), ring(38))  # two rings that touch: an 8 has two loops
    inside = int((np.hypot(yy - 30, xx - 20) <= 7).sum())
    assert loop_area(ring(30)) == inside and loop_area(disk) == 0 and loop_area(np.zeros((60, 40))) == 0
    assert loop_area(eight) == 2 * inside
    assert loops_squeezed(ring(30), disk) and loops_squeezed(ring(30), ring(30, inner=2))  # filled; a pinhole left
    assert not loops_squeezed(ring(30), ring(30, inner=5)) and not loops_squeezed(disk, disk)  # half kept; no loop


def test_learned_reject_bench_asks_for_a_calibration_first(compared: Path) -> None:
    from bench import learned_reject
    from utils.core.errors import ConfigError

    assert not (compared / "ckp" / "resnet18_arcface" / "reject.json").exists()
    with pytest.raises(ConfigError, match="calibrate first: python main.py wild"):
        learned_reject.main(["--model_name=resnet18_arcface", f"--ckpt_dir={compared / 'ckp'}"])


@pytest.mark.parametrize("arg", ["--rows=9", "--fit_seeds=", "--fit_seeds=a"])
def test_learned_reject_bench_refuses_rows_outside_its_grid_and_missing_seeds(arg: str) -> None:
    from bench import learned_reject
    from utils.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--rows indices|--fit_seeds"):  # before any model is read
        learned_reject.main(["--model_name=absent", arg])
