"""The folders of one model's run: a lock while it runs, staging until it is done, then one swap.

    results/<model>/     ckp/<model>/        the last complete run: params, history, metrics,
                                             curves, figures and the checkpoints that made them
    results/.<model>.staging/  ckp/.<model>.staging/   the run in progress (watch its history.csv)
    results/.<model>.lock      ckp/.<model>.lock       held (flock) by the running process

A run writes only into staging. When it has finished (metrics.json is the last file it writes)
`publish` swaps staging in: ckp first, then results, each by two renames. A run that stops early
(an error, Ctrl+C, SIGKILL, a full disk, a model at chance level) leaves the published run as it was.
`recover`, called by every run before it starts, completes a swap that a crash cut short, so the
published folders always hold one consistent run. The lock is an flock: the kernel releases it when
its process ends in any way, so a crash never leaves a stale lock. Model names never start with '.',
so these hidden names cannot collide with another model's folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from utils.core.errors import FolderBusy, check_ctrl_c
from utils.core.io import remove_stale_temps


def staging(final: Path) -> Path:
    return final.parent / f".{final.name}.staging"


def _old(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def is_complete(results_staging: Path) -> bool:
    return (results_staging / "metrics.json").is_file()


def _swap_in(stage: Path, final: Path) -> None:
    old = _old(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def publish(results: Path, ckpt: Path) -> None:
    """Make the finished staged run the published one (checkpoints first, then results)."""
    check_ctrl_c()  # a Ctrl+C whose exception was lost: publish nothing
    if staging(ckpt).exists():
        _swap_in(staging(ckpt), ckpt)
    _swap_in(staging(results), results)


def recover(results: Path, ckpt: Path) -> None:
    """Finish what a crash interrupted: a complete staged run is published; a half-done swap undone."""
    if is_complete(staging(results)):
        publish(results, ckpt)
    for final in (results, ckpt):
        old = _old(final)
        if old.exists() and not final.exists():
            os.rename(old, final)
        elif old.exists():
            shutil.rmtree(old, ignore_errors=True)


def fresh_staging(final: Path, keep: tuple[str, ...] = (), link_from_final: bool = False) -> Path:
    """An empty staging folder (files named in `keep` survive); with `link_from_final`, hard links of the
    published files to start from (a re-evaluation changes some of them; links cost no space)."""
    stage = staging(final)
    stage.mkdir(parents=True, exist_ok=True)
    for f in stage.iterdir():
        if f.name not in keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    if link_from_final and final.is_dir():
        for f in final.iterdir():
            if f.is_file() and not (stage / f.name).exists():
                try:
                    os.link(f, stage / f.name)
                except OSError:  # file systems without hard links
                    shutil.copy2(f, stage / f.name)
    return stage


def _lock(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 -- held open for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise FolderBusy(f"{path.parent / path.name[1:-5]} is in use by {holder}; wait for that run to end "
                         f"(or stop it), or give this run another --model_name / --results_dir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} ({' '.join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))})")
    f.flush()
    return f


@contextlib.contextmanager
def hold(results: Path, ckpt: Path) -> Iterator[None]:
    """Hold both folders of a model for the run (refusing a second run on them), after recovery."""
    held = [_lock(results.parent / f".{results.name}.lock")]
    try:
        held.append(_lock(ckpt.parent / f".{ckpt.name}.lock"))
        recover(results, ckpt)
        for folder in (results, ckpt, staging(results), staging(ckpt)):
            remove_stale_temps(folder, mine=True)
        remove_stale_temps(results.parent)
        yield
    finally:
        for folder in (staging(results), staging(ckpt)):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run refused before it wrote anything leaves no trace
        for f in held:
            f.close()  # releases the flock
