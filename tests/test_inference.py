"""Using a trained model: calibrated thresholds, embed / verify / enrol / search, ONNX export with parity,
images from the wild, and every bad input of those commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, call_main, needs_mnist
from PIL import Image

from utils.inference.recognizer import Gallery, Recognizer, far_at, lookup, network_input, resize_bilinear
from utils.scoring.metrics import calibrate

VERIFY_KEYS = {"score", "angle_deg", "threshold", "far", "threshold_source", "match", "far_at_score"}


@pytest.mark.parametrize("size", [20, 28, 64, 128])
def test_numpy_preprocessing_equals_the_training_pipeline(size: int) -> None:
    from utils.data.loading import prepare_batch

    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    want = prepare_batch(x, size, 3, torch.device("cpu"), mean=0.13, std=0.31).numpy()
    card = {"img_size": size, "channels": 3, "mean": 0.13, "std": 0.31}
    # float32 rounding of the interpolation weights differs by ~1e-6 of a pixel; the parity test covers the rest
    np.testing.assert_allclose(network_input(x.numpy(), card), want, atol=1e-5, rtol=0)
    src = torch.rand(2, 1, 28, 21)  # not square: each axis on its own
    ref = F.interpolate(src, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(src[:, 0].numpy(), size), ref, atol=5e-6, rtol=0)


def test_thresholds_are_chosen_on_validation_and_refused_without_enough_impostors() -> None:
    g = torch.Generator().manual_seed(0)
    bins = 1 << 12

    def hists(n_gen: int, n_imp: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.bincount(((torch.randn(n_gen, generator=g) * 0.1 + 0.6).clamp(-1, 0.999) * bins / 2
                              + bins / 2).long(), minlength=bins)
        imp = torch.bincount(((torch.randn(n_imp, generator=g) * 0.15).clamp(-1, 0.999) * bins / 2
                              + bins / 2).long(), minlength=bins)
        return gen, imp

    vg, vi = hists(20_000, 200_000)
    tg, ti = hists(20_000, 200_000)
    t = calibrate(vg, vi, tg, ti)
    assert set(t) == {"1e-02", "1e-03", "eer"}  # 1e-4 of 200,000 is 20 impostors: fewer than 100
    for key in ("1e-02", "1e-03"):
        assert t[key]["far_val"] <= float(key) and t[key]["n_impostor_val"] == 200_000
        assert t[key]["far_test"] == pytest.approx(float(key), rel=0.5)  # test drift stays visible
    assert abs(t["eer"]["far_val"] - (1 - t["eer"]["tar_val"])) < 0.01
    with pytest.raises(ValueError, match="would rest on 20 .* at least 100"):
        lookup(t, 1e-4)
    assert lookup(t, 0) == {**t["eer"], "source": "calibrated (EER)"}
    curve = {"threshold": [-1.0, 0.2, 0.5], "far": [1.0, 0.1, 0.001]}
    assert far_at(curve, 0.3) == 0.1 and far_at(curve, 0.5) == 0.001 and far_at(curve, -2) == 1.0


def toy_recognizer() -> Recognizer:
    """A recognizer whose 'network' returns the mean brightness of the left and right half: known answers."""
    card = {"native_size": 8, "img_size": 8, "channels": 1, "mean": 0.0, "std": 1.0, "polarity": "none"}

    def embedder(x: np.ndarray) -> np.ndarray:
        return np.stack([x[:, 0, :, :4].mean((1, 2)) + 1e-3, x[:, 0, :, 4:].mean((1, 2)) + 1e-3], 1)

    thr = {"1e-03": {"threshold": 0.99, "far_val": 1e-3, "n_impostor_val": 10**6},
           "eer": {"threshold": 0.9, "far_val": 0.05, "n_impostor_val": 10**6}}
    return Recognizer(embedder, card, thr, {"threshold": [-1.0, 0.99], "far": [1.0, 1e-3]}, "toy")


def test_search_ranks_identities_by_their_nearest_image_and_rejects_unknowns() -> None:
    rec = toy_recognizer()
    left, right, both = (np.zeros((1, 8, 8), np.uint8) for _ in range(3))
    left[0, :, :4], right[0, :, 4:], both[0] = 255, 255, 255
    g = Gallery("toy", rec.embed(np.concatenate([left, right, right])), np.array(["L", "R", "R"]),
                np.array(["a", "b", "c"]))
    rec.load = lambda images, invert="auto": np.concatenate([left, both])  # two queries
    out = rec.search(["q_left", "q_both"], g, k=2)
    assert out[0]["identity"] == "L" and out[0]["top"][0] == ["L", 1.0] and len(out[0]["top"]) == 2
    assert out[1]["identity"] == "unknown" and out[1]["score"] == pytest.approx(np.sqrt(0.5), abs=1e-3)


@needs_mnist
def test_commands_end_to_end_on_checkpoint_and_onnx(compared: Path, tmp_path: Path) -> None:
    digits = write_digits(tmp_path / "digits")
    common = [f"--ckpt_dir={compared / 'ckp'}"]
    a, b = digits / "test" / "3" / "0.png", digits / "test" / "5" / "0.png"
    r = call_main("verify", str(a), str(b), "--json=true", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert set(v) == VERIFY_KEYS and v["match"] == (v["score"] >= v["threshold"]) and v["far"] == 1e-3
    metrics = json.loads((compared / "results" / "resnet18_arcface" / "metrics.json").read_text())
    assert v["threshold"] == metrics["thresholds"]["1e-03"]["threshold"]  # the calibrated one, stored
    r = call_main("embed", str(digits / "test"), f"--out={tmp_path / 'e.npz'}", *common, cwd=tmp_path)
    assert r.returncode == 0 and "images/s" in r.stdout, r.stderr
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert z["embeddings"].shape == (20, 512) and z["embeddings"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5)
        assert sorted(set(z["labels"].tolist())) == [str(c) for c in range(10)]
    gal = tmp_path / "g.npz"
    for half in ("train_a", "train_b"):  # enrol adds to an existing gallery
        r = call_main("enrol", str(digits / half), f"--gallery={gal}", *common, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert "now 40 images, 10 identities" in r.stdout
    r = call_main("search", str(digits / "test"), f"--gallery={gal}", "--k=3", "--json=true", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert len(found) == 20 and all(len(x["top"]) == 3 for x in found)
    r = call_main("export", f"--out={tmp_path / 'exp'}", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    parity = json.loads((tmp_path / "exp" / "parity.json").read_text())
    assert parity["pass"] and parity["checks"]["min_cosine"]["value"] >= 0.99999
    assert parity["images"]["queries"] + parity["images"]["gallery"] >= 1000
    card = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert card["input"]["polarity"] == "light_on_dark" and card["embedding_dim"] == 512
    assert card["input"]["normalise"] == "mnist" and "centre of mass" in card["normalise_rule"]  # written down
    # the ONNX path: same decisions, no torch imported
    code = ("import sys, json, main; sys.argv=['main.py', *sys.argv[1:]]; rc = main.main(); "
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["verify", str(a), str(b), "--json=true"], ["search", str(digits / "test"), f"--gallery={gal}",
                                                             "--k=3", "--json=true"]):
        o = subprocess.run([sys.executable, "-c", code, *args, f"--onnx={tmp_path / 'exp'}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        lines = o.stdout.strip().splitlines()
        assert json.loads(lines[-1]) == {"rc": 0, "torch": False}, o.stderr
        got = json.loads(lines[0])
        if args[0] == "verify":
            assert got["match"] == v["match"] and got["score"] == pytest.approx(v["score"], abs=1e-5)
        else:
            assert [x["identity"] for x in got] == [x["identity"] for x in found]


def write_digits(root: Path) -> Path:
    """Real MNIST digits as PNG: train_a/<label>/, train_b/<label>/ (2 each), test/<label>/ (2 each)."""
    from conftest import mnist_root

    from utils.data.loading import load_idx_dataset

    d = load_idx_dataset(mnist_root(), "mnist")
    for split, src, start in (("train_a", "train", 0), ("train_b", "train", 2), ("test", "test", 0)):
        x, y = d[f"{src}_x"].numpy(), d[f"{src}_y"].numpy()
        for c in range(10):
            for k, i in enumerate(np.nonzero(y == c)[0][start:start + 2]):
                (root / split / str(c)).mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[i]).save(root / split / str(c) / f"{k}.png")
    return root


@needs_mnist
def test_the_same_digit_from_the_wild_embeds_alike(compared: Path, tmp_path: Path) -> None:
    """28 px grey PNG, 200 px RGB JPEG and an inverted copy (dark ink on light paper) become the same network
    input, so they embed alike by construction, on any CPU: the inverted copy exactly, the enlarged JPEG
    close to it (the ink box is found again on a blurred copy: mean gap 2.1-9.2 grey levels, correlation
    0.947-0.992 on these 8, from PIL and numpy alone). A cosine threshold on a barely trained model would
    test the CPU's kernels instead."""
    from conftest import mnist_root

    from utils.data.loading import load_idx_dataset

    rec = Recognizer.from_checkpoint(compared / "ckp" / "resnet18_arcface" / "best.pt")
    x = load_idx_dataset(mnist_root(), "mnist")["test_x"][:8].numpy()
    for i, digit in enumerate(x):
        Image.fromarray(digit).save(tmp_path / f"{i}.png")
        Image.fromarray(digit).resize((200, 200), Image.BICUBIC).convert("RGB").save(tmp_path / f"{i}.jpg",
                                                                                     quality=90)
        Image.fromarray(255 - digit).save(tmp_path / f"{i}_inv.png")
        png, jpg, inv = rec.load([tmp_path / f"{i}.png", tmp_path / f"{i}.jpg", tmp_path / f"{i}_inv.png"])
        assert np.array_equal(png, inv), i  # polarity is undone exactly
        gap = np.abs(png.astype(float) - jpg.astype(float))
        assert gap.mean() < 12 and np.corrcoef(png.ravel(), jpg.ravel())[0, 1] > 0.93, (i, gap.mean())
        e = rec.embed(np.stack([png, inv]))
        assert np.array_equal(e[0], e[1])  # the same input, the same embedding
        # an MNIST digit is already size-normalised and centred: MNIST's own normalisation barely moves it
        assert np.abs(png.astype(float) - digit).mean() < 3


@needs_mnist
def test_bad_inputs_of_the_commands(compared: Path, tmp_path: Path) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}"]
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign.npz").write_bytes(b"PK\x03\x04 not really")
    np.savez(tmp_path / "other.npz", format=np.array("arcface-mnist-gallery-1"), model_id=np.array("0" * 64),
             embeddings=np.zeros((1, 512), np.float32), identities=np.array(["x"]), paths=np.array(["p"]))
    other = (tmp_path / "other.npz").read_bytes()
    cases = [
        (["verify", str(good), "missing.png"], "missing.png not found"),
        (["verify", str(good), str(tmp_path / "bad.png")], "cannot read image"),
        (["embed", str(tmp_path / "empty"), f"--out={tmp_path / 'x.npz'}"], "holds no images"),
        (["search", str(good), f"--gallery={tmp_path / 'foreign.npz'}"], "is not a gallery of this project"),
        (["search", str(good), f"--gallery={tmp_path / 'other.npz'}"], "was made by another model"),
        (["enrol", str(tmp_path / "empty"), f"--gallery={tmp_path / 'other.npz'}"], "was made by another model"),
        (["verify", str(good), str(good), f"--onnx={tmp_path}"], "is not an export of this project"),
        (["verify", str(good), str(good), "--far=1e-5"], "at least 100 are needed"),
        (["verify", str(good), str(good), "--far=2"], "out of range"),
        (["verify", str(good), str(good), "--lr=1"], "cannot use '--lr=1'"),
        (["verify", str(good), str(good), "--model_name=nothing"], "no trained model at"),
        # each command reads its own options and refuses the rest (issues 33 and 34)
        (["verify", str(good), str(good), "--normalise=mnsit"], "--normalise=mnsit: use auto, fit, mnist"),
        (["verify", str(good), str(good), "--data_root=x"], "cannot use '--data_root=x'"),
        (["export", f"--out={tmp_path / 'e'}", "--invert=true"], "cannot use '--invert=true'"),
        (["verify", str(good), str(good), f"--onnx={tmp_path}", "--model_name=m"], "drop --ckpt_dir, --model_name"),
    ]
    for args, match in cases:
        r = call_main(*args, *(common if "--onnx" not in str(args) or "--model_name=m" in args else []))
        assert r.returncode == 2 and match in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "other.npz").read_bytes() == other and not (tmp_path / "x.npz").exists()


@needs_mnist
def test_a_toy_backbone_checkpoint_verifies_and_exports(tmp_path: Path) -> None:
    """Every backbone get_model builds is rebuilt from its checkpoint (issue 34: the toy one was called damaged)."""
    r = call_main("softmax", "--backbone_type=toy", "--embedding_dim=32", "--lr=0.01", "--quick_debug=true",
                  "--use_tqdm=false", "--amp=off", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckp = tmp_path / "ckp" / "quick_debug"
    digits = write_digits(tmp_path / "digits")
    a, b = digits / "test" / "3" / "0.png", digits / "test" / "5" / "0.png"
    r = call_main("verify", str(a), str(b), "--json=true", "--model_name=resnet18_softmax", f"--ckpt_dir={ckp}",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)) == VERIFY_KEYS
    r = call_main("export", f"--out={tmp_path / 'exp'}", "--model_name=resnet18_softmax", f"--ckpt_dir={ckp}",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "exp" / "model.json").read_text())
    assert card["embedding_dim"] == 32 and json.loads((tmp_path / "exp" / "parity.json").read_text())["pass"]


@needs_mnist
def test_normalise_option_overrides_the_model_card(compared: Path, tmp_path: Path) -> None:
    """--normalise=auto is the card's rule (mnist for MNIST models); fit and mnist prepare a small, off-centre
    digit differently, so their embeddings differ; auto equals the explicit mnist."""
    from conftest import mnist_root

    from utils.data.loading import load_idx_dataset

    sheet = np.zeros((120, 120), np.uint8)
    sheet[5:33, 70:98] = load_idx_dataset(mnist_root(), "mnist")["test_x"][0].numpy()
    Image.fromarray(sheet).save(tmp_path / "d.png")
    emb = {}
    for mode in ("auto", "mnist", "fit"):
        r = call_main("embed", str(tmp_path / "d.png"), f"--out={tmp_path / mode}.npz", f"--normalise={mode}",
                      f"--ckpt_dir={compared / 'ckp'}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        with np.load(tmp_path / f"{mode}.npz", allow_pickle=False) as z:
            emb[mode] = z["embeddings"][0]
    assert np.array_equal(emb["auto"], emb["mnist"]) and not np.allclose(emb["fit"], emb["mnist"], atol=1e-3)
