"""The data-set registry: name -> how to load it, its classes, image size, channels, pixel statistics
and download. Torch-free (config validation and memory estimates read it before anything loads).

A loader is named by "module:function" and imported only when a run loads data; it is called with
the run's params and returns {"train_x", "train_y", "test_x", "test_y"} (uint8 [N, H, W] images,
int64 labels). `register(DatasetSpec(...))` adds one at run time (a notebook, a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    loader: str | Callable[[Any], dict]  # "module:function", or the function itself
    classes: int | None = None  # None: read from the data
    image_size: int | None = None  # native side in pixels; None: varies (folders)
    channels: int = 1
    stats: tuple[float, float] | None = None  # published pixel (mean, std) in [0, 1]; None: measured on train
    images: int = 0  # train + test images, for the memory estimate before loading (0: unknown)
    folder: str = ""  # IDX sets: data_root/<folder>/raw/
    download: str = ""  # IDX sets: the torchvision.datasets class that downloads them
    grid: bool = False  # one of the margin-loss grid's default data sets
    small: bool = False  # a few images per class: validation takes at most 1/5 of the training images
    normalise: str = "fit"  # images from the wild: "mnist" (ink size-normalised, centred by mass) or "fit"


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    _REGISTRY[spec.name] = spec


IDX = "utils.data.loading:load_idx"
register(DatasetSpec("mnist", IDX, classes=10, image_size=28, stats=(0.1307, 0.3081), images=70_000, folder="MNIST",
                     download="MNIST", grid=True, normalise="mnist"))
register(DatasetSpec("fashion_mnist", IDX, classes=10, image_size=28, stats=(0.2860, 0.3530), images=70_000,
                     folder="FashionMNIST", download="FashionMNIST", grid=True))
register(DatasetSpec("folder", "utils.data.loading:load_folder", small=True))  # data_root: identity sub-folders


def names(grid: bool = False) -> tuple[str, ...]:
    return tuple(n for n, s in _REGISTRY.items() if not grid or s.grid)


def get(name: str) -> DatasetSpec:
    return _REGISTRY[name]


def loader(name: str) -> Callable[[Any], dict]:
    fn = get(name).loader
    if callable(fn):
        return fn
    module, _, attr = fn.partition(":")
    return getattr(importlib.import_module(module), attr)
