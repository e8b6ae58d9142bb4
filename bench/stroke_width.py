"""MNIST's pen width, the constant `utils.data.images.MNIST_STROKE` that `--normalise=mnist_stroke` matches:

    python -m bench.stroke_width [DATA_ROOT]

The median `stroke_width()` of every tenth digit of MNIST's training file, each ink box scaled to
WORK_BOX pixels on its longer side. Here, not in images.py, so that the image module imports nothing
of the data loader (no import circle)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from utils.data.images import WORK_BOX, stroke_width, to_box
from utils.data.loading import read_idx


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else os.environ.get("DATA_ROOT", "./data")) / "MNIST" / "raw"
    x = read_idx(root / "train-images-idx3-ubyte").numpy()[::10].astype(np.float32) / 255.0
    widths = [stroke_width(to_box(d, WORK_BOX)) for d in x if d.any()]
    print(f"MNIST stroke width at a {WORK_BOX} px box: median {np.median(widths):.2f}, quartiles "
          f"{np.percentile(widths, 25):.2f} .. {np.percentile(widths, 75):.2f} ({len(widths)} training images)")


if __name__ == "__main__":
    main(sys.argv[1:])
