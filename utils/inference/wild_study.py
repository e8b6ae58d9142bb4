"""Digits from the wild, measured (`python main.py wild` parses its options and calls `study`): on
validation, the normalisation of new images and the reject option are chosen and stored in
ckp/<model>/reject.json; on the held-out half of the wild set (utils/data/wild.py), top-1 per style before and
after, digits and non-digits accepted, and the curve of one against the other -> results/wild/.
Top-1 = the identity of the nearest of 200 enrolled MNIST training-split images (the first 20 of each
digit), as `search` answers with such a gallery; the class centres come from the next 10,000 images.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from utils.core.config import trained_params
from utils.core.errors import CheckpointError, ConfigError
from utils.core.io import atomic_write, save_figure, write_json
from utils.core.progress import say
from utils.core.provenance import code_identity
from utils.data.images import NORMALISE_MODES, prepare_grey
from utils.data.loading import Splits, load_idx_dataset, load_splits
from utils.data.outliers import make_outliers
from utils.data.wild import NONDIGITS, POSITIVE, STYLES, UNSEEN, make_wild_set, write_degraded
from utils.inference.learned_reject import fit_learned
from utils.inference.pixel_reject import fit_pixels
from utils.inference.recognizer import Recognizer
from utils.inference.reject import (
    STORED,
    calibrate,
    det_curves,
    digit_scores,
    file_identity,
    fit_scorer,
    in_band,
    ink_band,
    kind_curve,
    separation,
)
from utils.inference.wild_report import draw_positives, draw_sheets, markdown
from utils.scoring import plots

NORMS = NORMALISE_MODES  # every normalisation is tried on validation; the last one is kept in memory
N_CENTRES, N_GALLERY, N_FASHION, N_POSITIVE, N_OUTLIERS = 10_000, 20, 2_000, 300, 10_000
N_PIXEL_DIGITS, N_PIXEL_DEGRADED, N_PIXEL_OUTLIERS = 50_000, 1_000, 30_000  # the "pixels" score's fit


def top1(emb: np.ndarray, gallery: np.ndarray, gallery_y: np.ndarray) -> np.ndarray:
    """The digit of the nearest enrolled image (search's top-1 with one image per row of the gallery)."""
    return gallery_y[np.argmax(emb @ gallery.T, axis=1)]


def digit_model(ckpt: Path) -> tuple[Recognizer, dict]:
    """(recognizer, checkpoint state) of a trained digit model, without its reject.json (a wild study writes a
    new one). A missing checkpoint or one not trained on MNIST-like digits is refused."""
    from utils.inference.recognizer import sha256
    from utils.inference.torch_backend import load_torch_embedder  # torch only on this path

    if not ckpt.is_file():
        raise CheckpointError(f"no trained model at {ckpt}; train one (python main.py arcface) or pick another "
                              f"with --model_name / --ckpt_dir.")
    embedder, state = load_torch_embedder(ckpt)
    rec = Recognizer(embedder, state["input"], state["thresholds"], state["far_curve"], sha256(ckpt))
    if not rec.card.get("normalise", "fit").startswith("mnist"):
        raise ConfigError(f"{ckpt} was not trained on a digit data set (its images are not normalised as "
                          f"MNIST's); the wild set is made of digits.")
    return rec, state


def enrolment(train_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training-split indices of the gallery (the first N_GALLERY images of each digit) and of the N_CENTRES
    images after them that the class centres and the reject scores are fitted on."""
    pick = np.concatenate([np.flatnonzero(train_y == d)[:N_GALLERY] for d in range(10)])
    return pick, np.setdiff1d(np.arange(len(train_y)), pick)[:N_CENTRES]


def measure_digits(rec: Recognizer, items: list[tuple], norms: tuple[str, ...], gal: tuple) -> dict:
    """Top-1 per style for each normalisation; the images and embeddings of the last one."""
    paths = [p for p, _, _ in items]
    styles, labels = np.array([s for _, s, _ in items]), np.array([d for *_, d in items])
    out: dict = {"top1": {}, "emb": None}
    for norm in norms:
        t0 = time.perf_counter()
        x = rec.load(paths, normalise=norm)
        emb = rec.embed_loaded(x)
        hit = top1(emb, *gal) == labels
        out["top1"][norm] = {s: float(hit[styles == s].mean()) for s in STYLES}
        say(f"  {len(paths)} wild digits, normalise={norm}: top-1 {hit.mean():.1%} "
            f"({len(paths) / (time.perf_counter() - t0):.0f} images/s)", False)
        out["emb"], out["x"], out["styles"] = emb, x, styles
    return out


def nondigit_embeddings(rec: Recognizer, items: list[tuple], fashion: np.ndarray,
                        kinds: tuple[str, ...] = NONDIGITS) -> dict[str, tuple]:
    """{kind: (uint8 images, unit embeddings)} of the wild set's non-digits and of Fashion-MNIST images."""
    out = {}
    for kind in kinds:
        x = rec.load([p for p, k in items if k == kind])
        out[kind] = (x, rec.embed_loaded(x))
    c = rec.card  # Fashion-MNIST images go through the same normalisation as image files would
    x = np.stack([prepare_grey(a.astype(np.float32) / 255.0, c["native_size"], c["polarity"], "auto", c["normalise"])
                  for a in fashion])
    out["fashion_mnist"] = (x, rec.embed_loaded(x))
    return out


def accepted(rec: Recognizer, x: np.ndarray, emb: np.ndarray) -> np.ndarray:
    return np.array([d["digit"] for d in rec.digits(x, emb)])


def band_images(rec: Recognizer, digits: np.ndarray, labels: np.ndarray, folder: Path) -> list[np.ndarray]:
    """Degraded copies of training-split digits and pen-written digits of their labels (one group per POSITIVE
    kind), drawn as sheets and read back as the network sees them: the ink band's other groups. The measured
    positives come from the validation split and other draws of the pen (seed 33, not 34)."""
    made = write_degraded(folder, digits, labels, N_POSITIVE, 34)
    return [rec.load([p for p, k, _ in made if k == kind]) for kind in POSITIVE]


def generated_outliers(rec: Recognizer, digits: np.ndarray, fashion_train: np.ndarray,
                       n: int | None = None) -> np.ndarray:
    """N_OUTLIERS (or n) generated non-digits (utils/data/outliers.py), prepared as a user's image is under the card's
    normalisation; pieces cut from `digits`, and Fashion-MNIST's training images after the N_FASHION that the
    validation non-digits take."""
    c, rest = rec.card, fashion_train[N_FASHION:]
    return make_outliers(n or N_OUTLIERS, c["native_size"], c["polarity"], c["normalise"], digits, 33,
                         rest if len(rest) else None)[0]


def learned_entry(rec: Recognizer, centre: tuple[np.ndarray, np.ndarray, np.ndarray], degraded: list[np.ndarray],
                  fashion_train: np.ndarray) -> dict:
    """The "learned" score (learned_reject.py): the training digits' embeddings and their degraded copies against
    the generated outliers' (`generated_outliers`)."""
    t0 = time.perf_counter()
    out_x = generated_outliers(rec, centre[0], fashion_train)
    digits = np.concatenate([centre[2], rec.embed_loaded(np.concatenate(degraded))])
    entry = fit_learned(digits, rec.embed_loaded(out_x))
    say(f"learned score: {len(out_x)} generated outliers against {entry['fitted_on']['digits']} training digits, "
        f"{entry['fitted_on']['iterations']} iterations ({time.perf_counter() - t0:.0f} s)", False)
    return entry


def pixel_entry(rec: Recognizer, splits: Splits, centre_images: np.ndarray, sheets: list[np.ndarray],
                fashion_train: np.ndarray, folder: Path) -> dict:
    """The "pixels" score (pixel_reject.py), fitted on the prepared images the network reads: three groups of
    digits of equal weight (the first N_PIXEL_DIGITS training-split digits after the gallery's; N_PIXEL_DEGRADED
    degraded or pen-written copies of them per positive kind; the validation fonts' sheets) against
    N_PIXEL_OUTLIERS generated outliers."""
    t0 = time.perf_counter()
    train_x, train_y = splits.train_x.numpy(), splits.train_y.numpy()
    keep = np.delete(np.arange(len(train_y)), enrolment(train_y)[0])[:N_PIXEL_DIGITS]
    made = write_degraded(folder, train_x[keep], train_y[keep], N_PIXEL_DEGRADED, 36)
    groups = [train_x[keep], rec.load([p for p, _, _ in made]), np.concatenate(sheets)]
    entry = fit_pixels(groups, generated_outliers(rec, centre_images, fashion_train, N_PIXEL_OUTLIERS))
    say(f"pixels score: {entry['fitted_on']['outliers']} generated outliers against {entry['fitted_on']['digits']} "
        f"digits, {entry['fitted_on']['epochs']} passes ({time.perf_counter() - t0:.0f} s)", False)
    return entry


def validation_positives(rec: Recognizer, splits: Splits, folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{kind: (images, unit embeddings)}: N_POSITIVE genuine digits of each positive kind made from the first half of
    the validation split (the held-out ones come from its second half), which every reject score must accept."""
    half = len(splits.val_y) // 2
    made = write_degraded(folder, splits.val_x.numpy()[:half], splits.val_y.numpy()[:half], N_POSITIVE, 35)
    out = {}
    for kind in POSITIVE:
        x = rec.load([p for p, k, _ in made if k == kind])
        out[kind] = (x, rec.embed_loaded(x))
    return out


def calibrate_on_validation(rec: Recognizer, wild_val: dict, splits: Splits, fashion: dict, gal: tuple,
                            scorer: dict, centre: tuple[np.ndarray, np.ndarray, np.ndarray],
                            folder: Path) -> tuple[dict, dict]:
    """Choose the normalisation of new images and calibrate the reject option, on validation data only: the
    validation wild fonts, MNIST's validation split, Fashion-MNIST's train split; the ink band from training
    digits (`centre`: images, labels, embeddings), degraded copies of them and the validation fonts' sheets of
    every style; the learned and pixels scores from such digits against generated outliers; every score held to
    accepting POSITIVE_ACCEPT of each kind of degraded copy of validation digits (`validation_positives`). Sets
    both on `rec`."""
    say("validation: normalisation and the reject score", False)
    val = measure_digits(rec, wild_val["digits"], NORMS, gal)
    # the normalisation that reads the validation wild digits best (mean over styles)
    chosen = max(NORMS, key=lambda n: np.mean(list(val["top1"][n].values())))
    rec.card = {**rec.card, "normalise": chosen}
    val_digits = rec.embed_loaded(splits.val_x.numpy())
    val_non = nondigit_embeddings(rec, wild_val["nondigits"], fashion["train_x"].numpy()[:N_FASHION])
    centre_images = centre[0]
    # the validation fonts' sheets, one group per style, join the band: a pen's ink is no reason to reject a digit
    x = val["x"] if chosen == NORMS[-1] else rec.load([p for p, _, _ in wild_val["digits"]], normalise=chosen)
    sheets = [x[val["styles"] == s] for s in STYLES]
    degraded = band_images(rec, *centre[:2], folder)
    band = ink_band(centre_images, *degraded, *sheets)
    scorer = {**scorer, "learned": learned_entry(rec, centre, degraded, fashion["train_x"].numpy()),
              "pixels": pixel_entry(rec, splits, centre[0], sheets, fashion["train_x"].numpy(), folder / "pixels")}
    positives = validation_positives(rec, splits, folder / "positives")
    reject = calibrate((splits.val_x.numpy(), val_digits), val_non, scorer, band, positives)
    reject |= {"checkpoint_sha256": rec.model_id, "normalise": chosen, "made_by": code_identity(),
               "calibrated_on": {"digits": f"MNIST validation split ({len(val_digits)} images)",
                                 "nondigits": {k: len(e) for k, (_, e) in val_non.items()},
                                 "positives": {k: len(e) for k, (_, e) in positives.items()},
                                 "centres": f"{len(centre_images)} training-split images (not the gallery's)",
                                 "ink_band": f"those images, {N_POSITIVE} degraded or pen-written ones per kind "
                                             f"({', '.join(POSITIVE)}) and the validation fonts' digit sheets "
                                             f"({len(x)}, one group per style)"}}
    rec.reject = reject
    return val, reject


def study(rec: Recognizer, state: dict, ckpt: Path, model_name: str, data_root: str, per_font: int,
          results_dir: str) -> dict:
    """Calibrate on validation, store ckp/<model>/reject.json, measure the held-out wild set; returns the report
    (also added to results/wild/wild.json and wild.md, with the model's DET of digits against non-digits)."""
    splits, _ = load_splits(trained_params(state["params"], data_root=data_root, use_tqdm=False))
    fashion = load_idx_dataset(data_root, "fashion_mnist")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {part: make_wild_set(Path(tmp) / part, part, per_font) for part in ("val", "test")}
        say(f"wild sets drawn: {len(sets['val']['digits'])} + {len(sets['test']['digits'])} digit sheets, "
            f"{len(sets['val']['nondigits'])} + {len(sets['test']['nondigits'])} non-digits "
            f"({time.perf_counter() - t0:.0f} s)", False)
        train_x, train_y = splits.train_x.numpy(), splits.train_y.numpy()
        pick, rest = enrolment(train_y)
        gal = (rec.embed_loaded(train_x[pick]), train_y[pick])
        centre_e = rec.embed_loaded(train_x[rest])
        scorer = fit_scorer(centre_e, train_y[rest])  # centres, references, covariance
        val, reject = calibrate_on_validation(rec, sets["val"], splits, fashion, gal, scorer,
                                              (train_x[rest], train_y[rest], centre_e), Path(tmp) / "band")
        chosen = reject["normalise"]
        with atomic_write(ckpt.parent / "reject.json", "w") as f:
            json.dump({**reject, "checkpoint_file": file_identity(ckpt)}, f)
        say(f"normalisation of new images: {chosen}; reject score: {reject['score']}, threshold "
            f"{reject['threshold']:.4f} -> {ckpt.parent / 'reject.json'}", False)
        say("held out: the test fonts, seeds and splits", False)
        test = measure_digits(rec, sets["test"]["digits"], tuple(dict.fromkeys(("fit", chosen))), gal)
        draw_sheets(rec, sets["test"]["digits"], Path(results_dir) / "wild" / "sheets.png")
        test_non = nondigit_embeddings(rec, sets["test"]["nondigits"], fashion["test_x"].numpy()[:N_FASHION],
                                       (*NONDIGITS, *UNSEEN))
        look_x = rec.load([p for p, k in sets["test"]["nondigits"] if k == "lookalikes"])
        look = (look_x, rec.embed_loaded(look_x))
        # genuine digits the fonts do not draw, from the second half of the validation split
        half = len(splits.val_y) // 2
        pos = write_degraded(Path(tmp) / "test", splits.val_x.numpy()[half:], splits.val_y.numpy()[half:],
                             N_POSITIVE, 33)
        draw_positives(pos, Path(results_dir) / "wild" / "positives.png")
        pos_x = rec.load([p for p, _, _ in pos])
        pos_e = rec.embed_loaded(pos_x)
        pos_kind, pos_y = np.array([k for _, k, _ in pos]), np.array([d for *_, d in pos])
        pos_ok, pos_hit = accepted(rec, pos_x, pos_e), top1(pos_e, *gal) == pos_y
    mnist_x, mnist_y = splits.test_x.numpy(), splits.test_y.numpy()
    mnist_emb = rec.embed_loaded(mnist_x)
    look_ok = accepted(rec, *look)
    digit_s = digit_scores(mnist_x, mnist_emb, reject)  # per kind: MNIST test digits against it, chosen score
    per_kind = {}
    for k, (x, e) in {**test_non, "lookalikes": look}.items():
        non_s = digit_scores(x, e, reject)
        per_kind[k] = {**separation(digit_s, non_s), "curve": kind_curve(digit_s, non_s)}
    digit_ok = accepted(rec, test["x"], test["emb"])
    # which rule turns a genuine digit away: the ink band, or (inside it) the score
    digit_band, pos_band = in_band(test["x"], reject["band"]), in_band(pos_x, reject["band"])
    report = {
        "model": model_name, "checkpoint_sha256": rec.model_id, "made_by": code_identity(),
        "per_font": per_font, "reject": {k: v for k, v in reject.items() if k not in STORED},
        "validation": {"top1": val["top1"]},
        "test": {"top1": {"before": test["top1"]["fit"], "after": test["top1"][chosen]},
                 "digits_accepted": {s: float(digit_ok[test["styles"] == s].mean()) for s in STYLES},
                 "digits_in_band": {s: float(digit_band[test["styles"] == s].mean()) for s in STYLES},
                 "mnist_control": {"top1": float((top1(mnist_emb, *gal) == mnist_y).mean()),
                                   "accepted": float(accepted(rec, mnist_x, mnist_emb).mean()), "images": len(mnist_y)},
                 "nondigits_accepted": {k: float(accepted(rec, x, e).mean()) for k, (x, e) in test_non.items()},
                 "nondigits": {k: len(e) for k, (_, e) in test_non.items()},
                 "lookalikes_accepted": float(look_ok.mean()), "lookalikes": len(look_ok),
                 "separation": {k: {m: v for m, v in r.items() if m != "curve"} for k, r in per_kind.items()},
                 "positive": {k: {"images": int((pos_kind == k).sum()), "accepted": float(pos_ok[pos_kind == k].mean()),
                                  "in_band": float(pos_band[pos_kind == k].mean()),
                                  "top1": float(pos_hit[pos_kind == k].mean())} for k in POSITIVE}},
        "det": det_curves((mnist_x, mnist_emb), test_non, reject, reject["band"])}
    out = Path(results_dir) / "wild"
    reports = json.loads((out / "wild.json").read_text()) if (out / "wild.json").is_file() else {}
    reports[model_name] = report  # one entry per model measured
    write_json(out / "wild.json", reports)
    with atomic_write(out / "wild.md", "w") as f:
        f.write("".join(markdown(name, r) for name, r in sorted(reports.items())))
    fig = plots.det_figure([{"label": f"{k} (chosen)" if k == reject["score"] else k, **c}
                            for k, c in report["det"].items()], "digit or not: held-out non-digits vs MNIST test")
    save_figure(fig, out / f"{model_name}_reject_det.png")
    plots.close(fig)
    fig = plots.det_figure([{"label": k, **r["curve"]} for k, r in per_kind.items()],
                           f"{model_name}: MNIST test digits vs each held-out kind ({reject['score']} + ink band)")
    save_figure(fig, out / f"{model_name}_kinds_det.png")
    plots.close(fig)
    say(f"wild: {out / 'wild.json'} ({model_name}) in {time.perf_counter() - t0:.0f} s", False)
    return report
