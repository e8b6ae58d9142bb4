"""Atomic file writes and checkpoint loading with clear errors (torch is imported only to (de)serialise
checkpoints, so the ONNX inference path can use the rest).

Every results file and checkpoint goes through `atomic_write`: written to a temporary file in the
same folder (named `.<name>.<pid>.<random>.tmp`), flushed and fsync'ed, then renamed over the
target. A crash at any moment leaves the old file or the new one, never a truncated one; a failed
write (disk full, quota) removes its temporary file and raises `WriteError`, the old file intact.
Temporary files of processes that died (SIGKILL, power loss) are removed by `remove_stale_temps`.
Files get the usual permissions (0666 minus the umask), not mkstemp's private 0600.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from utils.core.errors import CheckpointError, WriteError

if TYPE_CHECKING:  # matplotlib is imported only by the code that draws
    from matplotlib.figure import Figure


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
TEMP_NAME = re.compile(r"\..+\.(\d+)\.[^.]+\.tmp")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w",
                 fix: str = "choose another --results_dir / --ckpt_dir") -> Iterator[IO[Any]]:
    """Write `path` through a temporary file in its folder and one rename: readers never see half a file.
    `fix` ends the one-line error when writing fails: which option chooses another place."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {path} ({e.strerror or e}); free space or fix permissions there, or "
                             f"{fix}. Files already saved are unchanged.") from None
        raise


def remove_stale_temps(folder: str | Path, mine: bool = False) -> int:
    """Delete temporary files that `atomic_write` left behind when its process was killed.

    A file is stale when the process id in its name is no longer running; with `mine=True` (a folder
    this process holds the lock of) every temporary file of the pattern is. Returns how many went."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for f in folder.iterdir():
        m = TEMP_NAME.fullmatch(f.name)
        if m is None or not f.is_file():
            continue
        pid = int(m.group(1))
        if mine or (pid != os.getpid() and not pid_alive(pid)):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: the ONNX inference path writes files without torch

    # serialised in memory first: torch's zip writer turns a failed write (a full disk) into an opaque
    # RuntimeError, while a plain write raises the OSError that names the cause
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def save_same(src: str | Path, path: str | Path) -> None:
    """`path` becomes a second name of the file `src` (a hard link, through a temporary name and one rename):
    the same checkpoint is not serialised and written twice. Safe because every write here replaces a file
    by renaming a new one over it, so the two names part at the next write of either. Copied where the file
    system has no hard links."""
    src, path = Path(src), Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.link.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with open(src, "rb") as f, atomic_write(path, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 24)


REQUIRED_KEYS = ("model", "head", "optimizer", "scheduler", "epoch", "params")


def load_checkpoint(path: str | Path, expect: dict[str, Any] | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, refusing ones that do not fit `expect`.

    torch.load(weights_only=True) unpickles tensors and plain containers only: a file crafted to run
    code when loaded is refused before anything in it runs. `expect` maps param names (model_name,
    n_class, embedding_dim, loss_fuc_type, ...) to the values of the current run; a mismatch is an
    error, since loading would fail obscurely or, worse, silently evaluate another model.
    `mmap`: map the file instead of reading it whole; tensors are read when used (inference reads the
    evaluated weights, not the optimiser's state).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first (python main.py arcface) "
                              f"or pass --resume=PATH to an existing file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, pickle garbage, random bytes, objects that are not weights...
        kind = "holds objects other than weights (refused unrun)" if "weights_only" in str(e) else \
            "is truncated or not a checkpoint"
        raise CheckpointError(f"checkpoint {path} is unreadable: it {kind} ({type(e).__name__}). "
                              f"Delete {path.name} there and train again, or point to another file.") from None
    if not isinstance(state, dict) or not all(k in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)}); "
                              f"delete it or point to another file.")
    if not isinstance(state["params"], dict) or not all(isinstance(state[k], dict) for k in ("model", "head")):
        raise CheckpointError(f"{path} is damaged (its params or weights are not what this project writes); "
                              f"delete it or point to another file.")
    for key, want in (expect or {}).items():
        have = state["params"].get(key)
        if have != want:
            raise CheckpointError(f"checkpoint {path} has {key}={have!r} but this run has {key}={want!r}; "
                                  f"use the matching --{key} or another checkpoint.")
    return state


def evaluation_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint is evaluated (and used) with: its EMA when the run kept one, else the raw
    training weights; a dict with "model" and "head"."""
    return state["ema"] if state.get("ema") is not None else state


def check_writable(folder: str | Path) -> None:
    """Fail before training if results cannot be saved (read-only disk, a file in the way...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise PermissionError(f"cannot write to '{folder}' ({e.strerror}); choose another folder "
                              f"with --results_dir=... / --ckpt_dir=... or fix its permissions.") from None


def pack(a: np.ndarray) -> dict:
    """An array as JSON: float16 bytes in base64 (loading it runs no code, unlike a pickle)."""
    a16 = np.ascontiguousarray(a, dtype=np.float16)
    return {"shape": list(a16.shape), "float16_b64": base64.b64encode(a16.tobytes()).decode("ascii")}


def unpack(d: dict) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(d["float16_b64"], validate=True), dtype=np.float16)
    return a.reshape(d["shape"]).astype(np.float64)
