"""A wild set made here: digits drawn with fonts in the styles people photograph or scan, and sheets
that hold no digit, written as image files so that they take the same path as a user's images.

Fonts: the TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern), the same on every machine
with the same matplotlib. They are split by their sorted position: even -> "val" (the set every
choice is made on: the reject threshold, the stroke rule), odd -> "test" (held out, only reported).
The two parts also use different random seeds for every style, so no sheet is shared.

Digit styles (each digit of each font, `per_font` sheets each, positions/angles/noise drawn per sheet):
  clean           black ink on white paper
  white_on_black  white ink on black (MNIST's own polarity)
  transparent     black ink on a transparent sheet (RGBA)
  thin, thick     pen width shrunk / grown by a disk of a few pixels at 128 px
  ink_on_paper    blue, green, red or violet ink on cream, yellow, pink or light blue paper
  grey_paper      paper of grey 225-250 (JPEG)
  photo           grey paper with uneven light, blur and sensor noise (JPEG)
  small_offcentre a 24-40 px digit anywhere on a 320 px sheet
  rotated         turned by 5-15 degrees either way
  chalk           light broken strokes on a dark green board
Non-digits: letters (A-Z, a-z but the look-alikes), symbols, blank sheets, noise sheets and scribbles
(random curves). Fashion-MNIST images, one more kind of non-digit, come from the data set itself.
Held out only (the "test" part): geometric shapes and crops of the photograph and the terrain map that
matplotlib ships (sample_data), kinds that no training outlier and no calibration is drawn from.
Look-alikes (O o I l S Z B g q b G: shaped like 0, 1, 5, 2, 8, 9, 6) are drawn as their own kind: a
digit-shaped letter is a digit to a digit model, so they are reported apart and count toward no target,
and the outliers of training (utils/data/outliers.py) never include them.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

from utils.data.pen import pen_sheet
from utils.data.regions import disk

STYLES = ("clean", "white_on_black", "transparent", "thin", "thick", "ink_on_paper", "grey_paper", "photo",
          "small_offcentre", "rotated", "chalk")
NONDIGITS = ("letters", "symbols", "blank", "noise", "scribble")
UNSEEN = ("shapes", "photo_patches")  # the test part only: no training and no choice sees their like
# genuine digits the fonts do not draw: MNIST validation-split digits degraded as a camera, a scanner or a
# weak pen would (never the test split), and digits written with a pen by our own code (utils/data/pen.py,
# each labelled as the split's digit it stands for); measured as digits that must be accepted
POSITIVE = ("blurred", "low_res", "faint", "jpeg", "handwriting")
LOOKALIKES = "OoIlSZBgqbG"  # O/o/0, I/l/1, S/5, Z/2, B/8, g/q/9, b/6, G/6
LETTERS = "".join(c for c in string.ascii_letters if c not in LOOKALIKES)
SYMBOLS = "+-=*#@%&?!$<>/\\()[]{}~^|"
SHEET = 128  # the side of a sheet in pixels (small_offcentre: 320)
SEEDS = {"val": 1_000, "test": 2_000}
INKS = [(25, 45, 160), (20, 110, 50), (170, 30, 30), (90, 40, 140)]
PAPERS = [(250, 243, 215), (252, 246, 170), (250, 220, 225), (215, 232, 250)]


def font_files(part: str) -> list[Path]:
    """The fonts of one part ("val" or "test"): matplotlib's text fonts that draw all ten digits."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    text = sorted(p for p in folder.glob("*.ttf")
                  if p.stem.startswith(("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr", "cmb", "cmss", "cmti",
                                        "cmtt")) and "Display" not in p.stem)
    return text[0 if part == "val" else 1::2]


def glyph(text: str, font: Path, px: int) -> np.ndarray:
    """Ink (1) on nothing (0), float32, cropped to its box: `text` drawn with `font` at `px` pixels."""
    f = ImageFont.truetype(str(font), px)
    left, top, right, bottom = f.getbbox(text)
    im = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(im).text((2 - left, 2 - top), text, fill=255, font=f)
    a = np.asarray(im, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(a > 0.05)
    return a[rows.min():rows.max() + 1, cols.min():cols.max() + 1] if len(rows) else a


def place(ink: np.ndarray, side: int, height: int, rng: np.random.Generator, centre: bool = True) -> np.ndarray:
    """The ink scaled to `height` pixels on its longer side (aspect kept) on an empty `side` x `side` field."""
    scale = height / max(ink.shape)
    h, w = max(1, round(ink.shape[0] * scale)), max(1, min(side - 2, round(ink.shape[1] * scale)))
    small = np.asarray(Image.fromarray(ink, mode="F").resize((w, h), Image.LANCZOS), dtype=np.float32)
    out = np.zeros((side, side), np.float32)
    if centre:
        top, left = (side - h) // 2 + rng.integers(-6, 7), (side - w) // 2 + rng.integers(-6, 7)
    else:
        top, left = rng.integers(0, side - h), rng.integers(0, side - w)
    top, left = int(np.clip(top, 0, side - h)), int(np.clip(left, 0, side - w))
    out[top:top + h, left:left + w] = small
    return np.clip(out, 0.0, 1.0)


def style_ink(ink: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """The style's changes to the strokes themselves (pen width, rotation, chalk's broken lines)."""
    if style == "thin":
        return ndimage.grey_erosion(ink, footprint=disk(int(rng.integers(2, 4))))
    if style == "thick":
        return ndimage.grey_dilation(ink, footprint=disk(int(rng.integers(4, 7))))
    if style == "rotated":
        angle = float(rng.uniform(5, 15)) * rng.choice([-1, 1])
        return np.clip(ndimage.rotate(ink, angle, reshape=False, order=1), 0, 1)
    if style == "chalk":
        grain = ndimage.uniform_filter(rng.random(ink.shape).astype(np.float32), 3)
        return ink * np.clip((grain - 0.35) * 5, 0.15, 1.0)
    return ink


def paint(ink: np.ndarray, style: str, rng: np.random.Generator) -> Image.Image:
    """Ink in [0, 1] on a field -> the sheet as the style's camera or scanner would save it."""
    a = ink[..., None]
    if style == "white_on_black":
        return Image.fromarray(np.uint8(np.rint(255 * ink)), mode="L")
    if style == "transparent":
        rgba = np.zeros((*ink.shape, 4), np.uint8)
        rgba[..., 3] = np.uint8(np.rint(255 * ink))
        return Image.fromarray(rgba, mode="RGBA")
    if style == "ink_on_paper":
        paper, colour = np.array(PAPERS[rng.integers(len(PAPERS))]), np.array(INKS[rng.integers(len(INKS))])
        return Image.fromarray(np.uint8(np.rint(paper * (1 - a) + colour * a)), mode="RGB")
    if style == "grey_paper":
        paper = float(rng.uniform(225, 250))
        return Image.fromarray(np.uint8(np.rint(paper * (1 - ink) + 20 * ink)), mode="L")
    if style == "photo":
        h, w = ink.shape
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        light = rng.uniform(150, 200) + rng.uniform(-30, 30) * xx + rng.uniform(-30, 30) * yy
        grey = light * (1 - ink) + rng.uniform(20, 60) * ink + rng.normal(0, rng.uniform(6, 14), ink.shape)
        im = Image.fromarray(np.uint8(np.clip(np.rint(grey), 0, 255)), mode="L")
        return im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.2))))
    if style == "chalk":
        board = np.array([40, 62, 48]) + rng.normal(0, 6, (*ink.shape, 1))
        return Image.fromarray(np.uint8(np.clip(np.rint(board * (1 - a) + 225 * a), 0, 255)), mode="RGB")
    return Image.fromarray(np.uint8(np.rint(255 * (1 - ink))), mode="L")  # black ink on white paper


def digit_sheet(ink: np.ndarray, style: str, rng: np.random.Generator) -> Image.Image:
    if style == "small_offcentre":
        return paint(place(ink, 320, int(rng.integers(24, 41)), rng, centre=False), "clean", rng)
    field = place(ink, SHEET, int(rng.integers(70, 96)), rng)
    return paint(style_ink(field, style, rng), style, rng)


def scribble(rng: np.random.Generator) -> np.ndarray:
    """A random smooth curve of 2-4 bends drawn with a pen of 6-12 px."""
    im = Image.new("L", (SHEET, SHEET), 0)
    pts = rng.uniform(20, SHEET - 20, size=(int(rng.integers(3, 6)), 2))
    t = np.linspace(0, 1, 60)[:, None]
    curve = [tuple(p) for p in ((1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t ** 2 * pts[-1])]
    ImageDraw.Draw(im).line(curve, fill=255, width=int(rng.integers(6, 13)), joint="curve")
    return np.asarray(im, dtype=np.float32) / 255.0


def shapes(rng: np.random.Generator) -> np.ndarray:
    """1-3 ellipses, rectangles or regular polygons, outlined with a pen of 4-9 px or filled."""
    im = Image.new("L", (SHEET, SHEET), 0)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(30, SHEET - 30, 2)
        r = float(rng.uniform(15, 45))
        fill, pen = (255 if rng.random() < 0.3 else None), int(rng.integers(4, 10))
        box = [cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r * rng.uniform(0.5, 1)]
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, outline=255, width=pen, fill=fill)
        elif kind == 1:
            draw.rectangle(box, outline=255, width=pen, fill=fill)
        else:
            draw.regular_polygon((cx, cy, r), int(rng.integers(3, 9)), rotation=float(rng.uniform(0, 90)),
                                 outline=255, width=pen, fill=fill)
    return np.asarray(im, dtype=np.float32) / 255.0


def photo_patch(rng: np.random.Generator) -> Image.Image:
    """A grey crop (40-100 % of the shorter side) of the photograph or the terrain map matplotlib ships."""
    import matplotlib

    data = Path(matplotlib.get_data_path()) / "sample_data"
    if rng.random() < 0.5:
        with Image.open(data / "grace_hopper.jpg") as im:
            a = np.asarray(im.convert("L"), dtype=np.float32)
    else:
        with np.load(data / "jacksboro_fault_dem.npz", allow_pickle=False) as z:
            e = z["elevation"].astype(np.float32)
        a = 255 * (e - e.min()) / max(float(e.max() - e.min()), 1e-6)
    side = int(min(a.shape) * rng.uniform(0.4, 1.0))
    y, x = (int(rng.integers(0, n - side + 1)) for n in a.shape)
    return Image.fromarray(np.uint8(a[y:y + side, x:x + side])).resize((SHEET, SHEET), Image.BILINEAR)


def degraded_sheet(digit: np.ndarray, label: int, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """An MNIST digit (uint8 [28, 28], light ink on dark) as a sheet of dark ink on white paper at SHEET px,
    degraded by `kind`: blurred (Gaussian, 2-4 px), low_res (shrunk to 8-16 px, then resampled up),
    faint (grey ink, 20-45 % contrast) or jpeg (quality 8-20); or, for handwriting, its label written anew
    with utils/data/pen.py. Returns the sheet and its file suffix."""
    if kind == "handwriting":
        return pen_sheet(label, SHEET, rng), ".png"
    ink = np.asarray(Image.fromarray(digit).resize((SHEET, SHEET), Image.BICUBIC), dtype=np.float32) / 255.0
    ink = np.clip(ink, 0.0, 1.0)
    if kind == "faint":
        paper = float(rng.uniform(235, 255))
        contrast = float(rng.uniform(0.20, 0.45))
        return Image.fromarray(np.uint8(np.rint(paper * (1 - contrast * ink))), mode="L"), ".png"
    sheet = Image.fromarray(np.uint8(np.rint(255 * (1 - ink))), mode="L")
    if kind == "blurred":
        return sheet.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 4)))), ".png"
    if kind == "low_res":
        side = int(rng.integers(8, 17))
        return sheet.resize((side, side), Image.BILINEAR).resize((SHEET, SHEET), Image.BILINEAR), ".png"
    return sheet, f".q{int(rng.integers(8, 21))}.jpg"


def write_degraded(folder: Path, digits: np.ndarray, labels: np.ndarray, per_kind: int,
                   seed: int) -> list[tuple[str, str, int]]:
    """per_kind sheets of every POSITIVE kind from the given digits -> [(path, kind, label)], same files every time."""
    out = []
    for n, kind in enumerate(POSITIVE):
        rng = np.random.default_rng([seed, n])
        for i in rng.choice(len(digits), size=min(per_kind, len(digits)), replace=False):
            im, suffix = degraded_sheet(digits[i], int(labels[i]), kind, rng)
            path = folder / "positive" / kind / f"{i}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix.endswith(".jpg"):
                im.save(path, quality=int(suffix.split(".")[1][1:]))
            else:
                im.save(path)
            out.append((str(path), kind, int(labels[i])))
    return out


def nondigit_sheet(kind: str, font: Path, i: int, rng: np.random.Generator) -> Image.Image:
    style = ("clean", "ink_on_paper", "grey_paper", "photo", "white_on_black")[i % 5]
    if kind in ("letters", "symbols", "lookalikes"):
        chars = {"letters": LETTERS, "symbols": SYMBOLS, "lookalikes": LOOKALIKES}[kind]
        ink = place(glyph(chars[i % len(chars)], font, 96), SHEET, int(rng.integers(50, 96)), rng)
    elif kind == "scribble":
        ink = scribble(rng)
    elif kind == "shapes":
        ink = shapes(rng)
    elif kind == "photo_patches":
        return photo_patch(rng)
    else:
        ink = np.zeros((SHEET, SHEET), np.float32)
    if kind == "noise":
        return Image.fromarray(np.uint8(rng.integers(0, 256, (SHEET, SHEET))), mode="L")
    return paint(ink, style, rng)


def make_wild_set(folder: Path, part: str, per_font: int = 2, nondigits_per_font: int = 20) -> dict[str, list]:
    """Write one part's sheets under `folder` (digits/<style>/<digit>/*.png|jpg, nondigits/<kind>/*.png)
    and return {"digits": [(path, style, digit)], "nondigits": [(path, kind)]}; the same files every time."""
    fonts, out = font_files(part), {"digits": [], "nondigits": []}
    for s, style in enumerate(STYLES):
        rng = np.random.default_rng(SEEDS[part] + s)
        suffix = ".jpg" if style in ("grey_paper", "photo") else ".png"
        for font in fonts:
            for d in range(10):
                ink = glyph(str(d), font, 96)
                for k in range(per_font):
                    path = folder / "digits" / style / str(d) / f"{font.stem}_{k}{suffix}"
                    save(digit_sheet(ink, style, rng), path)
                    out["digits"].append((str(path), style, d))
    for n, kind in enumerate((*NONDIGITS, "lookalikes", *(UNSEEN if part == "test" else ()))):
        rng = np.random.default_rng(SEEDS[part] + 100 + n)
        for font in fonts:
            for i in range(nondigits_per_font):
                path = folder / "nondigits" / kind / f"{font.stem}_{i}.png"
                save(nondigit_sheet(kind, font, i + fonts.index(font), rng), path)
                out["nondigits"].append((str(path), kind))
    return out


def save(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90) if path.suffix == ".jpg" else im.save(path)
