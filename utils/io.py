"""Atomic file writes and checkpoint loading with clear errors.

Every results file and checkpoint goes through `atomic_write`: written to a temporary file in the
same folder, flushed and fsync'ed, then renamed over the target. A crash at any moment leaves the
old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


REQUIRED_KEYS = ("model", "head", "optimizer", "scheduler", "epoch", "params")


def load_checkpoint(path: str | Path, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, refusing ones that do not fit `expect`.

    `expect` maps param names (model_name, n_class, embedding_dim, loss_fuc_type, ...) to the
    values of the current run; a mismatch is an error, since loading would fail obscurely or,
    worse, silently evaluate another model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first (python main.py arcface) "
                              f"or pass --resume=PATH to an existing file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle garbage, random bytes...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); it is truncated "
                              f"or not a checkpoint. Delete it and train again.") from None
    if not isinstance(state, dict) or not all(k in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing keys); "
                              f"delete it or point to another file.")
    for key, want in (expect or {}).items():
        have = state["params"].get(key)
        if have != want:
            raise CheckpointError(f"checkpoint {path} has {key}={have!r} but this run has {key}={want!r}; "
                                  f"use the matching --{key} or another checkpoint.")
    return state


def check_writable(folder: str | Path) -> None:
    """Fail before training if results cannot be saved (read-only disk, a file in the way...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise PermissionError(f"cannot write to '{folder}' ({e.strerror}); choose another folder "
                              f"with --results_dir=... / --ckpt_dir=... or fix its permissions.") from None
