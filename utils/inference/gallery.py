"""Galleries: enrolled embeddings with their identities, in one .npz file per gallery (no pickles).

A gallery is only ever read whole and validated: array sizes from the file's headers are checked
against the bytes the file holds before anything is allocated, then the rows must be finite, unit
length and of the model's dimension. `locked` serialises read-modify-write (enrol) across processes,
so two enrols into one gallery both keep their images.
"""

from __future__ import annotations

import contextlib
import fcntl
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.core.errors import CheckpointError
from utils.core.io import atomic_write

GALLERY_FORMAT = "arcface-mnist-gallery-1"
UNIT_TOLERANCE = 1e-3  # |norm - 1| allowed: float32 rows written by this project are within 1e-6
HEADER_SLACK = 4096  # bytes a .npy member may hold beyond its array (header, alignment)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the gallery `path` (a hidden .lock file beside it) until the block ends;
    a second enrol waits here instead of overwriting the first one's images."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def _claimed_sizes(path: Path) -> None:
    """Refuse a file whose .npy headers claim more data than it holds (before numpy allocates it)."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
            claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if claimed > info.file_size + HEADER_SLACK:
                raise ValueError(f"{info.filename} claims {'x'.join(map(str, shape))} values ({claimed:.3g} bytes) "
                                 f"but holds {info.file_size} bytes")


@dataclass
class Gallery:
    """Enrolled embeddings with their identities, made by one model (model_id = its checkpoint's SHA-256)."""

    model_id: str
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    identities: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "wb", fix=f"choose another --gallery than {path}") as f:
            np.savez(f, format=np.array(GALLERY_FORMAT), model_id=np.array(self.model_id),
                     embeddings=self.embeddings, identities=self.identities.astype(str),
                     paths=self.paths.astype(str))

    @classmethod
    def load(cls, path: str | Path, model_id: str, dim: int | None = None) -> Gallery:
        """Read and validate a gallery (nothing in the file can run); refuse one of another model."""
        path = Path(path)
        anew = f"make it anew with python main.py enrol DIR --gallery={path}"
        try:
            _claimed_sizes(path)
            with np.load(path, allow_pickle=False) as z:
                fmt, mid = str(z["format"]), str(z["model_id"])
                g = cls(mid, z["embeddings"], z["identities"], z["paths"])
        except FileNotFoundError:
            raise CheckpointError(f"gallery {path} not found; make one with python main.py enrol DIR "
                                  f"--gallery={path}.") from None
        except IsADirectoryError:
            raise CheckpointError(f"--gallery={path} is a folder; give the gallery's .npz file.") from None
        except PermissionError:
            raise CheckpointError(f"cannot read {path}: permission denied; fix its permissions.") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, MemoryError) as e:
            raise CheckpointError(f"{path} is not a gallery of this project or is damaged ({type(e).__name__}: "
                                  f"{str(e)[:120]}); {anew}.") from None
        if fmt != GALLERY_FORMAT or g.embeddings.ndim != 2 or not len(g.embeddings) == len(g.identities) == \
                len(g.paths):
            raise CheckpointError(f"{path} is not a gallery of this project (format {fmt!r}); {anew}.")
        if mid != model_id:
            raise CheckpointError(f"{path} was made by another model (checkpoint {mid[:12]}..., this one is "
                                  f"{model_id[:12]}...); enrol its images again with this model.")
        g.embeddings = g.embeddings.astype(np.float32)
        g.validate(path, dim)
        return g

    def validate(self, path: Path, dim: int | None) -> None:
        """Rows finite, of unit length and of the model's dimension; a damaged or hand-edited file is refused."""
        e = self.embeddings
        if dim is not None and len(e) and e.shape[1] != dim:
            raise CheckpointError(f"{path} holds {e.shape[1]}-d embeddings but this model makes {dim}-d ones; it was "
                                  f"not made by this model: enrol its images again into a new --gallery.")
        bad = ~np.isfinite(e).all(axis=1)
        norms = np.linalg.norm(np.where(bad[:, None], 0, e), axis=1)
        bad |= np.abs(norms - 1) > UNIT_TOLERANCE
        if bad.any():
            i = int(np.argmax(bad))
            raise CheckpointError(f"{path} is damaged: {int(bad.sum())} embedding row(s) are not finite unit vectors "
                                  f"(first: row {i}, identity {self.identities[i]!r}); enrol its images again "
                                  f"into a new --gallery.")
