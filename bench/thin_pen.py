"""How much of a digit the wild set's thin pen leaves (issue 33: why thin pens miss 97 %):

    python -m bench.thin_pen [--per_font=3] [--out=results/wild/thin_pen.json]

The `thin` style erodes each glyph by a disk of radius 2 or 3 pixels on its 128 px sheet
(utils/data/wild.style_ink). On fonts with hairlines (serifs, Computer Modern) that removes strokes, not
just width. For every thin sheet of both parts this counts the ink kept (pixels above one half, after
against before) and whether the strokes broke into more pieces than the glyph had, from the same random
draws `make_wild_set` takes (checked sheet by sheet against `digit_sheet`). Nothing is trained or chosen
here: it measures the data, so the held-out part may be described.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from utils.core.io import write_json
from utils.core.options import Option, refuse_rest, run_script, split
from utils.core.provenance import code_identity
from utils.data.wild import SEEDS, SHEET, STYLES, digit_sheet, font_files, glyph, place, style_ink

OPTIONS = {"per_font": Option("3", "sheets per digit and font (the wild command's default)", int),
           "out": Option("results/wild/thin_pen.json", "JSON to write")}


def style_fields(part: str, per_font: int, style: str = "thin"):
    """(font, digit, field before, field after) of every sheet of `part` in a pen style (thin or thick: black
    ink on white, its pen the only change), in make_wild_set's order."""
    rng = np.random.default_rng(SEEDS[part] + STYLES.index(style))
    for font in font_files(part):
        for d in range(10):
            ink = glyph(str(d), font, 96)
            for _ in range(per_font):
                again = copy.deepcopy(rng)
                field = place(ink, SHEET, int(rng.integers(70, 96)), rng)
                after = style_ink(field, style, rng)
                sheet = np.asarray(digit_sheet(ink, style, again))
                if not np.array_equal(sheet, np.uint8(np.rint(255 * (1 - after)))):
                    raise SystemExit(f"the {style} sheets are drawn differently now; update bench/thin_pen.py")
                yield font.stem, d, field, after


def strokes_broken(before: np.ndarray, after: np.ndarray) -> bool:
    """The pen left the glyph in more pieces than it had (ink above one half)."""
    return ndimage.label(after > 0.5)[1] > ndimage.label(before > 0.5)[1]


def measure(part: str, per_font: int) -> dict:
    kept, broken, fonts = [], [], {}
    for font, _, before, after in style_fields(part, per_font):
        k = float((after > 0.5).sum() / max(1, (before > 0.5).sum()))
        split_up = strokes_broken(before, after)
        kept.append(k)
        broken.append(split_up)
        f = fonts.setdefault(font, {"sheets": 0, "broken": 0, "under_20pct_ink": 0})
        f["sheets"] += 1
        f["broken"] += int(split_up)
        f["under_20pct_ink"] += int(k < 0.2)
    kept_a, broken_a = np.array(kept), np.array(broken)
    return {"sheets": len(kept), "ink_kept_median": round(float(np.median(kept_a)), 3),
            "under_20pct_ink": int((kept_a < 0.2).sum()), "under_50pct_ink": int((kept_a < 0.5).sum()),
            "strokes_broken": int(broken_a.sum()),
            "broken_or_under_20pct": int((broken_a | (kept_a < 0.2)).sum()), "fonts": fonts}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.thin_pen", rest, OPTIONS)
    args = SimpleNamespace(**opts)
    report = {"made_by": code_identity(), "per_font": args.per_font,
              "parts": {part: measure(part, args.per_font) for part in ("val", "test")}}
    for part, r in report["parts"].items():
        n = r["sheets"]
        print(f"{part}: {n} thin sheets, ink kept median {r['ink_kept_median']:.0%}; under 20 % of the ink "
              f"{r['under_20pct_ink']} ({r['under_20pct_ink'] / n:.1%}), under half {r['under_50pct_ink']} "
              f"({r['under_50pct_ink'] / n:.1%}), strokes broken apart {r['strokes_broken']} "
              f"({r['strokes_broken'] / n:.1%})")
    write_json(args.out, report)


if __name__ == "__main__":
    run_script(main, OPTIONS)
