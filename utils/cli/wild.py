"""`python main.py wild`: digits from the wild. Calibrates "is it a digit?" on validation, then measures a
held-out wild set of sheets drawn here (utils/data/wild.py) -> ckp/<model>/reject.json, results/wild/.

    python main.py wild [--model_name=resnet18_arcface] [--ckpt_dir=ckp] [--per_font=3]

1. Validation ("val" fonts and seeds, MNIST's validation split, Fashion-MNIST's training file): the
   normalisation of new images that reads the wild digits best (fit, mnist, mnist_stroke; stored with
   the calibration, it then replaces the model card's), and the reject score and threshold
   (utils/inference/reject.py): 99 % of the validation digits accepted, the score accepting fewer
   non-digits kept.
2. Held out ("test" fonts and seeds, MNIST's test split, Fashion-MNIST's test file), only reported: top-1
   per style before (the whole sheet fitted into the square, as before issue 25) and after (the card's
   normalisation), digits and non-digits accepted, and the curve of one against the other.
Top-1 = the identity of the nearest of 200 enrolled MNIST training-split images (the first 20 of each
digit), as `search` answers with such a gallery; the class centres come from the next 10,000 images.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from utils.core.config import TrainParams
from utils.core.errors import CheckpointError, ConfigError
from utils.core.io import atomic_write, save_figure, write_json
from utils.core.options import Option, describe, refuse_rest, split
from utils.core.progress import say
from utils.core.provenance import code_identity
from utils.data.images import prepare_grey
from utils.data.loading import Splits, load_idx_dataset, load_splits
from utils.data.wild import NONDIGITS, STYLES, make_wild_set
from utils.inference.recognizer import Recognizer, sha256
from utils.inference.reject import SCORES, calibrate, class_centres, in_band, ink_band, scores
from utils.inference.torch_backend import load_torch_embedder
from utils.scoring import paper_plots, plots

OPTIONS = {"model_name": Option(None, "the trained model: ckp/<model_name>/best.pt"),
           "ckpt_dir": Option("ckp", "folder of the checkpoints"),
           "data_root": Option("", "MNIST and Fashion-MNIST (default DATA_ROOT or ./data; downloaded if absent)"),
           "per_font": Option("3", "sheets per digit, style and font", int),
           "results_dir": Option("results", "where results/wild/ is written")}
NORMS = ("fit", "mnist", "mnist_stroke")
N_CENTRES, N_GALLERY, N_FASHION = 10_000, 20, 2_000


def explain(command: str, model_name: str) -> str:
    """`python main.py wild --help`."""
    own = {**OPTIONS, "model_name": Option(model_name, OPTIONS["model_name"].help)}
    return describe(own)


def top1(emb: np.ndarray, gallery: np.ndarray, gallery_y: np.ndarray) -> np.ndarray:
    """The digit of the nearest enrolled image (search's top-1 with one image per row of the gallery)."""
    return gallery_y[np.argmax(emb @ gallery.T, axis=1)]


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


def nondigit_embeddings(rec: Recognizer, items: list[tuple], fashion: np.ndarray) -> dict[str, tuple]:
    """{kind: (uint8 images, unit embeddings)} of the wild set's non-digits and of Fashion-MNIST images."""
    out = {}
    for kind in NONDIGITS:
        x = rec.load([p for p, k in items if k == kind])
        out[kind] = (x, rec.embed_loaded(x))
    c = rec.card  # Fashion-MNIST images go through the same normalisation as image files would
    x = np.stack([prepare_grey(a.astype(np.float32) / 255.0, c["native_size"], c["polarity"], "auto", c["normalise"])
                  for a in fashion])
    out["fashion_mnist"] = (x, rec.embed_loaded(x))
    return out


def accepted(rec: Recognizer, x: np.ndarray, emb: np.ndarray) -> np.ndarray:
    return np.array([d["digit"] for d in rec.digits(x, emb)])


def calibrate_on_validation(rec: Recognizer, wild_val: dict, splits: Splits, fashion: dict, gal: tuple,
                            centres: np.ndarray, centre_images: np.ndarray) -> tuple[dict, dict]:
    """Choose the normalisation of new images and calibrate the reject option, on validation data only: the
    validation wild fonts, MNIST's validation split, Fashion-MNIST's train split. Sets both on `rec`."""
    say("validation: normalisation and the reject score", False)
    val = measure_digits(rec, wild_val["digits"], NORMS, gal)
    # the normalisation that reads the validation wild digits best (mean over styles)
    chosen = max(NORMS, key=lambda n: np.mean(list(val["top1"][n].values())))
    rec.card = {**rec.card, "normalise": chosen}
    val_digits = rec.embed_loaded(splits.val_x.numpy())
    val_non = nondigit_embeddings(rec, wild_val["nondigits"], fashion["train_x"].numpy()[:N_FASHION])
    reject = calibrate((splits.val_x.numpy(), val_digits), val_non, centres, ink_band(centre_images))
    reject |= {"checkpoint_sha256": rec.model_id, "normalise": chosen, "made_by": code_identity(),
               "calibrated_on": {"digits": f"MNIST validation split ({len(val_digits)} images)",
                                 "nondigits": {k: len(e) for k, (_, e) in val_non.items()},
                                 "centres": f"{len(centre_images)} training-split images (not the gallery's)"}}
    rec.reject = reject
    return val, reject


def run(command: str, args: list[str], model_name: str) -> None:
    import os

    opts, rest = split(args, {**OPTIONS, "model_name": Option(model_name, OPTIONS["model_name"].help)})
    refuse_rest("wild", rest, OPTIONS)
    if opts["per_font"] < 1:
        raise ConfigError(f"--per_font={opts['per_font']}: out of range (>= 1).")
    ckpt = Path(opts["ckpt_dir"]) / opts["model_name"] / "best.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"no trained model at {ckpt}; train one (python main.py arcface) or pick another "
                              f"with --model_name / --ckpt_dir.")
    embedder, state = load_torch_embedder(ckpt)  # not from_checkpoint: an older reject.json is replaced here
    rec = Recognizer(embedder, state["input"], state["thresholds"], state["far_curve"], sha256(ckpt))
    if not rec.card.get("normalise", "fit").startswith("mnist"):
        raise ConfigError(f"{opts['model_name']} was not trained on a digit data set (its images are not "
                          f"normalised as MNIST's); the wild set is made of digits.")
    p = state["params"]
    fields = {f.name for f in dataclasses.fields(TrainParams)}
    data_root = opts["data_root"] or os.environ.get("DATA_ROOT", "./data")
    params = dataclasses.replace(TrainParams(**{k: v for k, v in p.items() if k in fields}), data_root=data_root)
    splits, _ = load_splits(params)
    fashion = load_idx_dataset(data_root, "fashion_mnist")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {part: make_wild_set(Path(tmp) / part, part, opts["per_font"]) for part in ("val", "test")}
        say(f"wild sets drawn: {len(sets['val']['digits'])} + {len(sets['test']['digits'])} digit sheets, "
            f"{len(sets['val']['nondigits'])} + {len(sets['test']['nondigits'])} non-digits "
            f"({time.perf_counter() - t0:.0f} s)", False)
        train_x, train_y = splits.train_x.numpy(), splits.train_y.numpy()
        pick = np.concatenate([np.flatnonzero(train_y == d)[:N_GALLERY] for d in range(10)])
        rest = np.setdiff1d(np.arange(len(train_y)), pick)[:N_CENTRES]
        gal = (rec.embed_loaded(train_x[pick]), train_y[pick])
        centres = class_centres(rec.embed_loaded(train_x[rest]), train_y[rest])
        val, reject = calibrate_on_validation(rec, sets["val"], splits, fashion, gal, centres, train_x[rest])
        chosen = reject["normalise"]
        with atomic_write(ckpt.parent / "reject.json", "w") as f:
            json.dump(reject, f)
        say(f"normalisation of new images: {chosen}; reject score: {reject['score']}, threshold "
            f"{reject['threshold']:.4f} -> {ckpt.parent / 'reject.json'}", False)
        say("held out: the test fonts, seeds and splits", False)
        test = measure_digits(rec, sets["test"]["digits"], tuple(dict.fromkeys(("fit", chosen))), gal)
        draw_sheets(rec, sets["test"]["digits"], Path(opts["results_dir"]) / "wild" / "sheets.png")
        test_non = nondigit_embeddings(rec, sets["test"]["nondigits"], fashion["test_x"].numpy()[:N_FASHION])
    mnist_x, mnist_y = splits.test_x.numpy(), splits.test_y.numpy()
    mnist_emb = rec.embed_loaded(mnist_x)
    digit_ok = accepted(rec, test["x"], test["emb"])
    report = {
        "model": opts["model_name"], "checkpoint_sha256": rec.model_id, "made_by": code_identity(),
        "per_font": opts["per_font"], "reject": {k: v for k, v in reject.items() if k != "centres"},
        "validation": {"top1": val["top1"]},
        "test": {"top1": {"before": test["top1"]["fit"], "after": test["top1"][chosen]},
                 "digits_accepted": {s: float(digit_ok[test["styles"] == s].mean()) for s in STYLES},
                 "mnist_control": {"top1": float((top1(mnist_emb, *gal) == mnist_y).mean()),
                                   "accepted": float(accepted(rec, mnist_x, mnist_emb).mean()), "images": len(mnist_y)},
                 "nondigits_accepted": {k: float(accepted(rec, x, e).mean()) for k, (x, e) in test_non.items()},
                 "nondigits": {k: len(e) for k, (_, e) in test_non.items()}},
        "det": det_curves((mnist_x, mnist_emb), test_non, centres, reject["band"])}
    out = Path(opts["results_dir"]) / "wild"
    reports = json.loads((out / "wild.json").read_text()) if (out / "wild.json").is_file() else {}
    reports[opts["model_name"]] = report  # one entry per model measured
    write_json(out / "wild.json", reports)
    with atomic_write(out / "wild.md", "w") as f:
        f.write("".join(markdown(name, r) for name, r in sorted(reports.items())))
    fig = plots.det_figure([{"label": f"{k} (chosen)" if k == reject["score"] else k, **c}
                            for k, c in report["det"].items()], "digit or not: held-out non-digits vs MNIST test")
    save_figure(fig, out / f"{opts['model_name']}_reject_det.png")
    plots.close(fig)
    say(f"wild: {out / 'wild.json'} ({opts['model_name']}) in {time.perf_counter() - t0:.0f} s", False)


def draw_sheets(rec: Recognizer, items: list[tuple], path: Path) -> None:
    """The first held-out '3' of every style as drawn, and as the network sees it under each normalisation."""
    from PIL import Image

    first = {style: p for p, style, d in reversed(items) if d == 3}
    cols = []
    for style in STYLES:
        with Image.open(first[style]) as im:
            sheet = np.asarray(im.convert("RGBA" if im.mode == "RGBA" else "RGB"))
        if sheet.shape[-1] == 4:  # show a transparent sheet on a checkerboard-free grey
            sheet = (sheet[..., :3] * (sheet[..., 3:] / 255) + 128 * (1 - sheet[..., 3:] / 255)).astype(np.uint8)
        cols.append({"title": style.replace("_", " "),
                     "images": [sheet, *(rec.load([first[style]], normalise=n)[0] for n in NORMS)]})
    fig = paper_plots.wild_sheets(cols, ["sheet", *(f"{n} (before)" if n == "fit" else n for n in NORMS)])
    save_figure(fig, path)
    plots.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(name: str, r: dict) -> str:
    """The tables of one model's report (results/wild/wild.md; the docs quote their rows)."""
    t, v, norms = r["test"], r["validation"]["top1"], list(r["validation"]["top1"])
    rows = [f"### {name}\n\nHeld out (test fonts and seeds; {r['per_font']} sheet(s) per digit, style and font):\n",
            "| style | top-1 before (fit) | top-1 after | digits accepted |", "|---|---|---|---|"]
    rows += [f"| {s} | {pct(t['top1']['before'][s])} | {pct(t['top1']['after'][s])} | {pct(t['digits_accepted'][s])} |"
             for s in STYLES]
    c = t["mnist_control"]
    rows += [f"| MNIST test (control, {c['images']} images) | | {pct(c['top1'])} | {pct(c['accepted'])} |", "",
             f"Not digits, accepted as digits (reject score `{r['reject']['score']}`, threshold "
             f"{r['reject']['threshold']:.4f}):\n", "| kind | images | accepted |", "|---|---|---|"]
    rows += [f"| {k} | {t['nondigits'][k]} | {pct(a)} |" for k, a in t["nondigits_accepted"].items()]
    rows += ["", "Validation (the choices): top-1 per normalisation, and each reject score at 99 % of the "
             "validation digits accepted:\n", "| style | " + " | ".join(norms) + " |", "|---" * (len(norms) + 1) + "|"]
    rows += [f"| {s} | " + " | ".join(pct(v[n][s]) for n in norms) + " |" for s in STYLES]
    rows += ["", "| score | threshold | validation digits accepted | validation non-digits accepted (mean of kinds) |",
             "|---|---|---|---|"]
    rows += [f"| {k} + ink band | {c['threshold']:.4f} | {pct(c['digits_accepted'])} | "
             f"{pct(c['nondigits_accepted_mean'])} |" for k, c in r["reject"]["candidates"].items()]
    b = r["reject"]["band_alone"]
    rows += [f"| ink band alone | | {pct(b['digits_accepted'])} | "
             f"{pct(sum(b['nondigits_accepted'].values()) / len(b['nondigits_accepted']))} |"]
    return "\n".join(rows) + "\n\n"


def det_curves(digits: tuple[np.ndarray, np.ndarray], nondigits: dict[str, tuple[np.ndarray, np.ndarray]],
               centres: np.ndarray, band: dict) -> dict:
    """Per score (within the ink band): non-digits accepted (FAR) against digits rejected (FRR) over
    thresholds; (images, embeddings) pairs."""
    def banded(x: np.ndarray, e: np.ndarray, kind: str) -> np.ndarray:
        return np.where(in_band(x, band), scores(e, centres, kind), -np.inf)

    out = {}
    for kind in SCORES:
        d = banded(*digits, kind)
        n = np.concatenate([banded(x, e, kind) for x, e in nondigits.values()])
        both = np.concatenate([d, n])
        thr = np.unique(np.quantile(both[np.isfinite(both)], np.linspace(0, 1, 400)))
        far, frr = np.array([(n >= t).mean() for t in thr]), np.array([(d < t).mean() for t in thr])
        i = int(np.argmin(np.abs(far - frr)))
        out[kind] = {"far": far.tolist(), "frr": frr.tolist(), "eer": float((far[i] + frr[i]) / 2)}
    return out
