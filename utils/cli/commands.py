"""The commands that use a trained model: embed, verify, enrol, search, export.

    python main.py embed PATH... --out=FILE.npz
    python main.py verify A B [--far=1e-3] [--json=true]
    python main.py enrol DIR --gallery=FILE.npz
    python main.py search PATH... --gallery=FILE.npz [--k=5] [--far=1e-3] [--json=true]
    python main.py export --out=DIR

The model: ckp/<model_name>/best.pt (--model_name, --ckpt_dir pick it; --device for torch), or an
export with --onnx=DIR (onnxruntime only; torch is not imported). Images: --invert=auto|true|false.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.errors import ConfigError
from utils.core.io import atomic_write
from utils.core.options import Option, describe, refuse_rest, split
from utils.data.images import INVERT_MODES, NORMALISE_MODES, list_images
from utils.inference.gallery import Gallery, locked
from utils.inference.recognizer import Recognizer

# options of each command, and those every command has (the model and how images are read)
OPTIONS: dict[str, dict[str, Option]] = {
    "embed": {"out": Option(None, "output file (.npz): embeddings, paths, labels")},
    "verify": {"far": Option("1e-3", "false acceptance rate the threshold is set for: a calibrated point "
                             "(1e-2, 1e-3, 1e-4) or any value read off the validation curve; 0 = the EER threshold",
                             float),
               "json": Option("false", "print JSON instead of text", bool)},
    "enrol": {"gallery": Option(None, "the gallery .npz file (created, or added to)")},
    "search": {"gallery": Option(None, "the gallery .npz file"), "k": Option("5", "identities listed per query", int),
               "far": Option("1e-3", "false acceptance rate of the 'unknown' threshold (as for verify)", float),
               "json": Option("false", "print JSON instead of text", bool)},
    "export": {"out": Option(None, "output folder: model.onnx, model.json, parity.json")},
}
MODEL_OPTIONS = {  # every command: which checkpoint
    "model_name": Option(None, "the trained model: ckp/<model_name>/best.pt"),
    "ckpt_dir": Option("ckp", "folder of the checkpoints"),
}
IMAGE_OPTIONS = {  # the commands that read images: where the network runs and how an image is prepared
    "device": Option("cpu", "cpu | cuda | cuda:N | auto (torch only)"),
    "onnx": Option("", "use an export folder instead of a checkpoint (needs only onnxruntime; then --model_name, "
                       "--ckpt_dir and --device do not apply)"),
    "invert": Option("auto", "image polarity: auto | true | false"),
    "normalise": Option("auto", "how an image is brought to the training images: auto (the model card or "
                                "reject.json) | fit (whole image into the square) | mnist (ink size-normalised and "
                                "centred by mass) | mnist_stroke (mnist with the pen made MNIST's width)"),
}
EXPORT_OPTIONS = {
    "data_root": Option("", "the data whose images the parity check embeds (default DATA_ROOT or ./data)"),
}
POSITIONAL = {"embed": (1, None), "verify": (2, 2), "enrol": (1, 1), "search": (1, None), "export": (0, 0)}


def own_options(command: str, model_name: str) -> dict[str, Option]:
    """The options `command` reads, and no other (an option it would ignore is refused)."""
    return {**MODEL_OPTIONS, "model_name": Option(model_name, MODEL_OPTIONS["model_name"].help),
            **(EXPORT_OPTIONS if command == "export" else IMAGE_OPTIONS), **OPTIONS[command]}


def explain(command: str, model_name: str) -> str:
    """The options page of `python main.py COMMAND --help`: each option with its default and meaning."""
    return describe(own_options(command, model_name))


def parse(command: str, args: list[str], model_name: str) -> tuple[list[str], dict[str, Any]]:
    """Image paths and typed options of `command`; everything checked that can be checked before work."""
    own = own_options(command, model_name)
    opts, rest = split(args, own)
    paths = [a for a in rest if not a.startswith("--")]
    refuse_rest(command, [a for a in rest if a.startswith("--")], own)
    lo, hi = POSITIONAL[command]
    if len(paths) < lo or (hi is not None and len(paths) > hi):
        raise ConfigError(f"{command} takes {lo if lo == hi else f'{lo} or more'} image path(s), got {len(paths)} "
                          f"(see python main.py {command} --help).")
    missing = [k for k, v in opts.items() if v is None]
    if missing:
        raise ConfigError(f"{command} needs --{missing[0]}=... (see python main.py {command} --help).")
    given = {a.split("=", 1)[0][2:] for a in args if a.startswith("--")}
    if opts.get("onnx") and given & {"model_name", "ckpt_dir", "device"}:
        raise ConfigError(f"--onnx={opts['onnx']} runs the export with onnxruntime: drop "
                          f"{', '.join(f'--{k}' for k in sorted(given & {'model_name', 'ckpt_dir', 'device'}))}.")
    if command == "export":
        return paths, opts
    if opts["invert"] not in INVERT_MODES:
        raise ConfigError(f"--invert={opts['invert']}: use auto, true or false.")
    if opts["normalise"] not in ("auto", *NORMALISE_MODES):
        raise ConfigError(f"--normalise={opts['normalise']}: use auto, {', '.join(NORMALISE_MODES)}.")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", opts["device"]):
        raise ConfigError(f"--device={opts['device']}: use cpu, cuda, cuda:N or auto.")
    for key in ("out", "gallery"):
        if key in opts:
            output_path(key, opts[key])
    if "far" in opts and not (math.isfinite(opts["far"]) and 0 <= opts["far"] < 1):
        raise ConfigError(f"--far={opts['far']}: out of range (0 <= far < 1; 0 = the EER threshold).")
    if "k" in opts and opts["k"] < 1:
        raise ConfigError(f"--k={opts['k']}: out of range (>= 1).")
    return paths, opts


def output_path(key: str, value: str) -> Path:
    """An output path that can be written: not empty, no file where a folder must be."""
    if not value.strip():
        raise ConfigError(f"--{key}= is empty; give a path, e.g. --{key}=" + ("export" if key == "out" else "g.npz"))
    p = Path(value)
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--{key}={value}: {parent} is a file, not a folder; choose another --{key}.")
    return p


def recognizer(opts: dict[str, str]) -> Recognizer:
    rec = Recognizer.from_onnx(opts["onnx"]) if opts["onnx"] else None
    if rec is None:
        import torch  # a checkpoint needs torch: say so before anything else (ModuleNotFoundError -> one line)

        if opts["device"].startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device={opts['device']} but CUDA is not available here; use --device=cpu.")
        rec = Recognizer.from_checkpoint(Path(opts["ckpt_dir"]) / opts["model_name"] / "best.pt", opts["device"])
    if opts["normalise"] != "auto":  # the user's choice over the card's
        rec.card = {**rec.card, "normalise": opts["normalise"]}
    return rec


def one_line_warnings() -> None:
    """Library warnings (PIL, numpy, torch) as one line each on stderr, each text once, not a source dump."""
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: object, **kw: object) -> None:
        text = str(message).splitlines()[0][:200] if str(message) else category.__name__
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]


def gallery_path(opts: dict[str, str]) -> Path:
    g = Path(opts["gallery"])
    if g.suffix != ".npz":
        raise ConfigError(f"--gallery={g}: use a .npz file name.")
    return g


def run(command: str, args: list[str], model_name: str) -> None:
    paths, opts = parse(command, args, model_name)
    one_line_warnings()
    if command == "export":
        import os

        from utils.inference.export import export

        data_root = opts["data_root"] or os.environ.get("DATA_ROOT", "./data")
        out = output_path("out", opts["out"])
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out={out} is a file; export writes a folder: choose another --out.")
        r = export(Path(opts["ckpt_dir"]) / opts["model_name"] / "best.pt", out, data_root)
        c = r["checks"]
        print(f"exported to {opts['out']}/model.onnx; parity on {r['images']['queries']} + {r['images']['gallery']} "
              f"images: min cosine {c['min_cosine']['value']:.7f}, EER torch {c['eer']['torch']:.6f} vs "
              f"onnxruntime {c['eer']['onnxruntime']:.6f}, all checks passed ({opts['out']}/parity.json)")
        return
    far, k, as_json = opts.get("far", 1e-3), opts.get("k", 5), opts.get("json", False)
    if command in ("enrol", "search"):
        gallery_path(opts)
    rec = recognizer(opts)
    if command == "verify":
        r = rec.verify(paths[0], paths[1], far, opts["invert"])
        if not as_json and not all(r.get("digit", [True, True])):
            which = [f"{p} (digit-ness {s:.4f})" for p, d, s in zip(paths, r["digit"], r["digit_score"], strict=True)
                     if not d]
            print(f"not a digit: {', '.join(which)}; a digit scores >= {rec.reject['threshold']:.4f} (calibrated on "
                  f"validation by python main.py wild) and has ink; no match")
            return
        print(json.dumps(r) if as_json else
              f"{'match' if r['match'] else 'no match'}: cosine {r['score']:.4f} ({r['angle_deg']:.1f} deg), threshold "
              f"{r['threshold']:.4f} for FAR {r['far']:g} ({r['threshold_source']}); an impostor scores this high "
              f"with probability {r['far_at_score']:.2e} (validation)")
    elif command == "embed":
        found = list_images(paths)
        t0 = time.perf_counter()
        emb = rec.embed([p for p, _ in found], opts["invert"])
        dt = time.perf_counter() - t0
        with atomic_write(opts["out"], "wb", fix="choose another --out") as f:
            np.savez(f, embeddings=emb, paths=np.array([str(p) for p, _ in found]),
                     labels=np.array([label for _, label in found]), model_id=np.array(rec.model_id))
        print(f"embedded {len(found)} images in {dt:.1f} s ({len(found) / max(dt, 1e-9):.0f} images/s) -> "
              f"{opts['out']} ({emb.shape[1]}-d, L2-normalised)")
    elif command == "enrol":
        path, skipped = gallery_path(opts), []
        with locked(path):  # another enrol into this gallery waits: both keep their images
            old = Gallery.load(path, rec.model_id, rec.dim) if path.exists() else None
            n_old = 0 if old is None else len(old.embeddings)
            g = rec.enrol(paths[0], old, opts["invert"], skipped)
            g.save(path)
        for why in skipped:
            print(f"skipped: {why}", file=sys.stderr)
        print(f"enrolled {len(g.embeddings) - n_old} images of {len(set(g.identities[n_old:].tolist()))} identities "
              f"into {path} (now {len(g.embeddings)} images, {len(set(g.identities.tolist()))} identities)")
    else:
        g = Gallery.load(gallery_path(opts), rec.model_id, rec.dim)
        found = [p for p, _ in list_images(paths)]
        results = rec.search(found, g, k, far, opts["invert"])
        if as_json:
            print(json.dumps(results))
        for r in [] if as_json else results:
            print(f"{r['query']}: {r['identity']} (cosine {r['score']:.4f}); top: "
                  + ", ".join(f"{i} {s:.3f}" for i, s in r["top"]))
