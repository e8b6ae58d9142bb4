"""Images from the wild -> the grey uint8 squares the models are trained on (numpy + PIL, no torch).

Any file PIL reads (PNG, JPEG, BMP, TIFF, WebP, ...), any size, grey or colour, 1, 8 or 16 bits, with
or without alpha:
  1. decoded to grey in [0, 1]: luminance 0.299 R + 0.587 G + 0.114 B; every bit depth scaled by its
     own maximum (65535 for 16-bit grey, not clipped to 0/255);
  2. alpha composited over a background that contrasts with the opaque pixels (ink drawn on a
     transparent sheet stays visible whatever its colour);
  3. polarity: MNIST digits are light on dark, ink on paper is dark on light. `invert="auto"` compares
     the image's border with its centre and inverts when they disagree with the model's training data;
  4. fitted into a square of the data set's native size with the aspect ratio kept, padded with the
     border's grey, and quantised to uint8 like the training images.
The network then sees it exactly as it saw its training images (same resize and normalisation).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.core.errors import ImageError
from utils.data.regions import box_mean, disk, distance_to_background, label, window_extreme

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp", ".gif"}
POLARITIES = ("light_on_dark", "dark_on_light", "none")
INVERT_MODES = ("auto", "true", "false")
NORMALISE_MODES = ("fit", "mnist", "mnist_stroke")  # how a new image is brought to the training images


def read_grey(path: str | Path) -> np.ndarray:
    """Decode an image file to float32 grey [H, W] in [0, 1] (steps 1-2 above)."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file; give an image file (embed and search also "
                         f"take folders).")
    if not path.is_file():
        raise ImageError(f"image {path} not found; check the path.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im) if "exif" in im.info else im
                return to_grey(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image {path} has more pixels than PIL's safety limit ({Image.MAX_IMAGE_PIXELS}); "
                         f"downscale it first.") from None
    except PermissionError:
        raise ImageError(f"cannot read image {path}: permission denied; fix its permissions.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot read image {path} ({type(e).__name__}): not an image or damaged; "
                         f"replace or remove it.") from None


def to_grey(im: Image.Image) -> np.ndarray:
    """A decoded image of any mode -> grey float32 [H, W] in [0, 1] (alpha over a contrasting background)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if mode == "F" and a.max() <= 1.0 else 255.0 if a.max() <= 255 else 65535.0
        return np.clip(a / top, 0.0, 1.0)
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    rgba = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    grey = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    if not has_alpha:
        return grey
    alpha = rgba[..., 3]
    opaque = alpha > 0.5
    ink = float(grey[opaque].mean()) if opaque.any() else 0.0
    background = 1.0 if ink < 0.5 else 0.0
    return grey * alpha + background * (1.0 - alpha)


def border_and_centre(grey: np.ndarray) -> tuple[float, float]:
    """Median of the outer frame (1/8 of each side, at least one pixel) and mean of the central half."""
    h, w = grey.shape
    bh, bw = max(1, h // 8), max(1, w // 8)
    frame = np.concatenate([grey[:bh].ravel(), grey[-bh:].ravel(), grey[:, :bw].ravel(), grey[:, -bw:].ravel()])
    centre = grey[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w]
    return float(np.median(frame)), float(centre.mean())


def polarity_of(images: np.ndarray) -> str:
    """The polarity of a training set (uint8 [N, H, W]): 'light_on_dark' (MNIST), 'dark_on_light', or
    'none' when border and centre differ by less than 0.1 of the range (photos: never invert those)."""
    sample = images[:: max(1, len(images) // 2000)].astype(np.float32) / 255.0
    border, centre = border_and_centre(sample.mean(0))
    if abs(centre - border) < 0.1:
        return "none"
    return "light_on_dark" if centre > border else "dark_on_light"


def should_invert(grey: np.ndarray, invert: str, polarity: str) -> bool:
    if invert != "auto":
        return invert == "true"
    if polarity == "none":
        return False
    border, centre = border_and_centre(grey)
    if abs(centre - border) < 1e-3:
        return False  # flat image: nothing to decide from
    return (centre > border) != (polarity == "light_on_dark")


def fit_square(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is `size` (aspect kept; Lanczos down, bicubic up), pad with the border's
    grey, -> uint8. Lanczos measured closest to the original when a 28 px digit comes back from 200 px
    JPEG (mean error 2.8 grey levels; bilinear 5.2, box 3.4)."""
    h, w = grey.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pad = border_and_centre(grey)[0]
    if (nh, nw) != (h, w):
        kernel = Image.LANCZOS if nh < h else Image.BICUBIC
        grey = np.asarray(Image.fromarray(grey, mode="F").resize((nw, nh), kernel), dtype=np.float32)
    out = np.full((size, size), pad, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = grey
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


MNIST_BOX = 20 / 28  # MNIST: the digit's longer side fills 20 of the 28 pixels, centred by its mass
INK_FLOOR = 0.25  # ink below this fraction of the strongest stroke is paper texture or noise
MIN_PART = 0.02  # a separate piece of ink smaller than this fraction of the largest is a speck, not a stroke


def paper_and_ink(grey: np.ndarray, invert: str) -> np.ndarray:
    """Light ink on black from a sheet: the paper's grey (the border's median) is taken away, the ink is
    whatever differs from it in the direction the paper implies (dark ink on light paper and the reverse;
    `invert` true/false says the ink is dark/light instead), scaled so its strongest strokes are 1."""
    paper = border_and_centre(grey)[0]
    dark_ink = paper >= 0.5 if invert == "auto" else invert == "true"
    ink = np.clip(paper - grey if dark_ink else grey - paper, 0.0, None)
    top = float(np.percentile(ink[ink > 0], 99)) if (ink > 0).any() else 0.0
    if top < 0.1:  # nothing stands out from the paper by a tenth of the range: an empty sheet
        return np.zeros_like(grey)
    ink = np.clip(ink / top, 0.0, 1.0)
    # strokes are lines a few pixels wide, paper grain and sensor noise are specks: judge each pixel by its
    # neighbourhood (a ~1 % window of the sheet), then keep the ink's connected parts of any real size
    k = max(3, round(max(ink.shape) / 100) | 1)
    mask = box_mean(ink, k) >= INK_FLOOR
    parts, n = label(mask)
    if n > 1:
        sizes = np.bincount(parts.ravel())[1:]
        mask = np.isin(parts, 1 + np.flatnonzero(sizes >= MIN_PART * sizes.max()))
    return np.where(mask & (ink >= INK_FLOOR), ink, 0.0).astype(np.float32)


WORK_BOX = 80  # stroke widths are measured and changed with the ink's box scaled to this many pixels
# MNIST's pen: the median stroke_width() of every tenth digit of MNIST's training file, each box scaled to
# WORK_BOX: 9.80 px (quartiles 8.16 .. 11.77); python -m bench.stroke_width measures it again
MNIST_STROKE = 9.8


def to_box(ink: np.ndarray, longer: int) -> np.ndarray:
    """The ink cropped to its box and scaled so the longer side is `longer` pixels (aspect kept)."""
    rows, cols = np.nonzero(ink)
    box = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = longer / max(box.shape)
    h, w = max(1, round(box.shape[0] * scale)), max(1, round(box.shape[1] * scale))
    kernel = Image.LANCZOS if scale < 1 else Image.BICUBIC
    return np.clip(np.asarray(Image.fromarray(box, mode="F").resize((w, h), kernel), dtype=np.float32), 0, 1)


def stroke_width(box: np.ndarray) -> float:
    """The pen's width in pixels: twice the mean distance to the paper along the strokes' ridges, less one
    (a stroke w pixels wide has its centre (w + 1) / 2 pixels from the paper). The ink is smoothed over 5 x 5
    first so that grainy strokes (chalk, a dry pen) count as the lines they draw; that widens a sharp line
    by 2 pixels, taken off again."""
    mask = box_mean(box, 5) >= 0.3
    if not mask.any():
        return 0.0
    d = distance_to_background(mask)
    ridge = mask & (d >= window_extreme(d, np.ones((3, 3), bool), largest=True))
    return float(2 * d[ridge].mean() - 3)


def normalise_stroke(ink: np.ndarray) -> np.ndarray:
    """The pen made as wide as MNIST's (MNIST_STROKE at WORK_BOX): the box grown or thinned by a disk.

    Thinning changes the width, never the shape: a bold font's hairlines (the top of a serif 0, the joins of
    its 9) are thinner than the disk and would vanish, cutting the glyph apart. So the disk shrinks until the
    ink keeps its number of pieces and a fifth of its mass; if even the smallest disk cuts it, the pen stays
    as it was. (Chosen on the wild set's validation fonts: docs/en/wild.md, round five.)"""
    box = np.pad(to_box(ink, WORK_BOX), WORK_BOX // 8)
    r = round((MNIST_STROKE - stroke_width(box)) / 2)
    if r == 0:
        return box
    if r > 0:
        return window_extreme(box, disk(r), largest=True)
    pieces = label(box >= 0.5)[1]
    for k in range(-r, 0, -1):
        thin = window_extreme(box, disk(k), largest=False)
        if thin.sum() >= 0.2 * box.sum() and label(thin >= 0.5)[1] <= pieces:
            return thin
    return box


def mnist_normalise(ink: np.ndarray, size: int, stroke: bool = False) -> np.ndarray:
    """LeCun et al.'s recipe for MNIST: crop to the ink, scale its box so the longer side is 20/28 of
    `size` (aspect kept, anti-aliased), and place it so its centre of mass is the field's centre.
    stroke=True first makes the pen as wide as MNIST's (`normalise_stroke`)."""
    rows, cols = np.nonzero(ink)
    out = np.zeros((size, size), np.float32)
    if len(rows) == 0:
        return out.astype(np.uint8)
    ink = normalise_stroke(ink) if stroke else ink
    rows, cols = np.nonzero(ink)
    box = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = MNIST_BOX * size / max(box.shape)
    h, w = max(1, round(box.shape[0] * scale)), max(1, round(box.shape[1] * scale))
    kernel = Image.LANCZOS if scale < 1 else Image.BICUBIC
    digit = np.clip(np.asarray(Image.fromarray(box, mode="F").resize((w, h), kernel), dtype=np.float32), 0, 1)
    mass = digit.sum()
    cy, cx = ((np.arange(h) @ digit.sum(1)) / mass, (np.arange(w) @ digit.sum(0)) / mass) if mass > 0 else \
        ((h - 1) / 2, (w - 1) / 2)
    top, left = int(round(size / 2 - cy)), int(round(size / 2 - cx))  # MNIST: the mass at pixel (14, 14)
    top, left = min(max(top, 0), size - h), min(max(left, 0), size - w)  # the box never leaves the field
    out[top:top + h, left:left + w] = digit
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def load_image(path: str | Path, size: int, polarity: str = "none", invert: str = "auto",
               normalise: str = "fit") -> np.ndarray:
    """A file -> uint8 [size, size], as the training images of a model with `polarity` look.

    normalise="fit" (photos, Fashion-MNIST, folders): the whole image fitted into the square, inverted
    to the model's polarity. normalise="mnist" (digits; the model card of MNIST models says so): the paper
    taken away and the ink size-normalised and centred by mass as MNIST was made (`mnist_normalise`),
    in the model's polarity (normalise="mnist_stroke": with the pen made MNIST's width first)."""
    return prepare_grey(read_grey(path), size, polarity, invert, normalise)


def prepare_grey(grey: np.ndarray, size: int, polarity: str = "none", invert: str = "auto",
                 normalise: str = "fit") -> np.ndarray:
    """`load_image` after decoding: grey float32 [H, W] in [0, 1] -> uint8 [size, size]."""
    if normalise not in NORMALISE_MODES:  # the one place the rule is read: an unknown name is never 'fit'
        raise ValueError(f"normalise={normalise!r}: use one of {', '.join(NORMALISE_MODES)}.")
    if normalise != "fit" and polarity != "none":
        digit = mnist_normalise(paper_and_ink(grey, invert), size, stroke=normalise == "mnist_stroke")
        return 255 - digit if polarity == "dark_on_light" else digit
    if should_invert(grey, invert, polarity):
        grey = 1.0 - grey
    return fit_square(grey, size)


def _walk(folder: Path, skipped: list[str]) -> list[Path]:
    """Image files below `folder`, sorted; hidden files and folders ('.ipynb_checkpoints', '.git') are not
    looked into, and folders that cannot be read are named in `skipped` instead of vanishing silently."""
    def unreadable(e: OSError) -> None:
        skipped.append(f"folder {e.filename} ({e.strerror or type(e).__name__})")

    out = []
    for top, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(top) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in SUFFIXES]
    return sorted(out)


def list_images(paths: list[str | Path], skipped: list[str] | None = None) -> list[tuple[Path, str]]:
    """Files and folders -> [(image file, label)], label = the name of the sub-folder the image is in
    below a given folder ("" for files given directly and images at a folder's top level). Sorted.
    `skipped` (when given) collects folders that could not be read."""
    skipped = [] if skipped is None else skipped
    out: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _walk(p, skipped)
            if not found:
                why = f" ({'; '.join(skipped)})" if skipped else ""
                raise ImageError(f"folder {p} holds no images ({', '.join(sorted(SUFFIXES))}){why}; check the path.")
            out += [(f, f.relative_to(p).parts[0] if len(f.relative_to(p).parts) > 1 else "") for f in found]
        elif p.is_file():
            out.append((p, ""))
        else:
            raise ImageError(f"{p} not found; give image files or folders of images.")
    return out

