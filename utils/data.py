"""Data: IDX files -> in-memory uint8 tensors -> train / val / test splits -> float batches.

The whole of MNIST is 47 MB as uint8, so it lives in memory as one tensor and every batch is
cut, augmented and normalised on tensors (no per-sample PIL work, no DataLoader workers).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FOLDERS = {"mnist": "MNIST"}
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics


class DataError(RuntimeError):
    """Missing or corrupt data; the message names the folder/file and the fix."""


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (uint8 payload) and check magic number and size against the header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number {raw[:4].hex()}); "
                        f"delete it so it is downloaded again.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(shape):
        raise DataError(f"{path} is truncated or corrupt: header says {shape} = {math.prod(shape)} bytes, "
                        f"file has {len(raw) - offset}; delete it so it is downloaded again.")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape).copy())


def _raw_folder(root: str | Path, dataset: str) -> Path:
    return Path(root) / FOLDERS[dataset] / "raw"


def _find(raw: Path, name: str) -> Path | None:
    for cand in (raw / name, raw / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def _download(root: str | Path, dataset: str) -> None:
    import torchvision  # only needed when files are missing

    cls = {"mnist": torchvision.datasets.MNIST}[dataset]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:
        raw = _raw_folder(root, dataset)
        raise DataError(f"{dataset} is not in '{raw}' and could not be downloaded ({type(e).__name__}). "
                        f"Put the four files {', '.join(MNIST_FILES)} there, or point --data_root "
                        f"(or DATA_ROOT) at a folder that has {FOLDERS[dataset]}/raw/.") from None


def load_idx_dataset(root: str | Path, dataset: str = "mnist") -> dict[str, torch.Tensor]:
    """Return {'train_x','train_y','test_x','test_y'} as uint8 / int64 tensors, downloading if absent."""
    raw = _raw_folder(root, dataset)
    if any(_find(raw, n) is None for n in MNIST_FILES):
        _download(root, dataset)
    paths = [_find(raw, n) for n in MNIST_FILES]
    if any(p is None for p in paths):
        raise DataError(f"'{raw}' lacks some of {', '.join(MNIST_FILES)}; add them or fix --data_root.")
    tx, ty, sx, sy = (read_idx(p) for p in paths)
    for x, y, name in ((tx, ty, "train"), (sx, sy, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{raw}: {name} images {tuple(x.shape)} and labels {tuple(y.shape)} do not match; "
                            f"replace the files.")
    return {"train_x": tx, "train_y": ty.long(), "test_x": sx, "test_y": sy.long()}


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def make_splits(data: dict[str, torch.Tensor], val_size: int, split_seed: int,
                quick_debug: bool = False) -> Splits:
    """Fixed-seed split of the training set into train/val; the test set is kept apart.

    quick_debug keeps 512 train, 256 val and 500 test images: the full code path, tiny.
    """
    n = len(data["train_x"])
    if val_size >= n:
        raise DataError(f"val_size={val_size} leaves no training images (dataset has {n}); lower it.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    test_x, test_y = data["test_x"], data["test_y"]
    if quick_debug:
        train_idx, val_idx = train_idx[:512], val_idx[:256]
        test_x, test_y = test_x[:500], test_y[:500]
    return Splits(data["train_x"][train_idx], data["train_y"][train_idx],
                  data["train_x"][val_idx], data["train_y"][val_idx], test_x, test_y)


def augmentation_table(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random numbers [n, 4] for the per-sample affine augmentation of one epoch, indexed by sample.

    Drawing them per sample (not per batch) makes an image's augmentation independent of how the
    epoch is cut into batches or shared among DDP ranks, and of where a resumed run restarts.
    """
    return torch.rand(n, 4, generator=gen)


def random_affine(x: torch.Tensor, r: torch.Tensor, max_deg: float = 10.0,
                  max_shift: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Rotation, scaling and translation of a float batch [B, C, H, W] in one grid_sample.

    r [B, 4] in [0, 1): rotation, scale, x shift, y shift of each sample.
    """
    ang = (r[:, 0] * 2 - 1) * math.radians(max_deg)
    s = scale[0] + r[:, 1] * (scale[1] - scale[0])
    tx, ty = (r[:, 2] * 2 - 1) * max_shift * 2, (r[:, 3] * 2 - 1) * max_shift * 2  # grid is [-1, 1]
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    # MNIST background is 0 before normalisation, so zero padding is exact.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def prepare_batch(x: torch.Tensor, img_size: int, channels: int, device: torch.device,
                  aug: torch.Tensor | None = None, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, H, W] -> normalised float [B, channels, img_size, img_size] on `device`.

    aug: per-sample augmentation numbers from `augmentation_table` (None = no augmentation).
    """
    x = x.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    if aug is not None:
        x = random_affine(x, aug)
    if x.shape[-1] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x - MEAN) / STD
    if channels > 1:
        x = x.expand(-1, channels, -1, -1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
