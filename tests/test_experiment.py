"""A run end to end (utils/run/experiment.py): interrupt + resume equivalence, and its user errors."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMALL, call_main, needs_mnist, quick


def start(tmp: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "main.py"), "arcface", *quick(tmp), *SMALL, *args]
    cmd = [a if a != "--use_tqdm=false" else "--use_tqdm=true" for a in cmd]  # progress tells us where it is
    return subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt_mid_epoch(proc: subprocess.Popen, after_images: int = 96, timeout: float = 120) -> str:
    """Read the tqdm bar from stderr until `after_images` are done, then send SIGTERM."""
    seen, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ch = proc.stderr.read(1)
        if not ch:
            break
        seen += ch
        if ch == b"]" and b"epoch 0:" in seen[-200:]:
            done = seen[-200:].rsplit(b"epoch 0:", 1)[1].split(b"|")[-1].split(b"/")[0].strip()
            if done.replace(b".", b"").isdigit() and float(done) >= after_images:
                proc.send_signal(signal.SIGTERM)
                break
    _, rest = proc.communicate(timeout=timeout)
    return (seen + rest).decode(errors="replace")


@needs_mnist
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(compared: Path, tmp_path: Path) -> None:
    ref, cut = compared, tmp_path  # the reference: the shared compare run, same params and seed

    proc = start(cut)
    err = interrupt_mid_epoch(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = cut / "ckp" / ".resnet18_arcface.staging" / "last.pt"  # published only when the run finishes
    assert f"resumable checkpoint saved to {last.relative_to(cut)}" in err or str(last) in err
    assert not (cut / "results" / "resnet18_arcface").exists()
    state = torch.load(last, weights_only=True)
    assert state["partial"] is not None and 0 < state["partial"]["step"] < 32

    r = call_main("arcface", *quick(cut), *SMALL, "--resume=auto", cwd=cut)
    assert r.returncode == 0, r.stderr
    a = torch.load(ref / "ckp" / "resnet18_arcface" / "best.pt", weights_only=True)
    b = torch.load(cut / "ckp" / "resnet18_arcface" / "best.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["head"]["weight"], b["head"]["weight"], rtol=0, atol=0)
    ma = (ref / "results" / "resnet18_arcface" / "metrics.json").read_text()
    mb = (cut / "results" / "resnet18_arcface" / "metrics.json").read_text()
    import json

    ja, jb = json.loads(ma), json.loads(mb)
    for key in ("acc_1nn", "acc_head", "eer", "eer_threshold", "auc", "tar_at_far", "best_epoch", "thresholds"):
        assert ja[key] == jb[key], key
    # the files of the resumed run equal the uninterrupted run's (the lr column and every step's loss too)
    res_a, res_b = ref / "results" / "resnet18_arcface", cut / "results" / "resnet18_arcface"
    assert (res_a / "train_steps.csv").read_text() == (res_b / "train_steps.csv").read_text()

    def no_seconds(f: Path) -> list[list[str]]:
        return [row.split(",")[:-1] for row in f.read_text().splitlines()]

    assert no_seconds(res_a / "history.csv") == no_seconds(res_b / "history.csv")


@needs_mnist
def test_bad_checkpoints_for_test_and_resume(tmp_path: Path) -> None:
    ck = tmp_path / "ckp" / "resnet18_arcface"
    ck.mkdir(parents=True)
    (ck / "best.pt").write_bytes(b"not a checkpoint at all")
    r = call_main("test", *quick(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "unreadable" in r.stderr and "Traceback" not in r.stderr
    assert (ck / "best.pt").read_bytes() == b"not a checkpoint at all"  # untouched
    r = call_main("arcface", *quick(tmp_path), "--resume=missing.pt", cwd=tmp_path)
    assert r.returncode == 2 and "missing.pt not found" in r.stderr


@needs_mnist
def test_checkpoint_of_another_model_is_refused(compared_copy: Path) -> None:
    tmp_path = compared_copy
    metrics = (tmp_path / "results" / "resnet18_arcface" / "metrics.json").read_bytes()
    r = call_main("test", *quick(tmp_path), *SMALL, "--embedding_dim=128", cwd=tmp_path)
    assert r.returncode == 2 and "embedding_dim=512 but this run has embedding_dim=128" in r.stderr
    assert (tmp_path / "results" / "resnet18_arcface" / "metrics.json").read_bytes() == metrics


def test_unwritable_results_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = call_main("arcface", "--quick_debug=true", f"--results_dir={blocker}/sub", cwd=tmp_path)
    assert r.returncode == 2 and "cannot write to" in r.stderr and "--results_dir" in r.stderr


def test_pretrained_offline_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    from models import PretrainedUnavailable, get_model

    def no_network(*a, **k):
        raise OSError("urlopen error [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(torchvision.models.ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", no_network)
    with pytest.raises(PretrainedUnavailable, match="--pretrained=false"):
        get_model("resnet18", pretrained=True)
    assert get_model("resnet18", pretrained=False) is not None


@needs_mnist
def test_corrupt_idx_is_reported(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = Path(os.environ["DATA_ROOT"]) / "MNIST" / "raw"
    for f in src.iterdir():  # plain copies, also of gzipped originals
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        (raw / f.name.removesuffix(".gz")).write_bytes(data)
    lab = raw / "t10k-labels-idx1-ubyte"
    lab.write_bytes(lab.read_bytes()[:-5])
    r = call_main("arcface", *quick(tmp_path), f"--data_root={tmp_path / 'data'}", cwd=tmp_path)
    assert r.returncode == 2 and "truncated or corrupt" in r.stderr and "t10k-labels" in r.stderr
