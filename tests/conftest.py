"""Shared test setup: the repo on sys.path, and DATA_ROOT pointing at real MNIST when it exists."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if "DATA_ROOT" not in os.environ and (ROOT.parent / "shared" / "data" / "MNIST" / "raw").is_dir():
    os.environ["DATA_ROOT"] = str(ROOT.parent / "shared" / "data")


def mnist_root() -> Path | None:
    root = os.environ.get("DATA_ROOT")
    if root and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None


needs_mnist = pytest.mark.skipif(mnist_root() is None,
                                 reason="real MNIST not found: set DATA_ROOT to a folder with MNIST/raw/")
