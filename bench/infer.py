"""Inference benchmark: a trained model used as the README shows, torch checkpoint against ONNX export.

    python -m bench.infer [--model_name=resnet18_arcface] [--ckpt_dir=ckp] [--onnx=exports/arcface]
                          [--repeats=3] [--out=results/bench/infer.json]

Side by side in one run, on this machine:
  * cold start: wall time of `python main.py verify A B` as a new process (interpreter, imports, model
    load, two images, decision), with the checkpoint and with --onnx, each also with scipy.ndimage
    imported first (what reading an image cost before utils/data/regions.py), beside `import torch`
    alone; the medians of rounds that take every command in turn (all runs are kept);
  * embedding throughput in images/s from uint8 arrays (batch 256), torch fp32 and onnxruntime;
  * search: ms per query against a gallery of 50,000 embeddings (10 identities, the original's
    gallery size), matching only (query embeddings given) and from an image file; and exact search
    at 1,000,000 gallery vectors, one query and 64 queries at a time, to judge whether an index
    library (FAISS) would pay.
Images are real test digits when DATA_ROOT holds MNIST. Writes results/bench/infer.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from utils.core.io import write_json
from utils.core.options import Option, refuse_rest, run_script, split
from utils.core.provenance import code_identity, cpu_kind, cpu_model
from utils.data.loading import load_idx_dataset
from utils.inference.gallery import Gallery
from utils.inference.recognizer import Recognizer

ROOT = Path(__file__).resolve().parents[1]


def verify_command(a: Path, b: Path, extra: list[str], preload: str = "") -> list[str]:
    """`python main.py verify a b` as a new process; `preload`: a module imported first (to show side by
    side what an import the command no longer needs would cost)."""
    args = ["verify", str(a), str(b), *extra]
    if not preload:
        return [sys.executable, str(ROOT / "main.py"), *args]
    return [sys.executable, "-c", f"import {preload}, runpy, sys; sys.argv = {['main.py', *args]!r}; "
                                  f"runpy.run_path({str(ROOT / 'main.py')!r}, run_name='__main__')"]


def cold_starts(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each command as a fresh process, `repeats` rounds taking every command in turn,
    so that a slow spell of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            times[name].append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise SystemExit(f"{name} failed: {r.stderr.strip()}")
    return times


def throughput(rec: Recognizer, images: np.ndarray) -> float:
    rec.embed(images[:256])  # warm-up
    t0 = time.perf_counter()
    rec.embed(images)
    return len(images) / (time.perf_counter() - t0)


def search_ms(rec: Recognizer, n: int, dim: int, image: Path, repeats: int = 50) -> dict:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    g = Gallery(rec.model_id, emb, np.array([str(i % 10) for i in range(n)]), np.array([""] * n))
    query = rec.embed([image])
    rec_embed = rec.embed
    rec.embed = lambda images, invert="auto": query  # matching only: the query's embedding is given
    t0 = time.perf_counter()
    for _ in range(repeats):
        rec.search([image], g, k=5)
    matching = (time.perf_counter() - t0) / repeats * 1e3
    rec.embed = rec_embed
    t0 = time.perf_counter()
    for _ in range(repeats // 5):
        rec.search([image], g, k=5)
    return {"gallery": n, "matching_ms": matching, "with_image_ms": (time.perf_counter() - t0) / (repeats // 5) * 1e3}


def exact_search(dim: int, n: int) -> dict:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((n, dim), dtype=np.float32)
    q = rng.standard_normal((64, dim), dtype=np.float32)
    t0 = time.perf_counter()
    np.argmax(g @ q[0])
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    np.argmax(g @ q.T, axis=0)
    batch = (time.perf_counter() - t0) / 64
    return {"gallery": n, "one_query_ms": one * 1e3, "per_query_in_64_ms": batch * 1e3}


OPTIONS = {"model_name": Option("resnet18_arcface", "the trained model: ckp/<model_name>/best.pt"),
           "ckpt_dir": Option("ckp", "folder of the checkpoints"),
           "onnx": Option("", "an export of the same checkpoint (python main.py export)"),
           "repeats": Option("3", "cold starts timed", int),
           "images": Option("2048", "test images embedded for the throughput", int),
           "gallery": Option("50000", "gallery size of the search timing (the original's)", int),
           "large": Option("1000000", "gallery size of the exact-search timing", int),
           "out": Option("results/bench/infer.json", "JSON to write")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.infer", rest, OPTIONS)
    a = SimpleNamespace(**opts)
    ckpt = Path(a.ckpt_dir) / a.model_name / "best.pt"
    rec = Recognizer.from_checkpoint(ckpt)
    data = load_idx_dataset(os.environ.get("DATA_ROOT", "./data"), "mnist")
    images = data["test_x"][:a.images].numpy()
    tmp = Path(tempfile.mkdtemp())
    for i in (0, 1):
        Image.fromarray(images[i]).save(tmp / f"{i}.png")
    pair = (tmp / "0.png", tmp / "1.png")
    common = [f"--model_name={a.model_name}", f"--ckpt_dir={a.ckpt_dir}"]
    commands = {"import_torch": [sys.executable, "-c", "import torch"],  # the floor of any torch command
                "checkpoint": verify_command(*pair, common),
                # what reading images cost before utils/data/regions.py replaced scipy
                "checkpoint_scipy_ndimage_imported": verify_command(*pair, common, preload="scipy.ndimage")}
    if a.onnx:
        commands["onnx"] = verify_command(*pair, [f"--onnx={a.onnx}"])
        commands["onnx_scipy_ndimage_imported"] = verify_command(*pair, [f"--onnx={a.onnx}"], preload="scipy.ndimage")
    starts = cold_starts(commands, a.repeats)
    rows = {"cold_verify_seconds": {name: statistics.median(t) for name, t in starts.items()},
            "embed_images_per_s": {"torch": throughput(rec, images)},
            "search": search_ms(rec, a.gallery, rec.embed(images[:1]).shape[1], pair[0]),
            "exact_search_large": exact_search(rec.embed(images[:1]).shape[1], a.large)}
    if a.onnx:
        rows["embed_images_per_s"]["onnxruntime"] = throughput(Recognizer.from_onnx(a.onnx), images)
    for k, v in rows.items():
        print(f"{k}: " + ", ".join(f"{n} {x:.3g}" for n, x in v.items()))
    cold = rows["cold_verify_seconds"]
    print(f"cold verify on the checkpoint = import torch + {cold['checkpoint'] - cold['import_torch']:.2f} s "
          f"(target: + 0.5 s at most)")
    if "onnxruntime" in rows["embed_images_per_s"]:
        e = rows["embed_images_per_s"]
        print(f"onnxruntime / torch embedding throughput: {e['onnxruntime'] / e['torch']:.2f}x")
    write_json(Path(a.out), {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "made_by": code_identity(),
                             "cpus": os.cpu_count(), "repeats": a.repeats, "model": a.model_name, **rows,
                             "cold_start_runs_seconds": starts})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
