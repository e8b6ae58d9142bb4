"""IDX parsing on synthetic files, splits, batch preparation and data errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from utils.data import loading as D
from utils.data.loading import augmentation_table


def write_idx(path: Path, arr: torch.Tensor, magic_type: int = 0x08, truncate: int = 0) -> None:
    header = bytes([0, 0, magic_type, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    payload = arr.to(torch.uint8).numpy().tobytes()
    path.write_bytes(header + payload[: len(payload) - truncate])


def fake_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = False) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = torch.randint(0, 256, (n, 28, 28), generator=g)
        y = torch.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    if gz:
        for f in raw.iterdir():
            (raw / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
            f.unlink()


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    x = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    write_idx(tmp_path / "a", x)
    assert torch.equal(D.read_idx(tmp_path / "a"), x)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", torch.zeros(2, 2), magic_type=0x0D)
    with pytest.raises(D.DataError, match="bad magic number"):
        D.read_idx(tmp_path / "a")


def test_read_idx_truncated(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", torch.zeros(4, 28, 28), truncate=10)
    with pytest.raises(D.DataError, match="truncated or corrupt"):
        D.read_idx(tmp_path / "a")


@pytest.mark.parametrize("gz", [False, True])
def test_load_dataset_and_split(tmp_path: Path, gz: bool) -> None:
    fake_mnist(tmp_path, gz=gz)
    data = D.load_idx_dataset(tmp_path, "mnist")
    assert data["train_x"].shape == (60, 28, 28) and data["test_y"].dtype == torch.int64
    s1 = D.make_splits(data, 10, split_seed=3)
    s2 = D.make_splits(data, 10, split_seed=3)
    assert torch.equal(s1.val_x, s2.val_x) and len(s1.train_x) == 50 and len(s1.val_x) == 10
    # train and validation are disjoint: every image index used exactly once
    flat = torch.cat([s1.train_x, s1.val_x]).view(60, -1)
    assert len({tuple(r.tolist()) for r in flat}) == len({tuple(r.tolist()) for r in data["train_x"].view(60, -1)})
    assert not torch.equal(D.make_splits(data, 10, split_seed=4).val_x, s1.val_x)


def test_missing_data_offline_names_folder_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(D.DataError) as e:
        D.load_idx_dataset(tmp_path / "nowhere", "mnist")
    msg = str(e.value)
    assert "nowhere/MNIST/raw" in msg and "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg


def test_prepare_batch_shapes_and_normalisation() -> None:
    x = torch.zeros(4, 28, 28, dtype=torch.uint8)
    out = D.prepare_batch(x, 32, 3, torch.device("cpu"))
    assert out.shape == (4, 3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, -D.MEAN / D.STD))


def test_augmentation_is_reproducible_and_changes_images() -> None:
    x = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    table = augmentation_table(8, seed=1, epoch=0)
    a = D.prepare_batch(x, 28, 1, torch.device("cpu"), aug=table)
    c = D.prepare_batch(x, 28, 1, torch.device("cpu"))
    assert not torch.allclose(a, c)
    # a sample's augmentation does not depend on the batch it lands in
    b = D.prepare_batch(x[[5, 2]], 28, 1, torch.device("cpu"), aug=table[[5, 2]])
    torch.testing.assert_close(b, a[[5, 2]])
    # the identity transform (no rotation, scale 1, no shift) leaves the image unchanged
    ident = torch.tensor([[0.5, 0.5, 0.5, 0.5]]).repeat(8, 1)
    torch.testing.assert_close(D.prepare_batch(x, 28, 1, torch.device("cpu"), aug=ident), c, atol=1e-4, rtol=0)


def test_stroke_thinning_is_a_cross_erosion_drawn_apart_from_the_affine_numbers() -> None:
    """aug_erode adds a column from its own stream: the affine numbers stay as they were, the chosen
    share of samples is thinned, and amount 1 is scipy's grey erosion by the 3x3 cross (float64)."""
    import numpy as np
    from scipy import ndimage

    plain = augmentation_table(4000, seed=3, epoch=2)
    assert torch.equal(augmentation_table(4000, seed=3, epoch=2, erode=0.0), plain)
    table = augmentation_table(4000, seed=3, epoch=2, erode=0.3)
    assert table.shape == (4000, 5) and torch.equal(table[:, :4], plain)
    amount = table[:, 4]
    assert 0.27 < (amount > 0).float().mean() < 0.33 and float(amount.max()) <= 1.0
    assert not torch.equal(augmentation_table(4000, seed=3, epoch=3, erode=0.3)[:, 4], amount)

    x = torch.rand(3, 1, 12, 9, dtype=torch.float64) * (torch.rand(3, 1, 12, 9) > 0.3)
    cross = ndimage.generate_binary_structure(2, 1)
    want = np.stack([ndimage.grey_erosion(im[0].numpy(), footprint=cross, mode="constant", cval=0.0) for im in x])
    got = D.thin_strokes(x, torch.tensor([1.0, 0.0, 0.25]))
    np.testing.assert_array_equal(got[0, 0].numpy(), want[0])
    assert torch.equal(got[1], x[1])
    torch.testing.assert_close(got[2, 0], 0.75 * x[2, 0] + 0.25 * torch.from_numpy(want[2]), rtol=0, atol=1e-12)

    # through prepare_batch: a zero fifth column is the four-column augmentation bit for bit; thinning
    # removes ink (a thinner pen), never adds it
    digits = torch.zeros(2, 28, 28, dtype=torch.uint8)
    digits[:, 6:22, 12:16] = 255
    four = augmentation_table(2, seed=0, epoch=0)
    cpu = torch.device("cpu")
    untouched = D.prepare_batch(digits, 28, 1, cpu, aug=torch.cat([four, torch.zeros(2, 1)], 1))
    assert torch.equal(untouched, D.prepare_batch(digits, 28, 1, cpu, aug=four))
    thinned = D.prepare_batch(digits, 28, 1, cpu, aug=torch.cat([four, torch.ones(2, 1)], 1))
    assert float(thinned.sum()) < float(untouched.sum())
