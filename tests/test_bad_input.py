"""Bad input of every kind gets a one-line error that names the fix (in-process, fast)."""

from __future__ import annotations

import dataclasses
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainArcFace import TrainArcFaceParams
from utils.core.config import ConfigError, TrainParams, parse_overrides, resolve
from utils.core.errors import DataError, ImageError
from utils.data.images import read_grey

FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainParams) if f.type == "float"]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_field_must_be_finite(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{field}=.* must be a finite number"):
        resolve(TrainArcFaceParams(), parse_overrides([f"--{field}={value}"]))


@pytest.mark.parametrize("arg,match", [
    ("--lr=1e3", "lr=1000.0 must be in"), ("--scale=1e6", "scale=1000000.0 is out of range for arcface"),
    ("--warmup_epochs=11", "warmup_epochs=11.0 must be in"), ("--input_std=1e9", "input_std"),
    ("--model_name=..", "one plain folder name"), ("--model_name=.", "one plain folder name"),
    ("--model_name=a/b", "one plain folder name"), ("--model_name=.hidden", "one plain folder name"),
    ("--known_classes=0-99999999999", "class 99999999999 .* does not exist"),
    ("--known_classes=0-²", "cannot read '0-²'"),
    ("--img_size=100000", "img_size=100000 is out of range"),
    ("--embedding_dim=100000000", "embedding_dim=100000000 is out of range"),
    ("--embedding_dim=60000", "needs about .* GiB"), ("--img_size=2000", "needs about .* GiB"),
    ("--batch_size=65536", "needs about .* GiB"), ("--hist_bins=3000", "power of two"),
    ("--channels_last=maybe", "channels_last"), ("--seed=-1", "seed=-1 is out of range"),
    ("--aug_erode=1.5", "aug_erode=1.5 must be in"),
])
def test_values_the_machine_or_the_data_cannot_hold_are_refused_before_any_work(arg: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(TrainArcFaceParams(), parse_overrides([arg]))


@pytest.mark.parametrize("arg", ["--embedding_dim=60000", "--img_size=2000", "--batch_size=65536"])
def test_runs_that_would_not_fit_in_memory_are_refused(monkeypatch: pytest.MonkeyPatch, arg: str) -> None:
    import utils.core.config

    monkeypatch.setattr(utils.core.config, "available_memory", lambda device: 16 * 2**30)  # a 16 GiB machine
    with pytest.raises(ConfigError, match=r"needs about .* GiB but 16.0 GiB are available; lower --batch_size"):
        resolve(TrainArcFaceParams(), parse_overrides([arg]))


def test_defaults_and_the_original_preset_pass_the_memory_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.core.config
    from utils.core.config import memory_estimate

    monkeypatch.setattr(utils.core.config, "available_memory", lambda device: 4 * 2**30)  # a small laptop
    resolve(TrainArcFaceParams())
    p = resolve(TrainArcFaceParams(), {"preset": "original", "pretrained": False})
    # the original preset (128 px, 7x7 stem, batch 128) needs ~1-2 GiB: what a laptop has
    assert memory_estimate(p) < 3 * 2**30


@pytest.mark.parametrize("kind", ["truncated", "damaged", "plain_named_gz"])
def test_corrupt_gzip_idx_files(tmp_path: Path, kind: str) -> None:
    from utils.data.loading import read_idx

    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(1000)
    packed = gzip.compress(raw)
    data = {"truncated": packed[: len(packed) // 2], "damaged": packed[:20] + b"\xff" * 30 + packed[50:],
            "plain_named_gz": raw}[kind]
    f = tmp_path / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(data)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz cannot be read.*damaged"):
        read_idx(f)


def test_a_bad_label_names_the_file_and_the_label(tmp_path: Path) -> None:
    from utils.data.loading import MNIST_FILES, load_idx_dataset

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 200
    labels = np.arange(n, dtype=np.uint8) % 10
    labels[17] = 200
    for name in MNIST_FILES:
        if "images" in name:
            (raw / name).write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28) + bytes(n * 784))
        else:
            payload = labels if name.startswith("t10k") else np.arange(n, dtype=np.uint8) % 10
            (raw / name).write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", n) + payload.tobytes())
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: label 200 at index 17 .* labels are 0-9"):
        load_idx_dataset(tmp_path, "mnist")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "bomb.png"  # a valid header claiming 100,000 x 100,000 pixels: refused before decoding
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
                  + png_chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + png_chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="more pixels than PIL's safety limit"):
        read_grey(f)


@pytest.mark.parametrize("bad", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_unreadable_images(tmp_path: Path, bad: bytes) -> None:
    f = tmp_path / "x.png"
    f.write_bytes(bad)
    with pytest.raises(ImageError, match="cannot read image .*x.png"):
        read_grey(f)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    grey = read_grey(tmp_path / "g16.png")
    np.testing.assert_allclose(grey, ramp / 65535.0, atol=1e-6)
    assert 0.4 < float(grey.mean()) < 0.6  # not 0/255 (the old convert("L") clipped to pure 0 or 255)


def test_every_bit_depth_and_alpha_gives_the_same_grey(tmp_path: Path) -> None:
    digit = np.zeros((20, 20), dtype=np.uint8)
    digit[4:16, 8:12] = 255
    Image.fromarray(digit).save(tmp_path / "l.png")
    Image.fromarray(digit).convert("RGB").save(tmp_path / "rgb.bmp")
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(digit).convert("1").save(tmp_path / "one.png")
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # white ink on a transparent sheet
    rgba[..., :3] = 255
    rgba[..., 3] = digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(digit).save(tmp_path / "t.tiff")
    Image.fromarray(digit).save(tmp_path / "w.webp", lossless=True)
    want = digit / 255.0
    for name in ("l.png", "rgb.bmp", "i16.png", "one.png", "alpha.png", "t.tiff", "w.webp"):
        np.testing.assert_allclose(read_grey(tmp_path / name), want, atol=2e-3, err_msg=name)


def test_model_name_used_as_folder_stays_inside(tmp_path: Path) -> None:
    from utils.run.experiment import paths

    p = resolve(TrainArcFaceParams(), {"model_name": "run-1.b_2", "results_dir": str(tmp_path)})
    assert paths(p)[0].parent == tmp_path
