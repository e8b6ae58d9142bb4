"""Folder data sets, the open-set protocol, Fashion-MNIST and the margin-loss grid command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import call_main, mnist_root, quick
from PIL import Image

from utils.core.config import ConfigError, parse_classes, parse_overrides
from utils.data.loading import DataError, load_folder_dataset, make_splits


def write_tree(root: Path, identities: int = 4, per: int = 6) -> Path:
    """Identities as sub-folders of PNGs of mixed sizes and modes; identity k is a bright bar at row 4k."""
    rng = np.random.default_rng(0)
    for k in range(identities):
        d = root / f"person_{k:02d}"
        d.mkdir(parents=True)
        for i in range(per):
            h, w = (40, 36) if i % 2 else (20, 24)
            img = rng.integers(0, 40, (h, w), dtype=np.uint8)
            img[(4 * k * h) // 28:(4 * k * h) // 28 + max(2, h // 7), :] = 255
            im = Image.fromarray(img)
            (im.convert("RGB") if i % 3 == 0 else im).save(d / f"img{i}.png")
    return root


def test_folder_dataset_layout_and_deterministic_split(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "faces")
    a = load_folder_dataset(root, img_size=28)
    b = load_folder_dataset(root, img_size=28)
    assert a["train_x"].shape[1:] == (28, 28) and a["train_x"].dtype == torch.uint8
    assert torch.equal(a["test_x"], b["test_x"]) and torch.equal(a["train_y"], b["train_y"])
    assert len(a["train_y"]) + len(a["test_y"]) == 24
    for k in range(4):  # round(0.2 * 6) = 1 test image per identity
        assert int((a["test_y"] == k).sum()) == 1
    assert not torch.equal(load_folder_dataset(root, 28, seed=1)["test_x"], a["test_x"])


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_folder_dataset(tmp_path / "none", 28)
    root = write_tree(tmp_path / "faces", identities=2)
    (root / "person_00" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        load_folder_dataset(root, 28)


def test_known_classes_keep_unknown_out_of_training() -> None:
    g = torch.Generator().manual_seed(0)
    data = {"train_x": torch.randint(0, 255, (300, 4, 4), generator=g, dtype=torch.uint8),
            "train_y": torch.arange(300) % 10, "test_x": torch.zeros(50, 4, 4, dtype=torch.uint8),
            "test_y": torch.arange(50) % 10}
    s = make_splits(data, 60, 0, known=[0, 1, 2, 3, 4, 5])
    assert set(s.train_y.tolist()) == set(range(6)) and set(s.val_y.tolist()) <= set(range(6))
    assert set(s.test_y.tolist()) == set(range(6))
    assert set(s.open_gallery_y.tolist()) == {6, 7, 8, 9} == set(s.open_query_y.tolist())
    # every training-split image is either closed-set train or open-set gallery, never both
    assert len(s.train_y) + len(s.open_gallery_y) + len(s.val_y) + int((s.val_y < 0).sum()) <= 300
    with pytest.raises(DataError, match="known_classes"):
        make_splits(data, 60, 0, known=list(range(10)))


def test_parse_classes() -> None:
    assert parse_classes("0-5", 10) == [0, 1, 2, 3, 4, 5]
    assert parse_classes("0-2, 7,9", 10) == [0, 1, 2, 7, 9]
    assert parse_classes("", 10) == []
    for bad in ("a-b", "0-²", "1.5", "-3"):
        with pytest.raises(ValueError, match="cannot read"):
            parse_classes(bad, 10)
    with pytest.raises(ValueError, match="class 99999999999 .* does not exist"):  # refused before expanding
        parse_classes("0-99999999999", 10)
    from trainArcFace import TrainArcFaceParams
    from utils.core.config import resolve

    with pytest.raises(ConfigError, match="known_classes"):
        resolve(TrainArcFaceParams(), parse_overrides(["--known_classes=5-1"]))


def test_folder_run_with_open_set_end_to_end(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "faces", identities=4, per=10)
    r = call_main("arcface", *quick(tmp_path), "--dataset_name=folder", f"--data_root={root}", "--n_class=4",
                 "--known_classes=0-1", "--batch_size=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "results" / "resnet18_arcface" / "metrics.json").read_text())
    assert m["known_classes"] == "0-1" and m["open_set"]["n_query"] == 4 and m["open_set"]["n_gallery"] > 0
    assert (tmp_path / "results" / "DET_open.png").is_file()
    assert (tmp_path / "results" / "resnet18_arcface" / "far_frr_open.csv").is_file()
    r = call_main("arcface", *quick(tmp_path), "--dataset_name=folder", f"--data_root={root}", cwd=tmp_path)
    assert r.returncode == 2 and "set --n_class=4" in r.stderr


def test_grid_command_on_a_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "faces", identities=4, per=10)
    r = call_main("grid", "--losses=softmax,cosface", "--datasets=folder", "--seeds=2", *quick(tmp_path),
                 f"--data_root={root}", "--n_class=4", "--known_classes=0-1", "--batch_size=8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "results" / "grid"
    bench = json.loads((out / "grid.json").read_text())
    assert [(x["loss"], x["seed"]) for x in bench["runs"]] == [("softmax", 0), ("softmax", 1), ("cosface", 0),
                                                               ("cosface", 1)]
    runs = {x["loss"]: x for x in bench["runs"] if x["seed"] == 0}
    params = json.loads((Path(runs["cosface"]["folder"]) / "params.json").read_text())
    assert (params["scale"], params["margin"]) == (64.0, 0.35)  # the paper's s and m
    md = (out / "grid.md").read_text()
    assert "| cosface |" in md and "±" in md
    assert (out / "DET_folder_closed.png").is_file() and (out / "DET_folder_open.png").is_file()
    # --reuse: the same grid is read back, not retrained; a run whose params differ is retrained
    stamp = {x["model_name"]: (Path(x["folder"]) / "metrics.json").stat().st_mtime_ns for x in bench["runs"]}
    r = call_main("grid", "--losses=softmax,cosface", "--datasets=folder", "--seeds=2", *quick(tmp_path),
                 f"--data_root={root}", "--n_class=4", "--known_classes=0-1", "--batch_size=8", "--reuse=true",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = json.loads((out / "grid.json").read_text())
    assert again["reused_runs"] == 4 and again["runs"] == bench["runs"]
    assert all((Path(x["folder"]) / "metrics.json").stat().st_mtime_ns == stamp[x["model_name"]]
               for x in again["runs"])
    r = call_main("grid", "--losses=softmax", "--datasets=folder", "--seeds=1", *quick(tmp_path),
                 f"--data_root={root}", "--n_class=4", "--known_classes=0-1", "--batch_size=4", "--reuse=true",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "grid.json").read_text())["reused_runs"] == 0
    r = call_main("grid", "--losses=triplet", cwd=tmp_path)
    assert r.returncode == 2 and "--losses: unknown ['triplet']" in r.stderr


@pytest.mark.skipif(mnist_root() is None or not (mnist_root() / "FashionMNIST" / "raw").is_dir(),
                    reason="Fashion-MNIST not found under DATA_ROOT")
def test_fashion_mnist_quick(tmp_path: Path) -> None:
    r = call_main("softmax", *quick(tmp_path), "--dataset_name=fashion_mnist", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "results" / "resnet18_softmax" / "params.json").read_text())
    assert (p["input_mean"], p["input_std"]) == (0.286, 0.353)
