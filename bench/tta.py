"""Shift-only test-time augmentation (TTA), measured on validation: does averaging the embeddings of a few
shifted copies of each image raise 1-NN accuracy or lower the EER?

    python -m bench.tta --ckpt=ckp/recipe/f_ocshift/resnet18_arcface_s0/best.pt [--name=f_ocshift_arcface_s0]

Loads a checkpoint's evaluated weights (its EMA when kept) and its params, embeds every validation image
(queries) and every train-split image (gallery) under each of the nine shifts by -1, 0, +1 pixels in x and y
(zero fill: MNIST's border is background), and scores three view sets side by side, queries and gallery alike:
  * none:   the image alone (what evaluation does today);
  * cross:  the image and its four one-pixel shifts (5 views);
  * grid:   all nine shifts of the 3x3 grid (9 views).
A view set's embedding is the normalised mean of its views' unit embeddings. Validation data only (nothing reads the
test split), so the result may choose whether evaluation should use TTA. Writes
results/bench/tta/<name>.json with the commit, machine and precision.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.core.config import ConfigError, TrainParams, trained_params
from utils.core.device import resolve_device
from utils.core.io import load_checkpoint, write_json
from utils.core.options import Option, file_tag, refuse_rest, run_script, split
from utils.core.provenance import code_identity, machine, precision
from utils.run.experiment import load_weights, prepare_run
from utils.scoring.metrics import evaluate_embeddings
from utils.training.engine import embed

SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
VIEW_SETS = {"none": [(0, 0)], "cross": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)], "grid": SHIFTS}


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """uint8 images [N, H, W] moved by (dy, dx) pixels, the uncovered border filled with 0 (background)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def view_embeddings(model: torch.nn.Module, x: torch.Tensor, params: TrainParams, device: torch.device,
                    what: str) -> dict[tuple[int, int], torch.Tensor]:
    """Unit embeddings of every shift in SHIFTS, with a line per shift (rate and ETA)."""
    out, t0 = {}, time.perf_counter()
    for i, s in enumerate(SHIFTS, 1):
        out[s] = F.normalize(embed(model, shifted(x, *s), params, device, desc=f"shift {s}", line=False), dim=1)
        took = time.perf_counter() - t0
        print(f"  {what}: shift {i}/{len(SHIFTS)} {s}, {i * len(x) / took:.0f} img/s, "
              f"ETA {took / i * (len(SHIFTS) - i):.0f} s", flush=True)
    return out


OPTIONS = {"ckpt": Option("", "a best.pt to measure (required)"),
           "name": Option("", "tag of the output file (default: the checkpoint's model name)"),
           "out": Option("", "JSON to write (default results/bench/tta/<name>.json)")}


def main(argv: list[str]) -> None:
    opts, rest = split(argv, OPTIONS)
    refuse_rest("bench.tta", rest, OPTIONS)
    if not opts["ckpt"]:
        raise ConfigError("bench.tta: --ckpt=PATH is required (a best.pt written by a run).")
    state = load_checkpoint(Path(opts["ckpt"]))
    params = trained_params(state["params"], use_tqdm=False)
    name = file_tag(opts["name"] or params.model_name, required=True)
    device = resolve_device(params.device)
    splits, params, model, head = prepare_run(params, device)
    load_weights(model, head, state)
    t0 = time.perf_counter()
    query = view_embeddings(model, splits.val_x, params, device, "validation queries")
    gallery = view_embeddings(model, splits.train_x, params, device, "train-split gallery")
    seconds = time.perf_counter() - t0
    results = {}
    for vs, shifts in VIEW_SETS.items():
        q = F.normalize(torch.stack([query[s] for s in shifts]).mean(0), dim=1)  # scores are cosines
        g = F.normalize(torch.stack([gallery[s] for s in shifts]).mean(0), dim=1)
        m = evaluate_embeddings(q, splits.val_y.to(device), g, splits.train_y.to(device), bins=params.hist_bins)
        results[vs] = {"views": len(shifts), "val_acc_1nn": m["acc_1nn"], "val_eer": m["eer"],
                       "val_tar_1e-3": m["tar_at_far"]["1e-03"]}
        print(f"{vs:5s} ({len(shifts)} views): val 1-NN {m['acc_1nn']:.4%}  EER {m['eer']:.4%}  "
              f"TAR@1e-3 {m['tar_at_far']['1e-03']:.4%}", flush=True)
    out = Path(opts["out"] or Path("results/bench/tta") / f"{name}.json")
    ckpt = Path(opts["ckpt"])  # named by its last folders: a committed result holds no absolute path
    named = str(Path(*ckpt.parts[-4:])) if ckpt.is_absolute() else str(ckpt)
    write_json(out, {"checkpoint": named, "model_name": params.model_name,
                     "loss": params.loss_fuc_type, "seed": params.seed, "results": results,
                     "embed_seconds_all_views": round(seconds, 1), "machine": machine(device),
                     "precision": precision(device, params.amp), "eval_amp": params.eval_amp, **code_identity()})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main, OPTIONS)
