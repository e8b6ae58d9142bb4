"""Use a trained model: embed images, verify a pair, enrol and search a gallery.

    from utils.inference.recognizer import Recognizer
    rec = Recognizer.from_checkpoint("ckp/resnet18_arcface/best.pt")   # or Recognizer.from_onnx("export/")
    rec.verify("a.png", "b.jpg")                 # {"score", "angle_deg", "threshold", "far", "match", ...}
    gallery = rec.enrol("people/")               # one sub-folder per identity
    rec.search(["who.png"], gallery, k=5)        # "unknown" below the calibrated threshold

Thresholds are not constants: each model carries the ones chosen on its validation pairs for FAR
1e-2, 1e-3, 1e-4 and the EER point (utils/scoring/metrics.calibrate), with the validation FAR curve, so a
decision says how unusual its score would be for an impostor. Images from the wild go through
utils/data/images.py, then exactly the training pipeline's resize and normalisation. This module imports
no torch: a checkpoint needs torch (loaded when used), an ONNX export only onnxruntime.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from utils.core.errors import CheckpointError, ConfigError, ImageError
from utils.data.images import list_images, load_image
from utils.inference.gallery import Gallery
from utils.inference.reject import is_digit, load_reject

Embedder = Callable[[np.ndarray], np.ndarray]  # float32 [N, C, img_size, img_size] -> [N, D] unit rows
ImageInput = Sequence[str | Path] | np.ndarray


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] -> [N, size, size] as torch's F.interpolate(bilinear, align_corners=False, no antialias)."""
    for axis in (1, 2):
        n_in = x.shape[axis]
        if n_in == size:
            continue
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (src - i0).astype(np.float32)
        a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
        shape = [1, 1, 1]
        shape[axis] = size
        x = a + (b - a) * w.reshape(shape)
    return x


def network_input(images: np.ndarray, card: dict) -> np.ndarray:
    """uint8 [N, native, native] -> the float32 NCHW input of the network, as in training."""
    x = resize_bilinear(images.astype(np.float32) / 255.0, card["img_size"])
    x = (x - card["mean"]) / card["std"]
    return np.ascontiguousarray(np.repeat(x[:, None], card["channels"], axis=1), dtype=np.float32)


def lookup(thresholds: dict[str, dict], far: float, curve: dict[str, list[float]] | None = None) -> dict:
    """The threshold for FAR target `far` (far <= 0: the EER point), with "source": a calibrated point when
    `far` is one, else read off the stored validation FAR curve (the lowest threshold whose validation FAR
    is <= far). ConfigError when too few validation impostor pairs back `far`, or nothing can answer it."""
    if far <= 0:
        return {**thresholds["eer"], "source": "calibrated (EER)"}
    for key, entry in thresholds.items():
        if key != "eer" and math.isclose(float(key), far, rel_tol=1e-9):
            return {**entry, "source": "calibrated"}
    n_imp = thresholds["eer"]["n_impostor_val"]
    have = ", ".join(k for k in thresholds if k != "eer")
    if far * n_imp < 100 or curve is None:
        why = (f"FAR {far:g} would rest on {far * n_imp:.0f} of this model's {n_imp} validation impostor pairs; at "
               f"least 100 are needed" if far * n_imp < 100 else f"FAR {far:g} was not calibrated")
        raise ConfigError(f"{why}. Use a calibrated target: --far={have or '0'} (--far=0: the EER threshold).")
    thr, rate = np.asarray(curve["threshold"]), np.asarray(curve["far"])
    ok = np.flatnonzero(rate <= far)
    i = int(ok[np.argmin(thr[ok])])
    return {"threshold": float(thr[i]), "far_val": float(rate[i]), "n_impostor_val": n_imp,
            "source": "validation FAR curve"}


def far_at(curve: dict[str, list[float]], score: float) -> float:
    """Validation FAR at the largest stored threshold <= score: how often an impostor pair scores this
    high (exact at the stored points, an upper bound between them)."""
    k = int(np.searchsorted(np.asarray(curve["threshold"]), score, side="right")) - 1
    return 1.0 if k < 0 else float(curve["far"][k])


class Recognizer:
    """One trained model with its input card and calibrated thresholds, behind any embedder."""

    def __init__(self, embedder: Embedder, card: dict, thresholds: dict, curve: dict, model_id: str | Callable[[], str],
                 batch_size: int = 256, dim: int | None = None, reject: dict | None = None) -> None:
        self.embedder, self.card, self.thresholds, self.curve = embedder, card, thresholds, curve
        self._model_id, self.batch_size, self.dim = model_id, batch_size, dim
        self.reject = reject  # "is it a digit at all?" (utils/inference/reject.py); None: not calibrated
        if reject and "normalise" in reject:  # the calibration chose how new images are normalised
            self.card = {**card, "normalise": reject["normalise"]}

    @property
    def model_id(self) -> str:
        """The checkpoint's SHA-256, which galleries and reject.json record: computed when first asked for
        (a verify without reject.json never needs it)."""
        if callable(self._model_id):
            self._model_id = self._model_id()
        return self._model_id

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Recognizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no trained model at {path}; train one (python main.py arcface), pick another "
                                  f"with --model_name / --ckpt_dir, or use an export with --onnx=DIR.")
        from utils.inference.torch_backend import load_torch_embedder  # torch only on this path

        embedder, state = load_torch_embedder(path, device)
        model_id = functools.cache(lambda: sha256(path))  # hashed once, and only when asked for
        return cls(embedder, state["input"], state["thresholds"], state["far_curve"], model_id,
                   dim=int(state["params"]["embedding_dim"]), reject=load_reject(path.parent, model_id))

    @classmethod
    def from_onnx(cls, folder: str | Path) -> Recognizer:
        folder = Path(folder)
        try:
            card = json.loads((folder / "model.json").read_text())
            keys = ("input", "thresholds", "far_curve", "checkpoint_sha256")
            if not all(k in card for k in keys) or not (folder / "model.onnx").is_file():
                raise ValueError("incomplete")
        except (OSError, ValueError):
            raise CheckpointError(f"{folder} is not an export of this project (it needs model.onnx and model.json); "
                                  f"make one with python main.py export --out={folder}.") from None
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for damaged files
            raise CheckpointError(f"{folder / 'model.onnx'} cannot be loaded ({type(e).__name__}); export it "
                                  f"again.") from None
        name, dim = session.get_inputs()[0].name, session.get_outputs()[0].shape[1]
        return cls(lambda x: session.run(None, {name: x})[0], card["input"], card["thresholds"], card["far_curve"],
                   card["checkpoint_sha256"], dim=dim if isinstance(dim, int) else None, reject=card.get("reject"))

    # --------------------------------------------------------------------------------- images
    def load(self, images: ImageInput, invert: str = "auto", normalise: str | None = None) -> np.ndarray:
        """Files -> uint8 [N, native, native] (see utils/data/images.py); arrays of that shape pass through.
        `normalise` overrides the card's normalisation (to compare them, as `python main.py wild` does)."""
        if isinstance(images, np.ndarray):
            return images
        size, polarity = self.card["native_size"], self.card["polarity"]
        norm = normalise or self.card.get("normalise", "fit")
        return np.stack([load_image(p, size, polarity, invert, norm) for p in images]) if len(images) else \
            np.zeros((0, size, size), np.uint8)

    def embed(self, images: ImageInput, invert: str = "auto") -> np.ndarray:
        """L2-normalised float32 embeddings [N, D] of image files or uint8 arrays."""
        return self.embed_loaded(self.load(images, invert))

    def embed_loaded(self, x: np.ndarray) -> np.ndarray:
        out = [self.embedder(network_input(x[a:a + self.batch_size], self.card))
               for a in range(0, len(x), self.batch_size)]
        emb = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
        return (emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def digits(self, x: np.ndarray, emb: np.ndarray) -> list[dict]:
        """Per loaded image {"digit": bool, "digit_score": float} ({} when the model has no reject
        calibration): a sheet without any ink is never a digit."""
        if self.reject is None:
            return [{} for _ in range(len(x))]
        score, ok = is_digit(x, emb, self.reject)
        return [{"digit": bool(o), "digit_score": round(float(s), 6)} for s, o in zip(score, ok, strict=True)]

    # --------------------------------------------------------------------------------- decisions
    def decide(self, score: float, far: float) -> dict:
        entry = lookup(self.thresholds, far, self.curve)
        score = float(min(1.0, max(-1.0, score)))
        return {"score": score, "angle_deg": math.degrees(math.acos(score)), "threshold": entry["threshold"],
                "far": far if far > 0 else entry["far_val"], "threshold_source": entry["source"],
                "match": score >= entry["threshold"], "far_at_score": far_at(self.curve, score)}

    def verify(self, a: str | Path, b: str | Path, far: float = 1e-3, invert: str = "auto") -> dict:
        """Do two images show the same identity? score = cosine of their embeddings."""
        lookup(self.thresholds, far, self.curve)  # refuse an unusable target before any work
        x = self.load([a, b], invert)
        e = self.embed_loaded(x)
        out = self.decide(float(e[0] @ e[1]), far)
        both = self.digits(x, e)
        if both[0]:
            out |= {"digit": [d["digit"] for d in both], "digit_score": [d["digit_score"] for d in both]}
            out["match"] = out["match"] and all(out["digit"])  # a sheet without a digit matches nothing
        return out

    def enrol(self, folder: str | Path, gallery: Gallery | None = None, invert: str = "auto",
              skipped: list[str] | None = None) -> Gallery:
        """Add every image of `folder`'s sub-folders (one per identity) to `gallery` (or a new one). Images
        the gallery already holds (same file) are not added twice; `skipped` collects what was left out."""
        skipped = [] if skipped is None else skipped
        found = list_images([folder], skipped)
        loose = [str(p) for p, label in found if not label]
        if loose:
            raise ImageError(f"enrol needs one sub-folder per identity in {folder}; {loose[0]} is not in one.")
        g = gallery or Gallery(self.model_id)
        have = {os.path.realpath(p) for p in g.paths.tolist()}
        new = [(p, label) for p, label in found if os.path.realpath(p) not in have]
        if len(new) < len(found):
            skipped.append(f"{len(found) - len(new)} image(s) already in the gallery (same files)")
        emb = self.embed([p for p, _ in new], invert)
        if len(new):
            g.embeddings = np.concatenate([g.embeddings.reshape(-1, emb.shape[1]), emb]).astype(np.float32)
            g.identities = np.concatenate([g.identities.astype(str), [label for _, label in new]])
            g.paths = np.concatenate([g.paths.astype(str), [str(p) for p, _ in new]])
        return g

    def search(self, queries: Sequence[str | Path], gallery: Gallery, k: int = 5, far: float = 1e-3,
               invert: str = "auto") -> list[dict]:
        """Per query the k best identities (each by its nearest enrolled image); "unknown" when even the
        best scores below the threshold for `far` (open-set rejection)."""
        entry = lookup(self.thresholds, far, self.curve)
        threshold = entry["threshold"]
        if len(gallery.embeddings) == 0:
            raise CheckpointError("the gallery is empty; enrol identities first (python main.py enrol DIR).")
        names, index = np.unique(gallery.identities, return_inverse=True)
        order = np.argsort(index, kind="stable")
        starts = np.searchsorted(index[order], np.arange(len(names)))
        x = self.load(list(queries), invert)
        emb = self.embed_loaded(x)
        out = []
        for q, e, d in zip(queries, emb, self.digits(x, emb), strict=True):
            per_identity = np.maximum.reduceat((gallery.embeddings @ e)[order], starts)
            best = np.argsort(-per_identity, kind="stable")[:k]
            top = [[str(names[i]), round(float(per_identity[i]), 6)] for i in best]
            score = float(per_identity[best[0]])
            identity = top[0][0] if score >= threshold else "unknown"
            out.append({"query": str(q), "identity": identity if d.get("digit", True) else "not a digit",
                        "score": round(score, 6), "top": top, "threshold": threshold,
                        "threshold_source": entry["source"], **d})
        return out
