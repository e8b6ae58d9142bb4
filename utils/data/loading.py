"""Data: IDX files -> in-memory uint8 tensors -> train / val / test splits -> float batches.

The whole of MNIST is 47 MB as uint8, so it lives in memory as one tensor and every batch is
cut, augmented and normalised on tensors (no per-sample PIL work, no DataLoader workers).
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.core import datasets
from utils.core.config import TrainParams, parse_classes
from utils.core.device import epoch_rng
from utils.core.errors import DataError, ImageError
from utils.data.images import SUFFIXES, load_image, polarity_of

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MEAN, STD = datasets.get("mnist").stats  # prepare_batch's default normalisation


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (uint8 payload) and check magic number and size against the header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); it is damaged: delete it so it is "
                        f"downloaded again, or replace it.") from None
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
    return Path(root) / datasets.get(dataset).folder / "raw"


def _find(raw: Path, name: str) -> Path | None:
    for cand in (raw / name, raw / f"{name}.gz"):
        if cand.is_file():
            return cand
    return None


def _download(root: str | Path, dataset: str) -> None:
    import torchvision  # only needed when files are missing

    cls = getattr(torchvision.datasets, datasets.get(dataset).download)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:
        raw = _raw_folder(root, dataset)
        raise DataError(f"{dataset} is not in '{raw}' and could not be downloaded ({type(e).__name__}). "
                        f"Put the four files {', '.join(MNIST_FILES)} there, or point --data_root "
                        f"(or DATA_ROOT) at a folder that has {datasets.get(dataset).folder}/raw/.") from None


def load_idx_dataset(root: str | Path, dataset: str = "mnist") -> dict[str, torch.Tensor]:
    """Return {'train_x','train_y','test_x','test_y'} as uint8 / int64 tensors, downloading if absent."""
    raw = _raw_folder(root, dataset)
    if any(_find(raw, n) is None for n in MNIST_FILES):
        _download(root, dataset)
    paths = [_find(raw, n) for n in MNIST_FILES]
    if any(p is None for p in paths):
        raise DataError(f"'{raw}' lacks some of {', '.join(MNIST_FILES)}; add them or fix --data_root.")
    tx, ty, sx, sy = (read_idx(p) for p in paths)
    for x, y, name, lab in ((tx, ty, "train", paths[1]), (sx, sy, "t10k", paths[3])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{raw}: {name} images {tuple(x.shape)} and labels {tuple(y.shape)} do not match; "
                            f"replace the files.")
        n_classes = datasets.get(dataset).classes
        bad = torch.nonzero(y >= n_classes).flatten()
        if len(bad):
            raise DataError(f"{lab}: label {int(y[bad[0]])} at index {int(bad[0])} ({len(bad)} bad in all); "
                            f"{dataset} labels are 0-{n_classes - 1}: the file is damaged, replace it.")
    return {"train_x": tx, "train_y": ty.long(), "test_x": sx, "test_y": sy.long()}


def load_folder_dataset(root: str | Path, img_size: int, test_fraction: float = 0.2,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """An image folder with one sub-folder per identity (CASIA-WebFace style, or your own photos).

    Images of any size, format, bit depth, grey or colour are converted as `utils.data.images` describes
    (grey, aspect kept and padded to img_size x img_size, never inverted). Deterministic split: within
    each identity, files are sorted by name and a permutation seeded by (seed, identity index) sends
    round(test_fraction * n) of them to the test set (at least one, and never all, for identities with
    2+ images); the rest is the training set that `make_splits` then divides into train/validation.
    Identities are numbered in sorted order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder data set '{root}' does not exist; point --data_root at a folder with one "
                        f"sub-folder per identity.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"'{root}' has {len(classes)} identity sub-folder(s); a folder data set needs at least 2.")
    parts: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for ci, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"'{root / name}' has no images ({', '.join(sorted(SUFFIXES))}); remove it.")
        n_test = round(len(files) * test_fraction)
        n_test = min(max(n_test, 1), len(files) - 1) if len(files) > 1 else 0
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed * 7919 + ci)).tolist()
        for rank, k in enumerate(order):
            try:
                arr = load_image(files[k], img_size, invert="false")
            except ImageError as e:
                raise DataError(str(e)) from None
            split = "test" if rank < n_test else "train"
            parts[f"{split}_x"].append(torch.from_numpy(arr.copy()))
            parts[f"{split}_y"].append(ci)
    if not parts["test_x"]:
        raise DataError(f"'{root}' gives no test images: identities need at least 2 images each.")
    return {"train_x": torch.stack(parts["train_x"]), "train_y": torch.tensor(parts["train_y"]),
            "test_x": torch.stack(parts["test_x"]), "test_y": torch.tensor(parts["test_y"])}


def load_idx(params: TrainParams) -> dict[str, torch.Tensor]:
    """Loader of the IDX data sets (utils/core/datasets.py): data_root/<folder>/raw/, downloaded when absent."""
    return load_idx_dataset(params.data_root, params.dataset_name)


def load_folder(params: TrainParams) -> dict[str, torch.Tensor]:
    """Loader of a folder data set: data_root itself holds one sub-folder per identity."""
    return load_folder_dataset(params.data_root, params.img_size, seed=params.split_seed)


def load_dataset(params: TrainParams) -> dict[str, torch.Tensor]:
    """The data set params.dataset_name names, by its registered loader (utils/core/datasets.py)."""
    return datasets.loader(params.dataset_name)(params)


def dataset_stats(name: str, train_x: torch.Tensor) -> tuple[float, float]:
    """Pixel mean/std in [0, 1] units: the registered published values, else measured on the training images."""
    if datasets.get(name).stats is not None:
        return datasets.get(name).stats
    x = train_x.float().div_(255.0)
    return float(x.mean()), float(x.std().clamp_min(1e-3))


@dataclass
class Splits:
    """Closed-set train/val/test (labels 0..K-1 of the known classes) and the open-set part.

    open_gallery: training-split images of the unknown classes (enrolment); open_query: their test
    images. Both empty when every class is known (the original's closed set).
    """
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    open_gallery_x: torch.Tensor | None = None
    open_gallery_y: torch.Tensor | None = None
    open_query_x: torch.Tensor | None = None
    open_query_y: torch.Tensor | None = None


def make_splits(data: dict[str, torch.Tensor], val_size: int, split_seed: int,
                quick_debug: bool = False, known: list[int] | None = None) -> Splits:
    """Fixed-seed split of the training set into train/val; the test set is kept apart.

    known: the classes training may see (labels remapped to 0..K-1). Unknown classes never reach
    train or validation; their train-split images become the open-set gallery and their test
    images the open-set queries. quick_debug keeps 512 train, 256 val and 500 test images.
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
    tx, ty = data["train_x"][train_idx], data["train_y"][train_idx]
    vx, vy = data["train_x"][val_idx], data["train_y"][val_idx]
    if not known:
        return Splits(tx, ty, vx, vy, test_x, test_y)
    n_class = int(max(ty.max(), test_y.max())) + 1
    if max(known) >= n_class or len(known) < 2 or len(known) >= n_class:
        raise DataError(f"known_classes {known} must name 2 to {n_class - 1} of the classes 0..{n_class - 1}.")
    remap = torch.full((n_class,), -1, dtype=torch.long)
    remap[torch.tensor(known)] = torch.arange(len(known))
    kt, kv, ks = remap[ty] >= 0, remap[vy] >= 0, remap[test_y] >= 0
    return Splits(tx[kt], remap[ty[kt]], vx[kv], remap[vy[kv]], test_x[ks], remap[test_y[ks]],
                  tx[~kt], ty[~kt], test_x[~ks], test_y[~ks])


def augmentation_table(n: int, seed: int, epoch: int, erode: float = 0.0) -> torch.Tensor:
    """Random numbers [n, 4] for the per-sample affine augmentation of one epoch, indexed by sample;
    [n, 5] with erode > 0, the fifth column each sample's stroke thinning (`thin_strokes`): 0 for the
    1 - erode share of samples left alone, else uniform in (0, 1].

    Drawn per sample (not per batch), they make an image's augmentation independent of how the epoch
    is cut into batches or shared among DDP ranks, and of where a resumed run restarts. The thinning
    comes from a stream of its own, so turning it on leaves every sample's affine numbers as they were."""
    table = torch.from_numpy(epoch_rng(seed, epoch, "augment").random((n, 4), dtype="float32"))
    if erode <= 0:
        return table
    pick, amount = torch.from_numpy(epoch_rng(seed, epoch, "erode").random((2, n), dtype="float32"))
    return torch.cat([table, torch.where(pick < erode, 1.0 - amount, 0.0)[:, None]], 1)


def thin_strokes(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thinner, fainter pens for a float batch [B, 1, H, W] (ink high, background 0): each image moves
    `amount` [B] of the way to its grey erosion by the 3x3 cross (every pixel the minimum of itself
    and its four neighbours). At MNIST's scale the cross takes about one pixel off each side of a
    stroke, so amount 1 leaves hairlines and breaks the thinnest joins, as a thin pen on paper does."""
    pad = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    eroded = torch.minimum(torch.minimum(x, pad[..., :h, 1:w + 1]), pad[..., 2:, 1:w + 1])
    eroded = torch.minimum(torch.minimum(eroded, pad[..., 1:h + 1, :w]), pad[..., 1:h + 1, 2:])
    return torch.lerp(x, eroded, amount.to(x.device, x.dtype).view(-1, 1, 1, 1))


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
                  aug: torch.Tensor | None = None, channels_last: bool = False,
                  mean: float = MEAN, std: float = STD,
                  strength: tuple[float, float, float] = (10.0, 0.1, 0.1)) -> torch.Tensor:
    """uint8 [B, H, W] -> normalised float [B, channels, img_size, img_size] on `device`.

    aug: per-sample augmentation numbers from `augmentation_table` (None = no augmentation; a fifth
    column thins the strokes first); strength: (degrees, shift as a fraction of the side, scale change)
    of random_affine.
    """
    x = x.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    if aug is not None:
        if aug.shape[1] > 4:
            x = thin_strokes(x, aug[:, 4])
        deg, shift, zoom = strength
        x = random_affine(x, aug[:, :4], deg, shift, (1 - zoom, 1 + zoom))
    if x.shape[-1] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x - mean) / std
    if channels > 1:
        x = x.expand(-1, channels, -1, -1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def input_card(params: TrainParams, splits: Splits) -> dict:
    """How an image must be prepared for this model, stored with its checkpoint and its ONNX export:
    uint8 grey of native_size x native_size (utils/data/images.py turns any file into that, inverting
    it to the training data's polarity; for digit sets ("normalise": "mnist") it takes the paper away and
    size-normalises and centres the ink as MNIST was made), then resized to img_size (bilinear, align_corners=False,
    no antialias: torch's F.interpolate), scaled to [0, 1], normalised (x - mean) / std, repeated to
    `channels`, NCHW float32."""
    return {"native_size": int(splits.train_x.shape[-1]), "img_size": params.img_size,
            "channels": 3 if params.pretrained else 1, "mean": params.input_mean, "std": params.input_std,
            "polarity": polarity_of(splits.train_x.numpy()), "normalise": datasets.get(params.dataset_name).normalise}


def load_splits(params: TrainParams) -> tuple[Splits, TrainParams]:
    """Load the data set and split it; returns the splits and params with the pixel statistics set."""
    data = load_dataset(params)
    n_found = int(max(data["train_y"].max(), data["test_y"].max())) + 1
    if n_found != params.n_class:
        raise DataError(f"n_class={params.n_class} but {params.dataset_name} has {n_found} classes; "
                        f"set --n_class={n_found}.")
    if params.input_std <= 0:
        mean, std = dataset_stats(params.dataset_name, data["train_x"])
        params = replace(params, input_mean=mean, input_std=std)
    val_size = 256 if params.quick_debug else params.val_size
    if datasets.get(params.dataset_name).small:  # small folders: keep 4/5 of the images for training
        val_size = min(val_size, len(data["train_x"]) // 5)
    splits = make_splits(data, val_size, params.split_seed, params.quick_debug,
                         parse_classes(params.known_classes, params.n_class))
    return splits, params
