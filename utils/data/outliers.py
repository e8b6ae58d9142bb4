"""Generated non-digits for training with outliers (`--outliers=uniform|energy`, issue 33).

A batch that also holds images of no class lets a loss term push them away from every class, so that
the reject option has something learnt to lean on (outlier exposure: Hendrycks et al., ICLR 2019;
energy: Liu et al., NeurIPS 2020). Every outlier is made here, at run time, from what the machine
already has, and goes through the same preparation as a user's image (`images.prepare_grey`, the data
set's normalisation), so that training sees what inference will see:

  letters, symbols  glyphs of the *validation* fonts (`wild.font_files("val")`) on varied paper;
                    the held-out fonts never appear in training
  scribble          random smooth curves (`wild.scribble`)
  noise             low-frequency noise: an 8x8 grid of grey values, smoothly enlarged
  pieces            a training digit cut by a random line through its middle, one side kept
  fashion           Fashion-MNIST's *training* file, where it is on disk (its test file stays held out)

The kinds chosen (`--outlier_kinds`, all by default) take equal shares (fashion's share goes to the others
when it is absent). The images are deterministic in (seed, count, size, kinds).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from utils.core.config import OUTLIER_KINDS
from utils.core.errors import DataError
from utils.core.progress import say
from utils.data import wild
from utils.data.images import prepare_grey, to_grey
from utils.data.loading import load_idx_dataset

KINDS = OUTLIER_KINDS


def low_frequency_noise(rng: np.random.Generator, side: int = wild.SHEET) -> np.ndarray:
    grid = Image.fromarray(np.uint8(rng.integers(0, 256, (8, 8))), mode="L")
    return np.asarray(grid.resize((side, side), Image.BICUBIC), dtype=np.float32) / 255.0


def digit_piece(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One side of a random line through the middle third of a digit (light ink on dark, [0, 1])."""
    h, w = digit.shape
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(h / 3, 2 * h / 3), rng.uniform(w / 3, 2 * w / 3)
    yy, xx = np.mgrid[:h, :w]
    keep = (np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) > 0
    return np.where(keep, digit, 0.0).astype(np.float32)


def fashion_train(data_root: str) -> np.ndarray | None:
    try:
        return load_idx_dataset(data_root, "fashion_mnist")["train_x"].numpy()
    except (DataError, OSError) as e:
        say(f"outliers: no Fashion-MNIST under {data_root} ({str(e)[:80]}); the other kinds share its part", False)
        return None


def make_outliers(n: int, size: int, polarity: str, normalise: str, digits: np.ndarray, seed: int,
                  fashion: np.ndarray | None = None, kinds: tuple[str, ...] = KINDS) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, size, size] images, their kind index into KINDS), prepared as a user's image would be;
    `kinds`: the kinds to make (in KINDS order, whatever order they are given in)."""
    rng = np.random.default_rng([seed, n, size, 33])
    kinds = [k for k in KINDS if k in kinds and (k != "fashion" or fashion is not None)]
    if not kinds:
        raise DataError("no kind of outlier left to make: only fashion was chosen and Fashion-MNIST is not on disk; "
                        "add other kinds to --outlier_kinds or put Fashion-MNIST under --data_root.")
    which = np.sort(rng.permutation(n) % len(kinds))
    fonts = wild.font_files("val")
    out = np.zeros((n, size, size), np.uint8)
    for i, k in enumerate(which):
        kind = kinds[k]
        if kind in ("letters", "symbols", "scribble"):
            grey = to_grey(wild.nondigit_sheet(kind, fonts[i % len(fonts)], int(rng.integers(1 << 30)), rng))
        elif kind == "noise":
            grey = low_frequency_noise(rng)
        elif kind == "pieces":
            grey = digit_piece(digits[rng.integers(len(digits))].astype(np.float32) / 255.0, rng)
        else:
            grey = fashion[rng.integers(len(fashion))].astype(np.float32) / 255.0
        out[i] = prepare_grey(grey, size, polarity, "auto", normalise)
    return out, np.array([KINDS.index(kinds[k]) for k in which], np.int64)


def with_outliers(x: torch.Tensor, y: torch.Tensor, fraction: float, polarity: str, normalise: str,
                  data_root: str, seed: int, kinds: tuple[str, ...] = KINDS) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set with round(fraction * len(x)) generated non-digits of `kinds` appended, labelled -1."""
    n = round(fraction * len(x))
    say(f"generating {n} non-digits for training with outliers ({', '.join(kinds)})", False)
    fashion = fashion_train(data_root) if "fashion" in kinds else None
    images, _ = make_outliers(n, x.shape[-1], polarity, normalise, x.numpy(), seed, fashion, kinds)
    return torch.cat([x, torch.from_numpy(images)]), torch.cat([y, torch.full((n,), -1, dtype=y.dtype)])
