"""The inference commands (utils/cli/commands.py) and their galleries: safe under concurrent enrols, every device,
path and dependency error as one line, no silent choices, messages with the right fix; and training runs
that say what they do."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, call_main, needs_mnist, quick
from PIL import Image

from utils.inference.recognizer import Recognizer, lookup, sha256

MODEL = "resnet18_arcface"


def one_line(r: subprocess.CompletedProcess, match: str, rc: int = 2) -> None:
    assert r.returncode == rc and match in r.stderr, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def digit_folders(root: Path, identities: str, per: int = 3) -> Path:
    """identities x per small PNGs in root/<identity>/ (distinct images, so distinct embeddings)."""
    rng = np.random.default_rng(len(identities))
    for ident in identities:
        (root / ident).mkdir(parents=True, exist_ok=True)
        for k in range(per):
            img = np.zeros((28, 28), np.uint8)
            img[6:22, 10 + k:14 + k] = rng.integers(150, 256)
            Image.fromarray(img).save(root / ident / f"{k}.png")
    return root


def gallery_file(path: Path, model_id: str, emb: np.ndarray) -> bytes:
    n = len(emb)
    np.savez(path, format=np.array("arcface-mnist-gallery-1"), model_id=np.array(model_id), embeddings=emb,
             identities=np.array([str(i % 10) for i in range(n)]), paths=np.array([f"p{i}" for i in range(n)]))
    return path.read_bytes()


@needs_mnist
def test_two_enrols_into_one_gallery_keep_every_image(compared: Path, tmp_path: Path) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}", f"--gallery={tmp_path / 'g.npz'}"]
    a, b = digit_folders(tmp_path / "a", "0123", 25), digit_folders(tmp_path / "b", "5678", 25)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "enrol", str(d), *common], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in (a, b)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    with np.load(tmp_path / "g.npz") as z:
        assert len(z["embeddings"]) == 200 and sorted(set(z["identities"].tolist())) == list("01235678")


@needs_mnist
def test_gallery_contents_are_validated(compared: Path, tmp_path: Path) -> None:
    ckpt = compared / "ckp" / MODEL / "best.pt"
    mid, common = sha256(ckpt), [f"--ckpt_dir={compared / 'ckp'}"]
    query = digit_folders(tmp_path / "q", "1", 1) / "1" / "0.png"
    unit = np.eye(4, 512, dtype=np.float32)
    nan, inf, long = unit.copy(), unit.copy(), unit.copy()
    nan[2, 0], inf[1, 5] = np.nan, np.inf
    long[3] *= 50
    cases = {"nan": (nan, "not finite unit vectors (first: row 2"), "inf": (inf, "not finite unit vectors"),
             "long": (long, "not finite unit vectors (first: row 3"), "dim": (np.eye(4, 128, dtype=np.float32),
                                                                          "holds 128-d embeddings but this model")}
    for name, (emb, match) in cases.items():
        before = gallery_file(tmp_path / f"{name}.npz", mid, emb)
        one_line(call_main("search", str(query), f"--gallery={tmp_path / name}.npz", *common), match)
        one_line(call_main("enrol", str(tmp_path / "q"), f"--gallery={tmp_path / name}.npz", *common), match)
        assert (tmp_path / f"{name}.npz").read_bytes() == before  # enrol appended nothing
    # a zip whose header claims a 1e12 x 512 array: refused before numpy allocates it
    huge = tmp_path / "huge.npz"
    gallery_file(huge, mid, unit)
    with zipfile.ZipFile(huge) as z:
        members = {n: z.read(n) for n in z.namelist()}
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 512)})
    members["embeddings.npy"] = claim.getvalue() + b"\0" * 64
    with zipfile.ZipFile(huge, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    one_line(call_main("search", str(query), f"--gallery={huge}", *common), "claims 1000000000000x512 values")


@needs_mnist
def test_device_path_and_output_errors_are_one_line(compared: Path, tmp_path: Path) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}"]
    img = digit_folders(tmp_path / "q", "1", 1) / "1" / "0.png"
    (tmp_path / "afile").write_text("x")
    one_line(call_main("verify", str(img), str(img), "--device=bogus", *common), "--device=bogus: use cpu")
    import torch

    if not torch.cuda.is_available():
        one_line(call_main("verify", str(img), str(img), "--device=cuda", *common), "CUDA is not available")
    one_line(call_main("export", f"--out={tmp_path / 'afile'}", *common), "is a file; export writes a folder")
    one_line(call_main("export", f"--out={tmp_path / 'afile' / 'sub'}", *common), "afile is a file, not a folder")
    one_line(call_main("export", "--out=", *common), "--out= is empty")
    one_line(call_main("embed", str(img), "--out=", *common), "--out= is empty")
    one_line(call_main("embed", str(img), "--out=/proc/no/e.npz", *common), "choose another --out")
    one_line(call_main("verify", str(img), str(img), "--model_name=nothing", *common),
             "no trained model at")
    r = call_main("verify", str(img), str(img), "--model_name=nothing", *common)
    assert "--resume" not in r.stderr
    one_line(call_main("verify", str(img), str(tmp_path / "q"), *common), "is a folder, not an image file")


@pytest.mark.parametrize("args", [["verify", "a.png", "b.png"], ["export", "--out=x"],
                                  ["arcface", "--quick_debug=true"], ["search", "a.png", "--gallery=g.npz"]])
def test_without_torch_a_command_says_it_needs_torch(tmp_path: Path, args: list[str]) -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; import main; "
            "sys.exit(main.main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    one_line(r, "needs PyTorch: pip install torch torchvision")
    assert "--onnx=DIR" in r.stderr


def test_a_far_between_calibrated_points_is_read_off_the_validation_curve() -> None:
    t = {"1e-02": {"threshold": 0.3, "far_val": 0.0098}, "1e-03": {"threshold": 0.6, "far_val": 0.00099},
         "eer": {"threshold": 0.2, "far_val": 0.02, "n_impostor_val": 1_000_000}}
    curve = {"threshold": [0.1, 0.3, 0.45, 0.5, 0.6], "far": [0.1, 0.0098, 0.002, 0.0013, 0.00099]}
    assert lookup(t, 1e-3, curve)["source"] == "calibrated" and lookup(t, 1e-3, curve)["threshold"] == 0.6
    got = lookup(t, 0.0014, curve)  # the lowest threshold whose validation FAR is <= 0.0014
    assert got["source"] == "validation FAR curve" and got["threshold"] == 0.5 and got["far_val"] == 0.0013
    assert lookup(t, 0.0015, curve)["threshold"] == 0.5 and lookup(t, 0, curve)["source"] == "calibrated (EER)"


@needs_mnist
def test_verify_reports_which_threshold_it_used(compared: Path, tmp_path: Path) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}", "--json=true"]
    img = digit_folders(tmp_path / "q", "1", 1) / "1" / "0.png"
    calibrated = json.loads(call_main("verify", str(img), str(img), "--far=1e-3", *common).stdout)
    between = json.loads(call_main("verify", str(img), str(img), "--far=0.0014", *common).stdout)
    assert calibrated["threshold_source"] == "calibrated"
    assert between["threshold_source"] == "validation FAR curve" and between["far"] == 0.0014
    assert between["threshold"] <= calibrated["threshold"]  # a laxer FAR never needs a stricter threshold
    one_line(call_main("search", str(img), f"--gallery={tmp_path / 'none.npz'}", *common), "not found; make one")


@needs_mnist
def test_enrol_reports_skips_and_duplicates_and_ignores_hidden_folders(compared: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}", f"--gallery={tmp_path / 'g.npz'}"]
    people = digit_folders(tmp_path / "people", "0123", 2)
    digit_folders(people / ".ipynb_checkpoints", "9", 1)  # hidden: not an identity, not looked into
    digit_folders(people / "3" / ".thumbs", "x", 1)
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:  # a folder we may not read (root reads everything otherwise)
        if str(path).endswith(os.sep + "2"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = call_main("enrol", str(people), *common)
    assert r.returncode == 0, r.stderr
    assert "enrolled 6 images of 3 identities" in r.stdout and "skipped: folder" in r.stderr
    assert "Permission denied" in r.stderr
    with np.load(tmp_path / "g.npz") as z:
        assert sorted(set(z["identities"].tolist())) == ["0", "1", "3"]
    r = call_main("enrol", str(people), *common)  # the same folder again: nothing doubled
    assert r.returncode == 0 and "enrolled 0 images" in r.stdout and "6 image(s) already in the gallery" in r.stderr


@needs_mnist
def test_messages_name_the_right_fix(compared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = [f"--ckpt_dir={compared / 'ckp'}"]
    img = digit_folders(tmp_path / "q", "1", 1) / "1" / "0.png"

    def denied(*a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr("utils.data.images.Image.open", denied)
        one_line(call_main("verify", str(img), str(img), *common), "permission denied; fix its permissions")

    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Recognizer, "enrol", ctrl_c)
    r = call_main("enrol", str(tmp_path / "q"), f"--gallery={tmp_path / 'g.npz'}", *common)
    assert r.returncode == 130 and "gallery" in r.stderr and "--resume" not in r.stderr, r.stderr
    assert not (tmp_path / "g.npz").exists()


def test_library_warnings_become_one_line(capsys: pytest.CaptureFixture) -> None:
    from utils.cli.commands import one_line_warnings

    saved = warnings.showwarning
    try:
        one_line_warnings()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(2):
                warnings.warn("Palette images with Transparency expressed in bytes\nshould be converted", UserWarning,
                              stacklevel=1)
    finally:
        warnings.showwarning = saved
    assert capsys.readouterr().err == "warning: Palette images with Transparency expressed in bytes\n"


@needs_mnist
def test_training_says_what_it_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = call_main("arcface", *quick(tmp_path), "--data_root=/nonexistent", cwd=tmp_path)
    assert r.returncode == 2 and "MNIST/raw" in r.stderr
    left = [p.name for sub in ("results", "ckp") for p in (tmp_path / sub).iterdir() if "staging" in p.name]
    assert left == []  # a refused run leaves no empty staging folder
    monkeypatch.setattr("utils.training.engine.PROGRESS_SECONDS", 0.0)  # a progress line after every step
    r = call_main("arcface", *quick(tmp_path), "--resume=auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "--resume=auto: no checkpoint of resnet18_arcface to resume from; starting afresh" in out
    assert "training resnet18_arcface (arcface): mnist, 512 train / 256 validation / 500 test images" in out
    assert "epoch 1: step 1/8, loss" in out and "img/s, epoch ETA" in out
    r = call_main("arcface", *quick(tmp_path), "--resume=auto", cwd=tmp_path)  # the published run's last.pt
    assert r.returncode == 0 and f"resuming from {tmp_path / 'ckp' / MODEL / 'last.pt'} (epoch 2, step 0)" in r.stdout
