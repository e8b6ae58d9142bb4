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

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff", ".webp", ".gif"}
POLARITIES = ("light_on_dark", "dark_on_light", "none")
INVERT_MODES = ("auto", "true", "false")


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
                return _to_grey(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image {path} has more pixels than PIL's safety limit ({Image.MAX_IMAGE_PIXELS}); "
                         f"downscale it first.") from None
    except PermissionError:
        raise ImageError(f"cannot read image {path}: permission denied; fix its permissions.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"cannot read image {path} ({type(e).__name__}): not an image or damaged; "
                         f"replace or remove it.") from None


def _to_grey(im: Image.Image) -> np.ndarray:
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


def load_image(path: str | Path, size: int, polarity: str = "none", invert: str = "auto") -> np.ndarray:
    """A file -> uint8 [size, size], as the training images of a model with `polarity` look."""
    grey = read_grey(path)
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
