"""Is it a digit at all? The reject scores against a float64 reference, the calibration's operating point,
the verdict in verify and search (a sheet without ink is never a digit), and the stored calibration."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.core.errors import CheckpointError
from utils.inference.gallery import Gallery
from utils.inference.recognizer import Recognizer
from utils.inference.reject import (
    DIGIT_ACCEPT,
    POSITIVE_ACCEPT,
    TEMPERATURE,
    calibrate,
    class_centres,
    load_reject,
    scores,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_scores_match_a_naive_float64_reference() -> None:
    from utils.inference.reject import fit_scorer

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    train = unit(np.eye(10, 8)[labels % 8] + rng.normal(0, 0.4, (300, 8))).astype(np.float32)
    scorer = fit_scorer(train, labels)
    centres = np.asarray(scorer["centres"], np.float64)
    emb = unit(rng.normal(size=(20, 8))).astype(np.float32)
    # the reference and the covariance as stored (float16), then a plain float64 computation per image
    ref = np.concatenate([train[labels == k][:100] for k in range(10)]).astype(np.float16).astype(np.float64)
    means = np.stack([train[labels == k].astype(np.float64).mean(0) for k in range(10)])
    d = train.astype(np.float64) - means[labels]
    cov = d.T @ d / len(d)  # rank 8 < MAHA_RANK + 1: every direction kept, so S^-1 is the plain inverse
    inv = np.linalg.inv(cov)
    means16 = means.astype(np.float16).astype(np.float64)
    for i, e in enumerate(emb.astype(np.float64)):
        cos = [math.fsum(e * c) for c in centres]
        assert scores(emb, scorer, "centre")[i] == pytest.approx(max(cos), abs=1e-12)
        energy = TEMPERATURE * math.log(math.fsum(math.exp(c / TEMPERATURE) for c in cos))
        assert scores(emb, scorer, "energy")[i] == pytest.approx(energy, abs=1e-9)
        assert scores(emb, scorer, "knn")[i] == pytest.approx(sorted(ref @ e)[-5], abs=1e-12)
        maha = -min(float((e - m) @ inv @ (e - m)) for m in means16)
        assert scores(emb, scorer, "mahalanobis")[i] == pytest.approx(maha, rel=2e-2)  # directions in float16


def test_a_stored_scorer_decodes_without_running_code_and_damage_is_refused(tmp_path: Path) -> None:
    from utils.core.io import pack, unpack
    from utils.inference.reject import fit_scorer

    a = np.linspace(-1, 1, 12).reshape(3, 4)
    assert np.allclose(unpack(json.loads(json.dumps(pack(a)))), a, atol=1e-3)
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 40)
    scorer = fit_scorer(unit(rng.normal(size=(120, 6))).astype(np.float32), labels)
    stored = {"score": "knn", "threshold": 0.5, "checkpoint_sha256": "abc", **scorer}
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    assert load_reject(tmp_path, "abc")["knn"] == scorer["knn"]
    stored["knn"]["reference"]["float16_b64"] = "not base64!"
    (tmp_path / "reject.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match="damaged"):
        load_reject(tmp_path, "abc")


def strokes(n: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 28, 28] images of one vertical bar 2-3 px wide and 14-20 px tall: ink statistics of a stroke."""
    x = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        h, w = int(rng.integers(14, 21)), int(rng.integers(2, 4))
        x[i, 14 - h // 2:14 - h // 2 + h, 13:13 + w] = 255
    return x


def test_calibration_accepts_99_percent_of_digits_and_keeps_the_score_that_accepts_fewer_nondigits() -> None:
    from utils.inference.reject import fit_scorer, in_band, ink_band

    rng = np.random.default_rng(1)
    centres = np.eye(10, 16, dtype=np.float32)
    labels = rng.integers(0, 10, 2000)
    digits = unit(centres[labels] + rng.normal(0, 0.15, (2000, 16))).astype(np.float32)
    assert np.allclose(class_centres(digits, labels) @ centres.T, np.eye(10), atol=0.05)
    band = ink_band(strokes(2000, rng))
    images = strokes(2000, rng)
    # halfway between two classes: near both (energy counts both), near neither exactly (centre does not)
    between = unit(centres[labels[:300]] + centres[(labels[:300] + 1) % 10] + rng.normal(0, 0.05, (300, 16)))
    far = unit(rng.normal(size=(300, 16)))
    noise = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)  # no stroke: out of the ink band
    assert in_band(images, band).mean() > 0.98 and not in_band(noise, band).any()
    nondigits = {"between": (images[:300], between.astype(np.float32)), "far": (images[:300], far.astype(np.float32)),
                 "noise": (noise, digits[:300])}
    scorer = fit_scorer(digits, labels)
    r = calibrate((images, digits), nondigits, scorer, band)
    assert set(r["candidates"]) == {"centre", "energy", "knn", "mahalanobis"}
    for kind, c in r["candidates"].items():
        assert DIGIT_ACCEPT <= c["digits_accepted"] <= DIGIT_ACCEPT + 2 / 2000  # both tests together
        ok = in_band(images, band) & (scores(digits, scorer, kind) >= c["threshold"])
        assert ok.mean() == pytest.approx(c["digits_accepted"])
        assert c["nondigits_accepted"]["between"] == pytest.approx(
            float((scores(between, scorer, kind) >= c["threshold"]).mean()))
        assert c["nondigits_accepted"]["noise"] == 0.0  # near a centre, but not a stroke
    means = {k: c["nondigits_accepted_mean"] for k, c in r["candidates"].items()}
    assert means["centre"] != means["energy"] and r["score"] == min(means, key=means.get)
    assert r["threshold"] == r["candidates"][r["score"]]["threshold"] and len(r["centres"]) == 10
    assert r["band_alone"]["nondigits_accepted"]["noise"] == 0.0
    # genuine digits of a kind the winner turns away (those halfway between two classes, as an example): the
    # winner is passed over for the best score that accepts POSITIVE_ACCEPT of every positive kind ...
    positives = {"between": (images[:300], between.astype(np.float32)), "plain": (images[:300], digits[:300])}
    worst = {k: min(calibrate((images, digits), nondigits, scorer, band, positives)["candidates"][k]
                    ["positives_accepted"].values()) for k in r["candidates"]}
    q = calibrate((images, digits), nondigits, scorer, band, positives)
    fit = [k for k in worst if worst[k] >= POSITIVE_ACCEPT]
    assert q["score"] == (min(fit, key=means.get) if fit else max(worst, key=worst.get))
    assert worst[r["score"]] < POSITIVE_ACCEPT and q["score"] != r["score"]
    # ... or, when none does, the one whose worst positive kind is accepted most
    hard = {"far": (images[:300], far.astype(np.float32))}
    h = calibrate((images, digits), nondigits, scorer, band, hard)
    far_ok = {k: c["positives_accepted"]["far"] for k, c in h["candidates"].items()}
    assert max(far_ok.values()) < POSITIVE_ACCEPT and h["score"] == max(far_ok, key=far_ok.get)


def test_a_group_of_degraded_digits_widens_the_ink_band_to_admit_soft_ink() -> None:
    from utils.inference.reject import in_band, ink_band

    rng = np.random.default_rng(2)
    sharp = strokes(2000, rng)
    soft = (strokes(500, rng).astype(np.float32) * 0.45).astype(np.uint8)  # grey ink: a faint scan of a digit
    noise = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
    alone = ink_band(sharp)
    assert not in_band(soft, alone).any()  # MNIST's band alone turns every faint digit away
    both = ink_band(sharp, soft)
    assert in_band(soft, both).mean() >= 0.99 and in_band(sharp, both).mean() >= 0.99
    assert not in_band(noise, both).any()  # still no stroke, still no digit
    assert both["cut"][0] == alone["cut"] and len(both["cut"]) == 2


def recogniser(reject: dict | None) -> Recognizer:
    """A stand-in embedder that sends every image to class 0's direction: only the verdict logic is tested."""
    card = {"native_size": 28, "img_size": 28, "channels": 1, "mean": 0.1307, "std": 0.3081,
            "polarity": "light_on_dark", "normalise": "mnist"}
    thresholds = {"1e-03": {"threshold": 0.5, "far_val": 1e-3, "n_impostor_val": 10**6},
                  "eer": {"threshold": 0.4, "far_val": 0.01, "n_impostor_val": 10**6}}
    curve = {"threshold": [0.0, 0.5, 1.0], "far": [1.0, 1e-3, 0.0]}
    return Recognizer(lambda x: np.tile(np.eye(1, 4, dtype=np.float32), (len(x), 1)), card, thresholds, curve, "m",
                      reject=reject)


def test_verdicts_reach_verify_and_search_and_an_empty_sheet_is_never_a_digit(tmp_path: Path) -> None:
    digit, blank = tmp_path / "digit.png", tmp_path / "blank.png"
    a = np.full((60, 60), 255, np.uint8)
    a[10:50, 27:33] = 0
    Image.fromarray(a).save(digit)
    Image.new("L", (60, 60), 250).save(blank)
    reject = {"score": "centre", "threshold": 0.9, "centres": np.eye(2, 4).tolist()}
    rec = recogniser(reject)
    v = rec.verify(digit, digit)
    assert v["match"] and v["digit"] == [True, True] and v["digit_score"] == [1.0, 1.0]
    v = rec.verify(digit, blank)  # the embedding is the same: only the missing ink says "no"
    assert v["score"] == pytest.approx(1.0) and not v["match"] and v["digit"] == [True, False]
    g = Gallery("m")
    g.embeddings, g.identities, g.paths = np.eye(1, 4, dtype=np.float32), np.array(["7"]), np.array(["x.png"])
    found = rec.search([digit, blank], g, k=1)
    assert [f["identity"] for f in found] == ["7", "not a digit"] and [f["digit"] for f in found] == [True, False]
    rec = recogniser({**reject, "threshold": 1.5})  # a threshold no score reaches: nothing is a digit
    assert rec.search([digit], g, k=1)[0]["identity"] == "not a digit" and not rec.verify(digit, digit)["match"]
    plain = recogniser(None)  # not calibrated: the answers are as before, without the digit keys
    assert "digit" not in plain.verify(digit, blank) and plain.search([blank], g, k=1)[0]["identity"] == "7"


def test_the_stored_calibration_belongs_to_its_weights(tmp_path: Path) -> None:
    assert load_reject(tmp_path, "abc") is None
    good = {"score": "energy", "threshold": 0.7, "centres": np.eye(3, 4).tolist(), "checkpoint_sha256": "abc"}
    (tmp_path / "reject.json").write_text(json.dumps(good))
    assert load_reject(tmp_path, "abc")["score"] == "energy"
    with pytest.raises(CheckpointError, match="calibrated for other weights.*python main.py wild"):
        load_reject(tmp_path, "def")
    for bad in ("{", json.dumps({**good, "score": "magic"}), json.dumps({**good, "threshold": "x"}), "[]"):
        (tmp_path / "reject.json").write_text(bad)
        with pytest.raises(CheckpointError, match="damaged"):
            load_reject(tmp_path, "abc")


def test_wild_command_calibrates_stores_and_exports_the_reject_option(compared_copy: Path, monkeypatch) -> None:
    """`python main.py wild` (one font per part, small samples): reject.json beside the checkpoint with its
    hash, the measured report; verify says "not a digit" for a blank sheet on the checkpoint and on the
    ONNX export, whose model.json carries the same calibration."""
    from conftest import call_main

    from utils.data import wild
    from utils.inference import pixel_reject
    from utils.inference import wild_study as command

    one = {"val": wild.font_files("val")[:1], "test": wild.font_files("test")[:1]}
    monkeypatch.setattr(wild, "font_files", lambda part: one[part])
    monkeypatch.setattr(command, "N_FASHION", 50)
    monkeypatch.setattr(command, "N_CENTRES", 300)
    monkeypatch.setattr(command, "N_POSITIVE", 20)
    monkeypatch.setattr(command, "N_OUTLIERS", 60)
    monkeypatch.setattr(command, "N_PIXEL_DIGITS", 300)
    monkeypatch.setattr(command, "N_PIXEL_OUTLIERS", 120)
    monkeypatch.setattr(command, "N_PIXEL_DEGRADED", 10)
    monkeypatch.setattr(pixel_reject, "EPOCHS", 2)
    tmp = compared_copy
    r = call_main("wild", f"--ckpt_dir={tmp / 'ckp'}", f"--results_dir={tmp / 'results'}", "--per_font=1", cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "reject score:" in r.stdout and "images/s" in r.stdout
    from utils.inference.recognizer import sha256

    ckpt = tmp / "ckp" / "resnet18_arcface" / "best.pt"
    stored = json.loads((ckpt.parent / "reject.json").read_text())
    assert stored["checkpoint_sha256"] == sha256(ckpt)
    report = json.loads((tmp / "results" / "wild" / "wild.json").read_text())["resnet18_arcface"]
    assert set(report["test"]["top1"]["after"]) == set(wild.STYLES) and report["reject"]["threshold"] == \
        stored["threshold"]
    assert set(report["test"]["nondigits_accepted"]) == {*wild.NONDIGITS, *wild.UNSEEN, "fashion_mnist"}
    assert report["test"]["nondigits_accepted"]["blank"] == 0.0  # no ink, never a digit
    assert report["test"]["lookalikes"] > 0 and "look-alikes" in (tmp / "results" / "wild" / "wild.md").read_text()
    cands = report["reject"]["candidates"]
    assert set(cands) == {"centre", "energy", "knn", "mahalanobis", "learned", "pixels"}  # the chosen: the fewest
    assert all(set(c["positives_accepted"]) == set(wild.POSITIVE) for c in cands.values())
    fit = [k for k, c in cands.items() if min(c["positives_accepted"].values()) >= 0.95]
    assert stored["score"] == min(fit, key=lambda k: cands[k]["nondigits_accepted_mean"]) if fit else \
        max(cands, key=lambda k: min(cands[k]["positives_accepted"].values()))
    assert set(report["test"]["separation"]) == {*report["test"]["nondigits_accepted"], "lookalikes"}
    assert all(0 <= r["auroc"] <= 1 for r in report["test"]["separation"].values())
    assert (tmp / "results" / "wild" / "resnet18_arcface_kinds_det.png").stat().st_size > 10_000
    assert set(report["test"]["positive"]) == set(wild.POSITIVE)
    assert all(v["images"] > 0 and 0 <= v["accepted"] <= v["in_band"] <= 1 for v in report["test"]["positive"].values())
    inside = report["test"]["digits_in_band"]  # a digit is accepted only inside the band: which rule turned it away
    assert all(report["test"]["digits_accepted"][s] <= inside[s] <= 1 for s in wild.STYLES)
    assert "inside the ink band" in (tmp / "results" / "wild" / "wild.md").read_text()
    assert (tmp / "results" / "wild" / "resnet18_arcface_reject_det.png").stat().st_size > 10_000
    assert (tmp / "results" / "wild" / "sheets.png").stat().st_size > 10_000
    blank = tmp / "blank.png"
    Image.new("RGB", (90, 70), (250, 240, 215)).save(blank)
    a = np.full((60, 60), 255, np.uint8)
    a[10:50, 27:33] = 0
    Image.fromarray(a).save(digit := tmp / "one.png")
    common = [f"--ckpt_dir={tmp / 'ckp'}", "--json=true"]
    v = json.loads(call_main("verify", str(digit), str(blank), *common, cwd=tmp).stdout)
    assert v["digit"] == [True, False] or v["digit"] == [False, False]
    assert not v["match"]
    text = call_main("verify", str(blank), str(blank), f"--ckpt_dir={tmp / 'ckp'}", cwd=tmp).stdout
    assert text.startswith("not a digit:")
    r = call_main("export", f"--out={tmp / 'exp'}", f"--ckpt_dir={tmp / 'ckp'}", cwd=tmp)
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp / "exp" / "model.json").read_text())
    assert card["reject"]["threshold"] == stored["threshold"] and card["reject"]["centres"] == stored["centres"]
    o = json.loads(call_main("verify", str(digit), str(blank), f"--onnx={tmp / 'exp'}", "--json=true", cwd=tmp).stdout)
    # relative as well: Mahalanobis scores reach thousands
    assert o["digit"] == v["digit"] and o["digit_score"] == pytest.approx(v["digit_score"], rel=1e-5, abs=1e-5)
    assert stored["checkpoint_file"] == {"size": ckpt.stat().st_size, "mtime_ns": ckpt.stat().st_mtime_ns}
    from bench import learned_reject  # reads this calibration and fits its grid on validation only

    monkeypatch.setattr(learned_reject, "GRID", ((4, 1e-4, True), (4, 1e-4, False)))
    learned_reject.main(["--model_name=resnet18_arcface", f"--ckpt_dir={tmp / 'ckp'}", "--per_font=1",
                         "--fit_seeds=0,1", f"--out={tmp / 'grid.json'}"])
    grid = json.loads((tmp / "grid.json").read_text())
    assert [(r["hidden"], r["seed"]) for r in grid["rows"]] == [(4, 0), (4, 1), (4, 0), (4, 1)]
    assert grid["rows"][0]["digits"] > grid["rows"][2]["digits"]  # the second row fits without the degraded copies
    assert [s["mean_over_seeds"] for s in grid["over_seeds"]] == pytest.approx(
        [np.mean([r["nondigits_accepted_mean"] for r in grid["rows"][a:a + 2]]) for a in (0, 2)])
    assert all(0 <= s["ensemble_nondigits_accepted_mean"] <= 1 for s in grid["over_seeds"])
    assert all(0 <= r["nondigits_accepted_mean"] <= 1 for r in grid["rows"]) and grid["git_commit"]
    assert set(grid["other_scores"]) == {"centre", "energy", "knn", "mahalanobis"}
    # retrained weights (a new file: another modification time): the old calibration is refused
    (ckpt.parent / "reject.json").write_text(json.dumps({**stored, "checkpoint_sha256": "0" * 64}))
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    r = call_main("verify", str(digit), str(blank), f"--ckpt_dir={tmp / 'ckp'}", cwd=tmp)
    assert r.returncode == 2 and "calibrated for other weights" in r.stderr


def test_separation_matches_a_pairwise_count_and_its_thresholds_are_the_digits_own() -> None:
    from utils.inference.reject import separation

    rng = np.random.default_rng(4)
    d = np.concatenate([rng.normal(1, 0.3, 400), [-np.inf] * 3])  # three digits the ink tests turned away
    n = np.concatenate([rng.normal(0, 0.3, 200), [-np.inf] * 50, np.round(rng.normal(1, 0.3, 20), 1)])
    r = separation(d, n)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in d for b in n]
    assert r["auroc"] == pytest.approx(math.fsum(pairs) / len(pairs), abs=1e-12)
    for k in (95, 99):
        t = sorted(d)[int(math.floor((len(d) - 1) * (1 - k / 100)))]  # the digits' own lower quantile
        assert (d >= t).mean() >= k / 100
        assert r[f"accepted_at_{k}_digits"] == pytest.approx(float((n >= t).mean()))


def test_digit_scores_turn_away_sheets_without_ink_whatever_their_score() -> None:
    from utils.inference.reject import digit_scores, is_digit

    reject = {"score": "centre", "threshold": 0.5, "centres": np.eye(2, 4).tolist()}
    x = np.zeros((2, 28, 28), np.uint8)
    x[1, 10:18, 13:15] = 255
    emb = np.tile(np.eye(1, 4, dtype=np.float32), (2, 1))  # both on class 0's centre: cosine 1
    s = digit_scores(x, emb, reject)
    assert s[0] == -np.inf and s[1] == pytest.approx(1.0)
    assert is_digit(x, emb, reject)[1].tolist() == [False, True]


def test_an_unchanged_checkpoint_is_not_hashed_again(tmp_path: Path) -> None:
    """A cold verify trusts reject.json's hash while best.pt keeps the size and time it had when calibrated."""
    import os

    from utils.inference.reject import file_identity

    (tmp_path / "best.pt").write_bytes(b"weights")
    r = {"score": "centre", "threshold": 0.5, "centres": np.eye(2, 4).tolist(), "checkpoint_sha256": "abc",
         "checkpoint_file": file_identity(tmp_path / "best.pt")}
    (tmp_path / "reject.json").write_text(json.dumps(r))
    asked = []

    def sha() -> str:
        asked.append(1)
        return "abc"

    assert load_reject(tmp_path, sha)["threshold"] == 0.5 and asked == []
    st = (tmp_path / "best.pt").stat()
    os.utime(tmp_path / "best.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # written again
    assert load_reject(tmp_path, sha)["threshold"] == 0.5 and asked == [1]  # hashed, and it matches
    with pytest.raises(CheckpointError, match="other weights"):
        load_reject(tmp_path, lambda: "def")
