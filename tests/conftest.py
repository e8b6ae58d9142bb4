"""Shared test setup: the repo on sys.path, and DATA_ROOT pointing at real MNIST when it exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _temp_in_memory(shm: Path = Path("/dev/shm"), need: int = 8 << 30) -> None:
    """Temporary folders in RAM where there is room: the end-to-end runs write 187 MB checkpoints through
    fsync, 0.4 s each on tmpfs against 1.0 s on a 2-core VM's disk (about a fifth of a 16 px quick run).
    Docker's /dev/shm has 64 MB, too little: then the system's temporary folder, as before. A temproot the
    user set (PYTEST_DEBUG_TEMPROOT) or --basetemp wins."""
    try:
        room = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= need
    except OSError:
        room = False
    if room:
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(shm))


_temp_in_memory()

if "DATA_ROOT" not in os.environ and (ROOT.parent / "shared" / "data" / "MNIST" / "raw").is_dir():
    os.environ["DATA_ROOT"] = str(ROOT.parent / "shared" / "data")
elif os.environ.get("DATA_ROOT"):  # absolute: the end-to-end tests run main.py from temporary folders
    os.environ["DATA_ROOT"] = str(Path(os.environ["DATA_ROOT"]).resolve())


def mnist_root() -> Path | None:
    root = os.environ.get("DATA_ROOT")
    raw = Path(root or ".") / "MNIST" / "raw"
    # the loader reads plain or gzipped IDX files; so may the tests
    if root and any((raw / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
        return Path(root)
    return None


needs_mnist = pytest.mark.skipif(mnist_root() is None,
                                 reason="real MNIST not found: set DATA_ROOT to a folder with MNIST/raw/")


def run_main(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python main.py ARGS` in a subprocess, as a user would type it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def call_main(*args: str, cwd: Path | None = None, **_: object) -> subprocess.CompletedProcess:
    """`python main.py ARGS` in this process: what run_main returns, without the 5-10 s of start-up
    (interpreter, torch, torch._dynamo) that every subprocess pays. For everything but signals, resource
    limits, torchrun and checks of what a fresh interpreter imports."""
    import contextlib
    import io
    import signal

    import main

    handler, here = signal.getsignal(signal.SIGINT), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main.main(list(args))
    finally:
        os.chdir(here)
        signal.signal(signal.SIGINT, handler)
    return subprocess.CompletedProcess(["main.py", *args], rc, out.getvalue(), err.getvalue())


def call_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in this process (see call_main)."""
    import contextlib
    import io
    import runpy

    argv, here = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    try:
        os.chdir(cwd)
        sys.argv = [module, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__")
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return subprocess.CompletedProcess([module, *args], rc, out.getvalue(), err.getvalue())


def quick(tmp: Path) -> list[str]:
    """A quick_debug run at 16 px: every code path of a 28 px run in half its seconds (measured on a 2-core
    AVX2 CPU: 5.5 s against 10 s), which keeps the suite under CI's 15 minutes there. The golden check
    (tests/golden.py) runs at the same size."""
    return ["--quick_debug=true", "--use_tqdm=false", "--img_size=16", f"--results_dir={tmp / 'results'}",
            f"--ckpt_dir={tmp / 'ckp'}"]


# 32 steps of 16 images in the quick_debug epoch: room to interrupt mid-epoch (test_experiment).
# On the CPU even where a GPU exists: these runs are compared bit for bit (resume, re-evaluation),
# which CUDA's autotuned, non-deterministic kernels do not promise (seen on an H200).
SMALL = ["--batch_size=16", "--seed=3", "--device=cpu", "--log_steps=true"]


@pytest.fixture(scope="session")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `main.py compare` quick_debug run shared by the tests that only read its outputs."""
    if mnist_root() is None:
        pytest.skip("real MNIST not found: set DATA_ROOT to a folder with MNIST/raw/")
    tmp = tmp_path_factory.mktemp("compare")
    r = call_main("compare", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 0, r.stderr
    return tmp


@pytest.fixture
def compared_copy(compared: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run, for tests that write into it."""
    for sub in ("results", "ckp"):
        shutil.copytree(compared / sub, tmp_path / sub)
    return tmp_path


def tiny_run(size: int, n: int, n_train: int, **over: object) -> tuple:
    """(params, splits, model, head) of a seconds-long in-process run on random size x size images."""
    import torch

    from trainArcFace import TrainArcFaceParams
    from utils.core.config import resolve
    from utils.data.loading import Splits
    from utils.run.experiment import build_models

    params = resolve(TrainArcFaceParams(), {"img_size": size, "batch_size": 8, "total_epochs": 2, "use_tqdm": False,
                                            "augment": False, "input_std": 1.0, "device": "cpu", "ema_decay": 0.0,
                                            "warmup_epochs": 0.0, **over})
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 255, (n, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 10
    splits = Splits(x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:])
    torch.manual_seed(0)
    model, head = build_models(params, torch.device("cpu"))
    return params, splits, model, head
