"""torchrun + DDP on CPU with gloo: 2 processes, quick_debug sized."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import ROOT, needs_mnist, run_main

COMMON = ["arcface", "--quick_debug=true", "--use_tqdm=false", "--amp=off", "--log_steps=true"]


def torchrun(tmp: Path, *args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT), DIST_TIMEOUT_S="60", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "main.py"), *args]
    return subprocess.run(cmd, cwd=tmp, env=e, capture_output=True, text=True, timeout=timeout)


def step_losses(results: Path) -> list[float]:
    with open(results / "resnet18_arcface" / "train_steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@needs_mnist
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    ddp.mkdir()
    single.mkdir()
    r = torchrun(ddp, *COMMON, "--batch_size=32")  # 2 x 32 = the single run's 64
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = run_main(*COMMON, "--batch_size=64", cwd=single)
    assert r1.returncode == 0, r1.stderr
    # one set of results, written once (by rank 0)
    files = sorted(p.relative_to(ddp).as_posix() for p in (ddp / "results").rglob("*") if p.is_file())
    assert files == ["results/DET.png", *(f"results/resnet18_arcface/{f}" for f in (
        "far_frr.csv", "history.csv", "loss.png", "metrics.json", "params.json", "train_steps.csv"))]
    assert r.stdout.count("resnet18_arcface: 1-NN acc") == 1
    a, b = step_losses(ddp / "results"), step_losses(single / "results")
    assert len(a) == len(b) == 8
    # Same samples, augmentation, global BatchNorm statistics and averaged gradients: the first
    # losses agree to float rounding; Adam then amplifies rounding differences, so only the first 3.
    for x, y in zip(a[:3], b[:3], strict=True):
        assert x == pytest.approx(y, rel=1e-3)
    assert a[0] == pytest.approx(b[0], rel=1e-5)


@needs_mnist
def test_a_failing_rank_ends_the_whole_job(tmp_path: Path) -> None:
    r = torchrun(tmp_path, *COMMON, "--batch_size=32", env={"DDP_TEST_FAIL_RANK": "1"}, timeout=180)
    assert r.returncode != 0
    assert "failing on purpose" in r.stderr
    assert not (tmp_path / "results" / "resnet18_arcface" / "metrics.json").exists()


def test_global_batchnorm_equals_batchnorm_single_process() -> None:
    """Without a process group GlobalBatchNorm is plain BatchNorm (the gloo path runs in the test above)."""
    from utils.distributed import GlobalBatchNorm, convert_sync_batchnorm

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3))
    ref = nn.Sequential(*[m for m in net])
    x = torch.randn(5, 1, 8, 8)
    want = ref(x)
    conv = convert_sync_batchnorm(net, torch.device("cpu"))
    assert sum(isinstance(m, GlobalBatchNorm) for m in conv.modules()) == 2
    torch.testing.assert_close(conv(x), want)
