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

`RunFolders` is the one context a run needs: it checks the folders are writable, holds the locks, prepares
staging (fresh, resumed or relinked) and publishes; under torchrun only rank 0 touches the folders.
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

from utils.core.errors import CheckpointError, FolderBusy, check_ctrl_c
from utils.core.io import check_writable, remove_stale_temps, save_same


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
                save_same(f, stage / f.name)  # a hard link, or a copy where the file system has none
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


class RunFolders:
    """A model's results and checkpoint folders for the length of one run (`with RunFolders(...) as folders`):
    writable and locked on entry, staged by `prepare`, swapped in by `publish`; a run that leaves the
    context without publishing (any error or signal) leaves the published run as it was."""

    def __init__(self, results: Path, ckpt: Path, is_main: bool = True) -> None:
        self.results, self.ckpt, self.is_main = results, ckpt, is_main
        self.stage = (staging(results), staging(ckpt))
        self._held = contextlib.ExitStack()

    def __enter__(self) -> RunFolders:
        if self.is_main:
            check_writable(self.results.parent)
            check_writable(self.ckpt.parent)
            self._held.enter_context(hold(self.results, self.ckpt))
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.close()

    def prepare(self, train: bool, src: Path | None, resumed: dict | None) -> None:
        """Staging for a new run (empty), a resumed one (its checkpoints kept or brought from `src`) or a
        re-evaluation (hard links of the published files, some of which it rewrites)."""
        if not self.is_main:
            return
        if not train:
            fresh_staging(self.ckpt, link_from_final=True)
            fresh_staging(self.results, link_from_final=True)
            return
        stage_c = self.stage[1]
        in_stage = src is not None and src.parent.resolve() == stage_c.resolve()
        if resumed is not None and not in_stage and resumed["best_epoch"] >= 0 \
                and not (src.parent / "best.pt").is_file() \
                and (resumed["best_epoch"] != resumed["epoch"] - 1 or resumed["partial"] is not None):
            raise CheckpointError(f"resuming from {src} needs its run's best.pt beside it (best epoch "
                                  f"{resumed['best_epoch']} is not the checkpoint's own); copy it there.")
        fresh_staging(self.ckpt, keep=("best.pt", "last.pt") if in_stage else ())
        if resumed is not None and not in_stage:
            if (src.parent / "best.pt").is_file():
                shutil.copy2(src.parent / "best.pt", stage_c / "best.pt")  # the resumed run's best so far
            elif resumed["best_epoch"] >= 0:  # the checkpoint is its run's best epoch itself
                shutil.copy2(src, stage_c / "best.pt")
        fresh_staging(self.results)

    def publish(self) -> None:
        if self.is_main:
            publish(self.results, self.ckpt)
