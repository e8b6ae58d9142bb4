"""The wild study's pictures and tables (utils/inference/wild_study.py measures, this renders): the held-out
sheets as drawn and as the network sees them, the positive kinds, and one model's report as the markdown of
results/wild/wild.md, whose rows the wild pages quote (tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.core.io import save_figure
from utils.data.images import NORMALISE_MODES as NORMS
from utils.data.wild import LOOKALIKES, POSITIVE, STYLES
from utils.inference.recognizer import Recognizer
from utils.scoring import paper_plots, plots


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


def draw_positives(made: list[tuple[str, str, int]], path: Path) -> None:
    """The first held-out sheet of every digit, one row per positive kind (degraded and pen-written)."""
    from PIL import Image

    first = {(kind, d): p for p, kind, d in reversed(made)}
    cols = []
    for d in range(10):
        images = []
        for kind in POSITIVE:
            if (kind, d) not in first:  # a small draw may hold no sheet of this digit: an empty cell
                images.append(np.full((8, 8), 255, np.uint8))
                continue
            with Image.open(first[kind, d]) as im:
                images.append(np.asarray(im.convert("L")))
        cols.append({"title": str(d), "images": images})
    fig = paper_plots.wild_sheets(cols, [k.replace("_", " ") for k in POSITIVE])
    save_figure(fig, path)
    plots.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _cell(v: float | None) -> str:
    return "" if v is None else f" {pct(v)} |"


def _worst(shares: dict[str, float]) -> str:
    kind = min(shares, key=shares.get)
    return f"{pct(shares[kind])} ({kind})"


def markdown(name: str, r: dict) -> str:
    """The tables of one model's report (results/wild/wild.md; the docs quote their rows)."""
    t, v, norms = r["test"], r["validation"]["top1"], list(r["validation"]["top1"])
    band = t.get("digits_in_band")  # measured since the report says which rule turns a digit away
    extra = " inside the ink band |" if band else ""
    rows = [f"### {name}\n\nHeld out (test fonts and seeds; {r['per_font']} sheet(s) per digit, style and font):\n",
            "| style | top-1 before (fit) | top-1 after | digits accepted |" + extra,
            "|---|---|---|---|" + ("---|" if band else "")]
    rows += [f"| {s} | {pct(t['top1']['before'][s])} | {pct(t['top1']['after'][s])} | {pct(t['digits_accepted'][s])} |"
             + _cell(band[s] if band else None) for s in STYLES]
    for k, d in t.get("positive", {}).items():  # measured since the degraded digits joined the report
        how, source = ("written", "written by utils/data/pen.py") if k == "handwriting" else \
            ("degraded", "validation-split digits")
        rows += [f"| {how}: {k} ({d['images']} {source}) | | {pct(d['top1'])} | "
                 f"{pct(d['accepted'])} |" + _cell(d.get("in_band"))]
    c = t["mnist_control"]
    rows += [f"| MNIST test (control, {c['images']} images) | | {pct(c['top1'])} | {pct(c['accepted'])} |"
             + (" |" if band else ""), "",
             f"Not digits, accepted as digits (reject score `{r['reject']['score']}`, threshold "
             f"{r['reject']['threshold']:.4f}):\n"]
    sep = t.get("separation")  # measured since AUROC and FPR joined the report
    if sep is None:
        rows += ["| kind | images | accepted |", "|---|---|---|"]
        rows += [f"| {k} | {t['nondigits'][k]} | {pct(a)} |" for k, a in t["nondigits_accepted"].items()]
    else:  # the last three columns against MNIST test digits, thresholds set on those digits
        rows += ["| kind | images | accepted | AUROC | accepted at 95 % of digits | at 99 % of digits |",
                 "|---|---|---|---|---|---|"]
        rows += [f"| {k} | {t['nondigits'][k]} | {pct(a)} | {sep[k]['auroc']:.4f} | "
                 f"{pct(sep[k]['accepted_at_95_digits'])} | {pct(sep[k]['accepted_at_99_digits'])} |"
                 for k, a in t["nondigits_accepted"].items()]
        look = sep["lookalikes"]
        rows += [f"| look-alikes ({LOOKALIKES}: no target) | {t['lookalikes']} | {pct(t['lookalikes_accepted'])} | "
                 f"{look['auroc']:.4f} | {pct(look['accepted_at_95_digits'])} | {pct(look['accepted_at_99_digits'])} |"]
    rows += ["", "Validation (the choices): top-1 per normalisation, and each reject score at 99 % of the "
             "validation digits accepted:\n", "| style | " + " | ".join(norms) + " |", "|---" * (len(norms) + 1) + "|"]
    rows += [f"| {s} | " + " | ".join(pct(v[n][s]) for n in norms) + " |" for s in STYLES]
    cands = r["reject"]["candidates"]
    pos = all("positives_accepted" in c for c in cands.values())  # reports before the positives' rule have none
    rows += ["", "| score | threshold | validation digits accepted | validation non-digits accepted (mean of kinds) |"
             + (" validation positive kinds accepted (worst) |" if pos else ""), "|---|---|---|---|" + "---|" * pos]
    rows += [f"| {k} + ink band | {c['threshold']:.4f} | {pct(c['digits_accepted'])} | "
             f"{pct(c['nondigits_accepted_mean'])} |" + (f" {_worst(c['positives_accepted'])} |" if pos else "")
             for k, c in cands.items()]
    b = r["reject"]["band_alone"]
    rows += [f"| ink band alone | | {pct(b['digits_accepted'])} | "
             f"{pct(sum(b['nondigits_accepted'].values()) / len(b['nondigits_accepted']))} |" + " |" * pos]
    return "\n".join(rows) + "\n\n"
