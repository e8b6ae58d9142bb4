"""What a run may and may not do to the folders it writes: safe checkpoint loading, one run per model,
published results always one complete run, leftovers cleaned, permissions, a full disk."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SMALL, call_main, needs_mnist, quick

from utils.run import rundir

MODEL = "resnet18_arcface"


def snapshot(tmp: Path, model: str = MODEL) -> dict[str, bytes]:
    """Every published file of the model (results and checkpoints), by relative path."""
    out = {}
    for sub in ("results", "ckp"):
        for f in sorted((tmp / sub / model).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(tmp))] = f.read_bytes()
    return out


class Evil:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint could do with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@needs_mnist
def test_a_malicious_checkpoint_runs_no_code(compared_copy: Path) -> None:
    tmp = compared_copy
    marker = tmp / "pwned"
    best = tmp / "ckp" / MODEL / "best.pt"
    state = torch.load(best, weights_only=True)
    state["payload"] = Evil(marker)
    torch.save(state, tmp / "evil.pt")
    torch.save(state, best)
    for args in (["test"], ["arcface", "--resume=evil.pt"]):
        r = call_main(*args, *quick(tmp), *SMALL, cwd=tmp)
        assert r.returncode == 2 and "holds objects other than weights (refused unrun)" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()


def start(tmp: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "arcface", *quick(tmp), *SMALL, *args], cwd=tmp,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_mapped(pid: int, library: str, timeout: float = 60) -> None:
    """Return once the process has loaded `library` (an event of its start-up that prints nothing)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            break
        time.sleep(0.01)  # polling, not a guess at how long start-up takes
    raise AssertionError(f"process {pid} never loaded {library}")


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 180) -> str:
    """Read proc's stdout until a line contains `text`; returns what was read."""
    seen, deadline = "", time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}; got {seen!r}")


@needs_mnist
def test_a_second_run_on_the_same_model_is_refused_and_a_killed_run_changes_nothing(compared_copy: Path) -> None:
    tmp = compared_copy
    before = snapshot(tmp)
    first = start(tmp, "--lr=5e-3")
    wait_for(first, "embed gallery")  # holding the folders, trained, evaluating
    first.send_signal(signal.SIGSTOP)  # frozen there: the race is gone
    r = call_main("arcface", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 2 and f"in use by pid {first.pid}" in r.stderr and "Traceback" not in r.stderr
    first.kill()  # SIGKILL during evaluation
    first.wait()
    assert snapshot(tmp) == before  # the published run is whole and untouched
    assert (tmp / "ckp" / f".{MODEL}.staging").is_dir()  # the killed run's work, for --resume=auto
    r = call_main("test", *quick(tmp), *SMALL, cwd=tmp)  # the lock died with its process
    assert r.returncode == 0, r.stderr


@needs_mnist
def test_a_run_that_fails_leaves_the_published_run_as_it_was(compared_copy: Path) -> None:
    tmp = compared_copy
    before = snapshot(tmp)
    state = torch.load(tmp / "ckp" / MODEL / "last.pt", weights_only=True)
    state["model"]["fc.weight"].fill_(float("nan"))  # a run that went wrong in epoch 0, step 1
    state.update(epoch=0, partial={"step": 1, "loss_sum": 0.0, "lr": 1e-3}, history=[], best_epoch=-1,
                 best_val_loss=float("inf"))
    torch.save(state, tmp / "nan.pt")
    r = call_main("arcface", *quick(tmp), *SMALL, "--resume=nan.pt", cwd=tmp)
    assert r.returncode == 1 and "loss became nan at epoch 0, step 1; lower --lr" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(tmp) == before
    # a model that learns nothing (no NaN either) is a failure too. Provoked deterministically: every weight,
    # running statistic and optimiser moment zero, so every image has the same embedding on any CPU, and
    # no gradient reaches the convolutions (a diverging --lr=10 trained fine on an AVX-512 CPU)
    soft = "resnet18_softmax"
    before_soft = snapshot(tmp, soft)
    state = torch.load(tmp / "ckp" / soft / "last.pt", weights_only=True)
    zero = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in state["model"].items()}
    state.update(model=zero, ema={**state["ema"], "model": zero} if state.get("ema") else None,
                 epoch=0, partial={"step": 1, "loss_sum": 0.0, "lr": 1e-3}, history=[], best_epoch=-1,
                 best_val_loss=float("inf"))
    state["optimizer"]["state"] = {}
    torch.save(state, tmp / "zero.pt")
    r = call_main("softmax", *quick(tmp), *SMALL, "--resume=zero.pt", cwd=tmp)
    assert r.returncode == 1 and "chance level" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert snapshot(tmp, soft) == before_soft


@needs_mnist
def test_resume_with_other_settings_is_refused_but_display_fields_may_change(compared_copy: Path) -> None:
    tmp = compared_copy
    r = call_main("arcface", *quick(tmp), *SMALL, "--resume=auto", "--lr=5e-3", "--batch_size=8", cwd=tmp)
    assert r.returncode == 2, r.stderr
    assert "lr: checkpoint 0.001, now 0.005" in r.stderr and "batch_size: checkpoint 16, now 8" in r.stderr
    r = call_main("arcface", *quick(tmp), *SMALL, "--resume=auto", "--use_tqdm=true", "--eval_batch_size=128",
                 cwd=tmp)
    assert r.returncode == 0, r.stderr


@needs_mnist
def test_leftover_temporary_files_are_removed_live_ones_kept(compared_copy: Path) -> None:
    tmp = compared_copy
    dead = [tmp / "ckp" / MODEL / ".best.pt.99999999.x1.tmp", tmp / "results" / ".DET.png.99999999.x2.tmp"]
    live = tmp / "results" / f".DET.png.{os.getpid()}.x3.tmp"  # another process still writing it
    for f in (*dead, live):
        f.write_bytes(b"x" * 1000)
    r = call_main("test", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert not any(f.exists() for f in dead) and live.exists()


@needs_mnist
def test_files_follow_the_umask(compared: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    for f in [compared / "results" / MODEL / "metrics.json", compared / "ckp" / MODEL / "best.pt"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


@needs_mnist
def test_a_full_disk_is_one_line_and_keeps_old_files(compared_copy: Path) -> None:
    tmp = compared_copy
    before = snapshot(tmp)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "arcface", *quick(tmp), *SMALL], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert r.returncode == 2 and "cannot write" in r.stderr and "Files already saved are unchanged" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(tmp) == before
    assert not list((tmp / "ckp" / f".{MODEL}.staging").glob(".*.tmp"))  # the failed write cleaned up


@needs_mnist
def test_a_full_tmpfs_keeps_the_published_checkpoints(compared_copy: Path) -> None:
    """The real thing: checkpoints on a small tmpfs that holds the published run but not a second one."""
    import hashlib
    import shutil

    tmp = compared_copy
    disk = tmp / "small"
    disk.mkdir()
    need = sum(f.stat().st_size for f in (tmp / "ckp" / MODEL).iterdir())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need + (8 << 20)}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the file-size-limit test covers the code path")
    try:
        shutil.copytree(tmp / "ckp" / MODEL, disk / MODEL)
        digest = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (disk / MODEL).iterdir()}
        before = snapshot(tmp)
        r = call_main("arcface", *quick(tmp), *SMALL, f"--ckpt_dir={disk}", cwd=tmp)
        assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (disk / MODEL).iterdir()} == digest
        assert snapshot(tmp) == before
        assert not list((disk / f".{MODEL}.staging").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@needs_mnist
@pytest.mark.parametrize("damage", ["missing_keys", "params_none", "incomplete_weights"])
def test_hand_edited_checkpoints(compared_copy: Path, damage: str) -> None:
    tmp = compared_copy
    best = tmp / "ckp" / MODEL / "best.pt"
    state = torch.load(best, weights_only=True)
    if damage == "missing_keys":
        del state["optimizer"]
    elif damage == "params_none":
        state["params"] = None
    else:
        for part in (state, state.get("ema") or {}):
            if "model" in part:
                del part["model"]["fc.weight"]
    torch.save(state, best)
    r = call_main("test", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert {"missing_keys": "missing optimizer", "params_none": "damaged",
            "incomplete_weights": "do not fit this model"}[damage] in r.stderr


@needs_mnist
def test_test_needs_no_last_checkpoint(compared_copy: Path) -> None:
    tmp = compared_copy
    (tmp / "ckp" / MODEL / "last.pt").write_bytes(b"garbage")  # only resuming would need it
    r = call_main("test", *quick(tmp), *SMALL, cwd=tmp)
    assert r.returncode == 0, r.stderr


def test_chance_level_is_judged_on_validation_with_its_noise() -> None:
    from trainArcFace import TrainArcFaceParams
    from utils.core.errors import ChanceLevel
    from utils.data.loading import Splits
    from utils.run.experiment import check_learned

    y = torch.arange(1000) % 10
    splits = Splits(*(torch.zeros(1) for _ in range(3)), y, torch.zeros(1), torch.zeros(1))
    with pytest.raises(ChanceLevel, match="chance level .* Lower --lr"):
        check_learned(0.11, splits, TrainArcFaceParams())
    check_learned(0.20, splits, TrainArcFaceParams())  # 10 % + 3 standard errors is 12.8 %: learned
    tiny = Splits(*(torch.zeros(1) for _ in range(3)), y[:4], torch.zeros(1), torch.zeros(1))
    check_learned(0.25, tiny, TrainArcFaceParams())  # 4 images cannot tell: no verdict


def test_recover_finishes_a_swap_a_crash_cut_short(tmp_path: Path) -> None:
    results, ckpt = tmp_path / "results" / "m", tmp_path / "ckp" / "m"
    for folder, name in ((results, "metrics.json"), (ckpt, "best.pt")):
        rundir.staging(folder).mkdir(parents=True)
        (rundir.staging(folder) / name).write_text("new")
        folder.mkdir(parents=True)
        (folder / name).write_text("old")
    # crash after the checkpoints were swapped in, before the results were
    rundir._swap_in(rundir.staging(ckpt), ckpt)
    rundir.recover(results, ckpt)
    assert (results / "metrics.json").read_text() == (ckpt / "best.pt").read_text() == "new"
    # crash between the two renames of a swap: the old folder is put back
    os.rename(results, tmp_path / "results" / ".m.old")
    rundir.recover(results, ckpt)
    assert (results / "metrics.json").read_text() == "new"


@needs_mnist
@pytest.mark.parametrize("when", ["start-up", "evaluation", "twice in training"])
def test_ctrl_c_is_a_short_message_and_exit_130(tmp_path: Path, when: str) -> None:
    proc = start(tmp_path)
    if when == "start-up":
        wait_until_mapped(proc.pid, "libtorch_cpu")  # importing torch: start-up has a second or more to go
    elif when == "evaluation":
        wait_for(proc, "embed gallery")
    else:
        wait_for(proc, "training resnet18_arcface")  # data loaded, the model built: training starts
    proc.send_signal(signal.SIGINT)
    if when == "twice in training":
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert "interrupted" in err
    assert not (tmp_path / "results" / MODEL / "metrics.json").exists()


def test_an_interrupted_grid_says_how_to_go_on_and_goes_on(tmp_path: Path) -> None:
    from test_open_set import write_tree

    root = write_tree(tmp_path / "faces", identities=4, per=40)
    args = ["grid", "--losses=softmax", "--datasets=folder", "--seeds=1", *quick(tmp_path), f"--data_root={root}",
            "--n_class=4", "--known_classes=0-1", "--batch_size=2", "--use_tqdm=true"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.time() + 120
    while "epoch 0:" not in seen and time.time() < deadline:  # the bar of the grid run's epoch
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "with --reuse=true" in err, err[-1500:]
    r = call_main(*args[:-1], "--reuse=true", cwd=tmp_path)  # resumes the interrupted run, then summarises
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "results" / "grid" / "grid.json").is_file()


def test_grid_options_are_checked(tmp_path: Path) -> None:
    for args, match in ((["--datasets="], "--datasets: unknown empty list"),
                        (["--model_name=x"], "--model_name is set by the grid"),
                        (["--seeds=100000000"], "--seeds=100000000: expected the number of seeds, 1 .. 100")):
        r = call_main("grid", *args, cwd=tmp_path)
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_stale_metrics_are_never_reused(tmp_path: Path) -> None:
    """A grid run interrupted with new settings leaves the published run (old settings) consistent."""
    import dataclasses

    from trainArcFace import TrainArcFaceParams
    from utils.core.config import resolve
    from utils.run.reuse import finished

    p = resolve(TrainArcFaceParams(), {"results_dir": str(tmp_path), "model_name": "g"})
    pub = tmp_path / "g"
    pub.mkdir()
    (pub / "params.json").write_text(json.dumps(dataclasses.asdict(p)))
    (pub / "metrics.json").write_text(json.dumps({"acc_1nn": 0.5}))
    # the interrupted run with lr=5e-3 wrote only into staging
    stage = rundir.staging(pub)
    stage.mkdir()
    (stage / "params.json").write_text(json.dumps(dataclasses.asdict(dataclasses.replace(p, lr=5e-3))))
    assert finished(p) == {"acc_1nn": 0.5}
    assert finished(dataclasses.replace(p, lr=5e-3)) is None


def test_every_field_added_since_the_committed_runs_has_the_value_that_reproduces_them() -> None:
    """finished() compares a committed run's params.json with today's fields: a field it lacks needs its old
    behaviour in ADDED_LATER, or every committed run would be retrained (outlier_kinds once missed it)."""
    import dataclasses

    from utils.core.config import TrainParams
    from utils.core.provenance import ROOT
    from utils.run.reuse import ADDED_LATER, NOT_COMPARED

    for run in ("seeds/resnet18_arcface_s0", "ablation/resnet18_softmax_avx512"):
        old = json.loads((ROOT / "results" / run / "params.json").read_text())
        missing = [f.name for f in dataclasses.fields(TrainParams)
                   if f.name not in old and f.name not in ADDED_LATER and f.name not in NOT_COMPARED]
        assert not missing, f"{run}: add {missing} to ADDED_LATER in utils/run/reuse.py"
